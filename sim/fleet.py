"""A simple simulated fleet: the plant for the first closed loop.

Deliberately small (the digital twin issue replaces it): per-GPU utilization follows a slow
per-priority pattern plus noise; power is idle + utilization x dynamic range, clipped at the
enforced limit; a cap pulls the SM clock down; GPU temperature follows power with a first-order
lag; rack inlet rises with rack load (recirculation). A feed can be lost, which moves every rack's
load onto the other feed's PDU. Pure numpy, deterministic for a seed, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Protocol, runtime_checkable

import numpy as np
from pydantic import PlainValidator

from powerplane.schemas import FacilityReading, TelemetryFrame
from powerplane.site import FEEDS, FloatArray, IntArray, Site
from sim.scenario_config import UpsConfig
from sim.ups import UpsBank


def _in_process_lock(v: Any) -> Any:
    if v is not None and not (hasattr(v, "acquire") and hasattr(v, "release")):
        raise ValueError(f"must be a lock given by the program that runs the fleet, got {v!r}")
    return v


# The `lock` option of the sim source and the twin actuator: shared with the code that also changes the
# plant (ops' fleet command), so it comes from the program, never from a file.
InProcessLock = Annotated[Any, PlainValidator(_in_process_lock)]

# Mean utilization per priority class (inference-critical, inference-batch, training, best-effort).
# Assumption: inference near POLCA's 79%-of-provisioned peak; training runs hot and steady.
BASE_UTIL = np.array([0.55, 0.65, 0.85, 0.70])


@dataclass
class FleetFrame:
    """What the collectors would read this interval, for every GPU and rack (site-wide arrays)."""

    t_s: float
    power_w: FloatArray
    temp_c: FloatArray
    sm_clock_mhz: FloatArray
    limit_w: FloatArray
    util: FloatArray
    inlet_c: FloatArray  # (n_racks, max sensors), NaN where a rack has fewer sensors
    pdu_power_w: FloatArray  # (n_racks, 2) metered power per feed
    rack_power_w: FloatArray  # ground truth wall power per rack


@runtime_checkable
class Plant(Protocol):
    """What the sim source and the twin actuator need of a simulated plant: this simple Fleet or the
    digital twin (sim.Twin), whose frames carry the same per-GPU and per-rack fields."""

    site: Site
    epoch_s: float

    def step(self, dt_s: float = 1.0) -> Any: ...

    def set_limit(self, gpus: IntArray, limit_w: FloatArray) -> FloatArray: ...


class Fleet:
    def __init__(self, site: Site, seed: int = 0, load_scale: float = 1.0, epoch_s: float = 0.0,
                 ups: UpsConfig | None = None) -> None:
        self.site = site
        self.epoch_s = epoch_s  # wall-clock time of t_s = 0, for event timestamps
        self.rng = np.random.default_rng(seed)
        n = site.n_gpus
        self.t_s = 0.0
        self.load_scale = load_scale
        self.limit_w = site.gpu_max_w.copy()  # enforced power limit
        self.util = BASE_UTIL[site.gpu_priority] * load_scale
        self.temp_c = np.full(n, 35.0)
        self.phase = self.rng.uniform(0, 2 * np.pi, size=site.n_racks)[site.gpu_rack]
        self.lost_feed: int | None = None
        self.max_clock = np.array([site.server_types[t].gpu_max_sm_mhz for t in site.server_type])[site.gpu_server]
        self.min_clock = np.array([site.server_types[t].gpu_min_sm_mhz for t in site.server_type])[site.gpu_server]
        supply = np.array([site.zone_supply_c.get(site.level_ids[z], 20.0) for z in site.rack_zone])
        self.rack_supply_c = supply
        self.rack_rated_w = site.level_rated_w[site.rack_level]
        self.max_sensors = int(max(1, site.rack_inlet_sensors.max()))
        self.ups = UpsBank(site, ups, seed=seed, epoch_s=epoch_s)  # the UPS lineups and their SNMP signal

    # ---- actuation ---------------------------------------------------------------------------
    def clamp_limit(self, gpus: IntArray, limit_w: FloatArray) -> FloatArray:
        return np.clip(limit_w, self.site.gpu_min_w[gpus], self.site.gpu_max_w[gpus])

    def set_limit(self, gpus: IntArray, limit_w: FloatArray) -> FloatArray:
        """Apply power limits as the hardware would: clamped to its min/max. Returns what was set."""
        applied = self.clamp_limit(gpus, limit_w)
        self.limit_w[gpus] = applied
        return applied

    def lose_feed(self, feed: str | None, at_s: float | None = None) -> None:
        """Lose a feed (None: restore). `at_s`: when, in simulated seconds (default: now), for the UPS traps."""
        self.lost_feed = None if feed is None else FEEDS.index(feed)
        self.ups.sync(self.t_s if at_s is None else at_s, *self.ups.inputs_from_feed(self.lost_feed))

    def facility_readings(self, now_s: float) -> list[FacilityReading]:
        """The UPS polls and traps delivered by simulated time `now_s` (sim/ups.py), each once."""
        return self.ups.due(now_s)

    # ---- simulation --------------------------------------------------------------------------
    def step(self, dt_s: float = 1.0) -> FleetFrame:
        s = self.site
        self.t_s += dt_s
        # Slow diurnal-like swing (period 120 s so a demo shows it) plus per-GPU noise.
        swing = 0.12 * np.sin(2 * np.pi * self.t_s / 120.0 + self.phase)
        noise = self.rng.normal(0.0, 0.04, size=s.n_gpus)
        util = np.clip(BASE_UTIL[s.gpu_priority] * self.load_scale + swing + noise, 0.0, 1.0)
        demand = s.gpu_idle_w + util * (s.gpu_max_w - s.gpu_idle_w)
        power = np.minimum(demand, self.limit_w)
        # Under a binding cap the clock drops roughly with the cube root of power (P ~ f V^2, V ~ f).
        ratio = np.where(demand > 0, power / np.maximum(demand, 1e-9), 1.0)
        clock = np.clip(self.max_clock * np.cbrt(ratio), self.min_clock, self.max_clock)
        clock = np.where(util < 0.02, self.min_clock, clock)
        rack_power = self._rack_power(power)
        inlet_rack = self.rack_supply_c + 6.0 * rack_power / np.maximum(self.rack_rated_w, 1.0)
        inlet_gpu = inlet_rack[s.gpu_rack]
        # First-order thermal response, time constant 30 s, 0.06 C/W above inlet at steady state.
        target = inlet_gpu + 0.06 * power
        alpha = 1.0 - np.exp(-dt_s / 30.0)
        self.temp_c = self.temp_c + alpha * (target - self.temp_c)
        self.util = util
        inlet = np.full((s.n_racks, self.max_sensors), np.nan)
        for k in range(self.max_sensors):
            has = s.rack_inlet_sensors > k
            inlet[has, k] = inlet_rack[has] + self.rng.normal(0.0, 0.2, size=int(has.sum()))
        share = np.array([0.5, 0.5])
        if self.lost_feed is not None:
            share = np.zeros(2)
            share[1 - self.lost_feed] = 1.0
        meter_noise = 1.0 + self.rng.normal(0.0, 0.005, size=(s.n_racks, 2))
        pdu = rack_power[:, None] * share[None, :] * meter_noise
        mode = "normal" if self.lost_feed is None else f"{FEEDS[self.lost_feed]}-lost"
        self.ups.advance(self.t_s, s.rollup_w(rack_power, mode)[self.ups.level])  # type: ignore[arg-type]
        return FleetFrame(self.t_s, power, self.temp_c.copy(), clock, self.limit_w.copy(), util, inlet, pdu,
                          rack_power)

    def _rack_power(self, gpu_power_w: FloatArray) -> FloatArray:
        server_w = self.site.server_input_w(gpu_power_w)
        return np.bincount(self.site.server_rack, weights=server_w, minlength=self.site.n_racks).astype(np.float64)


def rack_frames(site: Site, fr: Any, ts_s: float, interval_s: float, seq: int, source: str) -> list[TelemetryFrame]:
    """Cut a plant's site-wide arrays (a FleetFrame or a twin frame) into one telemetry frame per rack."""
    server_in_rack = np.arange(len(site.server_ids)) - site.rack_server_start[site.server_rack]
    gs = server_in_rack[site.gpu_server].astype(np.uint16)
    slot = site.gpu_slot.astype(np.uint16)
    f32 = np.float32
    throttle = getattr(fr, "throttle_reasons", None)
    out: list[TelemetryFrame] = []
    for r, rack_id in enumerate(site.rack_ids):
        a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
        n_in = int(site.rack_inlet_sensors[r])
        out.append(TelemetryFrame(
            site=site.name, rack=rack_id, ts_s=ts_s, interval_s=interval_s, seq=seq,
            source=source, gpu_server=gs[a:b], gpu_slot=slot[a:b],
            power_w=fr.power_w[a:b].astype(f32), temp_c=fr.temp_c[a:b].astype(f32),
            sm_clock_mhz=fr.sm_clock_mhz[a:b].astype(f32), limit_w=fr.limit_w[a:b].astype(f32),
            util=fr.util[a:b].astype(f32), inlet_c=[float(x) for x in fr.inlet_c[r, :n_in]],
            pdu_power_w=[float(fr.pdu_power_w[r, 0]), float(fr.pdu_power_w[r, 1])],
            throttle_reasons=None if throttle is None else np.asarray(throttle[a:b], dtype=np.uint32)))
    return out
