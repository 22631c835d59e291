"""The simulated fleet as a telemetry source (see README.md beside this file)."""

from __future__ import annotations

import threading

from collectors.base import Source, SourceConfigError, SourceOptions
from powerplane.schemas import TelemetryFrame
from sim.fleet import InProcessLock, Plant, rack_frames


class Options(SourceOptions):
    """A [sources.NAME] table of kind "sim": only the common keys (README.md beside this file)."""

    # A lock shared with code that also changes the fleet (ops' fleet command); never from a file.
    lock: InProcessLock = None


class FleetSource(Source):
    """Reads the in-process simulated fleet and cuts its site-wide arrays into one frame per rack."""

    kind = "sim"
    options_model = Options

    default_interval_s = 1.0

    def configure(self, opts: Options) -> None:
        if not isinstance(self.ctx.plant, Plant):
            raise SourceConfigError(f"{self.path}: the sim source needs the simulated fleet in its context")
        self.fleet: Plant = self.ctx.plant
        self.lock: threading.Lock = opts.lock or threading.Lock()
        self.seq = 0
        site = self.ctx.site
        if site is None:
            raise SourceConfigError(f"{self.path}: the sim source needs the site model in its context")
        self.site = site

    async def read(self) -> list[TelemetryFrame]:
        return self.read_batch()  # a few ms of numpy: not worth a thread

    def read_batch(self) -> list[TelemetryFrame]:
        """Advance the fleet by one interval and cut it into frames (also used in-process)."""
        with self.lock:
            fr = self.fleet.step(self.interval_s)
        self.seq += 1
        return rack_frames(self.site, fr, float(self.fleet.epoch_s + fr.t_s), self.interval_s, self.seq, self.name)
