"""The simulated fleet as a telemetry source (see README.md beside this file)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from collectors.base import Source, SourceConfigError, register
from powerplane.fleet import Plant
from powerplane.schemas import TelemetryFrame


@register("sim")
class FleetSource(Source):
    """Reads the in-process simulated fleet and cuts its site-wide arrays into one frame per rack."""

    default_interval_s = 1.0

    def configure(self, options: Mapping[str, Any]) -> None:
        if not isinstance(self.ctx.plant, Plant):
            raise SourceConfigError(f"source '{self.name}': the sim source needs the simulated fleet in its context")
        self.fleet: Plant = self.ctx.plant
        self.lock: threading.Lock = options.get("lock") or threading.Lock()
        self.seq = 0
        site = self.ctx.site
        if site is None:
            raise SourceConfigError(f"source '{self.name}': the sim source needs the site model in its context")
        self.site = site
        self._server_in_rack = (np.arange(len(site.server_ids)) - site.rack_server_start[site.server_rack])

    async def read(self) -> list[TelemetryFrame]:
        return self.read_batch()  # a few ms of numpy: not worth a thread

    def read_batch(self) -> list[TelemetryFrame]:
        """Advance the fleet by one interval and cut it into frames (also used in-process)."""
        with self.lock:
            fr = self.fleet.step(self.interval_s)
        site = self.site
        self.seq += 1
        out: list[TelemetryFrame] = []
        gs = self._server_in_rack[site.gpu_server].astype(np.uint16)
        slot = site.gpu_slot.astype(np.uint16)
        f32 = np.float32
        ts = float(self.fleet.epoch_s + fr.t_s)
        for r, rack_id in enumerate(site.rack_ids):
            a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
            n_in = int(site.rack_inlet_sensors[r])
            out.append(TelemetryFrame(
                site=site.name, rack=rack_id, ts_s=ts, interval_s=self.interval_s, seq=self.seq,
                source=self.name, gpu_server=gs[a:b], gpu_slot=slot[a:b],
                power_w=fr.power_w[a:b].astype(f32), temp_c=fr.temp_c[a:b].astype(f32),
                sm_clock_mhz=fr.sm_clock_mhz[a:b].astype(f32), limit_w=fr.limit_w[a:b].astype(f32),
                util=fr.util[a:b].astype(f32), inlet_c=[float(x) for x in fr.inlet_c[r, :n_in]],
                pdu_power_w=[float(fr.pdu_power_w[r, 0]), float(fr.pdu_power_w[r, 1])]))
        return out
