"""The simulated fleet as a telemetry source (see README.md beside this file)."""

from __future__ import annotations

import threading
import time

from collectors.base import Source, SourceConfigError, SourceOptions
from powerplane.schemas import FacilityReading, TelemetryFrame
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


class FacilitySource(Source):
    """The in-process fleet's UPS signal (sim/ups.py): every poll and trap delivered by now, on the wall clock
    (the fleet's epoch + its simulated time), so a trap reaches pp.facility at its delivery time to within
    this source's interval rather than at the next telemetry step. Built in code by `powerplane fleet`
    (not a registered kind: it only makes sense beside an in-process fleet)."""

    kind = "sim_facility"
    options_model = Options

    default_interval_s = 0.05

    def configure(self, opts: Options) -> None:
        plant = self.ctx.plant
        if plant is None or not callable(getattr(plant, "facility_readings", None)):
            raise SourceConfigError(f"{self.path}: the sim facility source needs a fleet with UPS units in its "
                                    f"context")
        self.fleet = plant
        self.lock: threading.Lock = opts.lock or threading.Lock()

    async def read(self) -> list[FacilityReading]:
        return self.read_due(time.time())

    def read_due(self, now_s: float) -> list[FacilityReading]:
        """The records delivered by wall-clock time `now_s`."""
        with self.lock:
            out: list[FacilityReading] = self.fleet.facility_readings(now_s - float(self.fleet.epoch_s))
        return out
