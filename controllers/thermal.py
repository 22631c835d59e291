"""Thermal policy (TAPAS-style): pure numpy, no I/O.

As a cooling zone's thermal headroom (allowable inlet minus forecast inlet) shrinks, act cheapest first:

1. route: move inference routing weight away from the zone's racks (the serving layer sends new
   requests to instances with thermal slack); the weight falls linearly from 1 at `route_below_c`
   to `min_weight` at `route_floor_c`;
2. slow: lock the SM clock of the zone's low-priority GPUs, to `clock1_mhz` below `slow_below_c` and
   `clock2_mhz` below `slow2_below_c` (POLCA's low-priority frequencies);
3. shed heat: below `shed_below_c`, give the zone a power budget of `shed_frac` of its current heat
   load; the capping policy then holds the zone to it like any level of the power tree.

A zone whose inlet has climbed toward the limit for `climb_sustain_s` is treated by the headroom it will
have `lookahead_s` from now at the current slope, so a cooling failure acts before the inlet gets there
(the caller keeps how long each zone has been climbing: `sustained_climb`; a short rise is sensor noise, and a
rise while the zone's own load steps up is recirculation following that load, which ends when the load settles:
neither is extrapolated; the headroom now still acts on both). Each stage is left
only once the headroom is `hysteresis_c` above where it was entered, so it does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controllers.capping import BoolArray
from powerplane.physics import climb_clock
from powerplane.site import FloatArray, IntArray, Site

STAGES = ("normal", "route", "slow", "slow2", "shed")


@dataclass(frozen=True)
class ThermalSettings:
    route_below_c: float = 4.0
    route_floor_c: float = 1.0
    min_weight: float = 0.1  # never route nothing: the instances stay warm for when the zone recovers
    weight_step: float = 0.1
    slow_below_c: float = 2.5
    slow2_below_c: float = 1.5
    shed_below_c: float = 0.5
    hysteresis_c: float = 1.0
    lookahead_s: float = 120.0
    climb_sustain_s: float = 30.0  # a climb counts once it has lasted this long (inlet slopes are noisy)
    # ... at a steady load: when the zone's load passes the load the climb's clock started from by this share,
    # the clock restarts (see sustained_climb).
    load_step_frac: float = 0.05
    clock1_mhz: float = 1275.0
    clock2_mhz: float = 1110.0
    shed_frac: float = 0.9
    high_classes: int = 1  # classes never slowed here (inference-critical): routing protects them


def effective_headroom_c(headroom_c: FloatArray, time_to_limit_s: FloatArray, s: ThermalSettings) -> FloatArray:
    """Headroom now, or the headroom left `lookahead_s` ahead at the current slope if that is less.

    time_to_limit_s is NaN where the inlet is flat or falling; unknown headroom (NaN) is taken as ample:
    the power policy, not this one, acts on a zone whose sensors are silent."""
    h = np.where(np.isfinite(headroom_c), headroom_c, np.inf)
    climbing = np.isfinite(time_to_limit_s) & (time_to_limit_s > 0)
    slope = np.divide(np.maximum(h, 0.0), time_to_limit_s, out=np.zeros_like(h),
                      where=climbing & np.isfinite(h))  # degC per second toward the limit
    ahead = h - slope * s.lookahead_s
    return np.where(climbing, np.minimum(h, ahead), h)


def sustained_climb(now_s: float, climbing: BoolArray, load_w: FloatArray, since_s: FloatArray, from_w: FloatArray,
                    s: ThermalSettings) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Per zone (since when it has climbed at a steady load, the load then, whether that has lasted
    `climb_sustain_s`): powerplane.physics.climb_clock with `load_step_frac`. Without the steady-load rule the
    100 MW site's restore after a demand-response shed (every zone's load up a third in ~40 s) was extrapolated
    120 s into most zones' limits with 6.5 C of real headroom left, and routing critical requests away from them
    was most of that run's critical SLO misses (docs/performance.md)."""
    since, ref = climb_clock(now_s, climbing, load_w, since_s, from_w, s.load_step_frac)
    return since, ref, np.asarray(now_s - since >= s.climb_sustain_s)


def zone_stage(headroom_c: FloatArray, prev_stage: IntArray, s: ThermalSettings) -> IntArray:
    """Per zone, the stage (index into STAGES) to hold, with hysteresis on the way out."""
    enter = np.array([np.inf, s.route_below_c, s.slow_below_c, s.slow2_below_c, s.shed_below_c])
    want = np.zeros(headroom_c.shape, dtype=np.int64)
    for k in range(1, len(STAGES)):
        want = np.where(headroom_c < enter[k], k, want)
    # Stay in a higher stage until the headroom clears its entry point by the hysteresis.
    keep = np.zeros_like(want)
    for k in range(1, len(STAGES)):
        keep = np.where((prev_stage >= k) & (headroom_c < enter[k] + s.hysteresis_c), k, keep)
    return np.maximum(want, keep)


@dataclass
class ThermalDecision:
    stage: IntArray  # per zone (Site.levels_of_kind("zone") order)
    route_weight: FloatArray  # per GPU, 1 = its full share of requests
    clock_mhz: FloatArray  # per GPU, NaN = unlocked
    zone_budget_w: FloatArray  # per zone, NaN = no heat budget


def decide_thermal(site: Site, headroom_c: FloatArray, time_to_limit_s: FloatArray, zone_load_w: FloatArray,
                   prev_stage: IntArray, s: ThermalSettings) -> ThermalDecision:
    """Per zone thermal headroom, time to limit and heat load (zone order) -> routing, clocks, heat budget."""
    h = effective_headroom_c(headroom_c, time_to_limit_s, s)
    stage = zone_stage(h, prev_stage, s)
    zones = site.levels_of_kind("zone")
    zpos = np.full(len(site.level_ids), -1, dtype=np.int64)
    zpos[zones] = np.arange(zones.size)
    gpu_zone = zpos[site.rack_zone[site.gpu_rack]]
    has_zone = gpu_zone >= 0
    gz = np.where(has_zone, gpu_zone, 0)
    span = max(s.route_below_c - s.route_floor_c, 1e-6)
    w_zone = np.clip((np.where(np.isfinite(h), h, np.inf) - s.route_floor_c) / span, s.min_weight, 1.0)
    # In steps of `weight_step`: a weight that follows every 0.1 C of noise would be a command a second.
    w_zone = np.where(stage >= 1, np.round(w_zone / s.weight_step) * s.weight_step, 1.0)
    route = np.where(has_zone, w_zone[gz] if zones.size else 1.0, 1.0)
    low = site.gpu_priority >= s.high_classes
    clock_zone = np.select([stage >= 3, stage >= 2], [s.clock2_mhz, s.clock1_mhz], np.nan)
    clock = np.where(has_zone & low, clock_zone[gz] if zones.size else np.nan, np.nan)
    budget = np.where(stage >= 4, s.shed_frac * zone_load_w, np.nan)
    return ThermalDecision(stage, np.asarray(route, np.float64), np.asarray(clock, np.float64), budget)
