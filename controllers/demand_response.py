"""The demand-response planner (issue 16): plain policy functions over numpy arrays, no I/O.

A grid operator asks the site to reduce its load to X MW or by Y % (powerplane.grid.DemandResponse) within a
deadline, hold it, then restore no faster than the ramp limit. `dr_plan` picks the caps that reach the target
at the lowest SLO cost, lowest priority first as controllers.capping sheds (best-effort, then training, then
batch inference, then, only if still short, inference-critical: which the caller enacts through clocks and
routing, not a bare power cap), each GPU in its class by the same share of what it can still give, never
below its minimum. The shed is paced no faster than the ramp-down limit; when that pace cannot reach the
target by the deadline, the ramp limit wins by default (docs/decisions.md) and the plan says how late it
will be. `dr_restore_plan` gives the caps back after the hold, within the ramp-up limit and the breaker's
headroom (controllers.grid_control.release_plan).

Conventions as controllers.capping: per-GPU arrays in the site's order, priorities index PRIORITIES, W; GPU
power is DC and the utility sees wall power, hence `eff` (controllers.capping.gpu_efficiency(site) or 1.0).
Not wired into CapController or the twin yet (docs/grid.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from controllers.grid_control import ReleasePlan, check_inputs, per_gpu, release_plan
from powerplane.grid import DemandResponse, GridLimits, ramp_step_w
from powerplane.site import PRIORITIES, FloatArray, IntArray


def shed_caps(draw_w: FloatArray, gpu_min_w: FloatArray, gpu_priority: IntArray, cap_w: FloatArray,
              need_w: float, eff: FloatArray, classes: list[int]) -> tuple[FloatArray, dict[str, float]]:
    """(caps, wall W shed per class name) that take need_w (wall W) off the GPUs' draw, classes in the order
    given, each class in full before the next, its GPUs by the same share of what they can still give
    (draw down to their minimum). A GPU with no reading (NaN draw) gives nothing and keeps its cap."""
    avail = np.where(np.isfinite(draw_w), np.maximum(draw_w - gpu_min_w, 0.0), 0.0) / eff
    new = cap_w.copy()
    shed = {PRIORITIES[p]: 0.0 for p in range(len(PRIORITIES))}
    left = max(need_w, 0.0)
    for prio in classes:
        m = (gpu_priority == prio) & (avail > 0)
        a = float(avail[m].sum())
        if left <= 0 or a <= 0:
            continue
        frac = min(left / a, 1.0)
        new[m] = np.minimum(new[m], draw_w[m] - frac * avail[m] * eff[m])
        shed[PRIORITIES[prio]] = frac * a
        left -= frac * a
    return new, shed


Binding = Literal["none", "ramp", "deadline"]


@dataclass
class DrPlan:
    """What meeting a demand-response event takes. `limit_w` are the caps at the end of the shed (per GPU,
    site order); `caps_at(t)` the caps the schedule holds at time t; `before_cap_w` the caps to restore."""

    event_id: str
    target_w: float
    need_w: float  # wall W to shed: load now - target (0 when already under it)
    reachable: bool
    short_w: float  # how far the sheddable power falls short of need_w (0 when reachable)
    shed_by_class_w: dict[str, float]  # wall W per class name (PRIORITIES)
    limit_w: FloatArray
    before_cap_w: FloatArray
    draw_w: FloatArray
    t_s: FloatArray  # the schedule: at t_s[k] (absolute s), the shed reaches shed_w[k]
    shed_w: FloatArray
    reach_s: float  # absolute time the schedule reaches what it can shed
    deadline_s: float
    binding: Binding  # which of the two gave way when both could not hold
    late_s: float  # how long after the deadline the target is reached (ramp binding), 0 otherwise
    ramp_over: float  # how far the pace exceeds the ramp-down limit (x the limit, deadline binding), 0 otherwise
    notes: list[str] = field(default_factory=list)
    _gpu_min_w: FloatArray = field(default_factory=lambda: np.zeros(0), repr=False)
    _priority: IntArray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _eff: FloatArray = field(default_factory=lambda: np.zeros(0), repr=False)
    _classes: list[int] = field(default_factory=list, repr=False)

    def caps_at(self, t_s: float) -> FloatArray:
        """The caps the schedule holds at absolute time t_s (before_cap_w before it starts)."""
        k = int(np.searchsorted(self.t_s, t_s, side="right")) - 1
        if k < 0:
            return self.before_cap_w.copy()
        return shed_caps(self.draw_w, self._gpu_min_w, self._priority, self.before_cap_w, float(self.shed_w[k]),
                         self._eff, self._classes)[0]


def _pace(need_w: float, step_w: float, step_s: float, left_s: float,
          prefer: Literal["ramp", "deadline"]) -> tuple[float, Binding, float, float]:
    """(shed per step, binding, late_s, ramp_over) for shedding need_w in steps of step_s that come no larger
    than step_w each (the ramp limit) within left_s."""
    if not math.isfinite(step_w):
        return need_w, "none", 0.0, 0.0  # no ramp-down limit: all of it in the first step
    steps = math.ceil(need_w / step_w - 1e-9)
    if steps * step_s <= left_s + 1e-9:
        return min(step_w, need_w), "none", 0.0, 0.0
    if prefer == "ramp":
        return step_w, "ramp", steps * step_s - left_s, 0.0
    fit = max(math.floor(left_s / step_s + 1e-9), 1)
    return need_w / fit, "deadline", 0.0, need_w / fit / step_w - 1.0


def dr_plan(ev: DemandResponse, now_s: float, load_w: float, gpu_power_w: FloatArray, cap_w: FloatArray,
            gpu_priority: IntArray, gpu_min_w: FloatArray, limits: GridLimits,
            load_at_start_w: float | None = None, eff: float | FloatArray = 1.0, step_s: float = 1.0,
            prefer: Literal["ramp", "deadline"] = "ramp", allow_critical: bool = True,
            gpu_max_w: FloatArray | None = None) -> DrPlan:
    """Caps that bring the load (wall W, the site's or the event's feed's) to the event's target.

    gpu_power_w: each GPU's draw now (DC W; NaN: no reading, counted as giving nothing); cap_w: the limits
    enforced now (the GPU's maximum where uncapped). load_at_start_w: the load when the event arrived (a
    `reduce_by_pct` target is a share of it; default load_w). The shed is paced in steps of step_s from now,
    each no larger than ramp_step_w(limits, step_s) down; when that pace misses the deadline, `prefer` says
    which wins ("ramp", the default: the plan runs late and says by how much). allow_critical=False keeps
    inference-critical out entirely (the plan is then short by what only it could give). A cap not known
    (NaN, as the controller holds it) is taken at gpu_max_w, which must then be given."""
    n = gpu_power_w.size
    check_inputs("dr_plan", n, step_s, cap_w=cap_w, gpu_priority=gpu_priority, gpu_min_w=gpu_min_w)
    e = per_gpu(eff, n)
    cap = np.asarray(cap_w, dtype=np.float64)
    if not np.isfinite(cap).all():
        if gpu_max_w is None:
            raise ValueError(f"dr_plan: cap_w has {int((~np.isfinite(cap)).sum())} unknown (NaN) limits: "
                             "pass gpu_max_w to take them at the GPUs' maximum")
        cap = np.where(np.isfinite(cap), cap, gpu_max_w)
    draw = np.minimum(np.asarray(gpu_power_w, dtype=np.float64), cap).astype(np.float64)
    target = ev.target_w(load_w if load_at_start_w is None else load_at_start_w)
    need = max(load_w - target, 0.0)
    classes = list(range(len(PRIORITIES) - 1, -1 if allow_critical else 0, -1))
    limit, by_class = shed_caps(draw, gpu_min_w, gpu_priority, cap, need, e, classes)
    got = sum(by_class.values())
    short = max(need - got, 0.0)
    deadline = ev.start_s + ev.within_s
    down, _ = ramp_step_w(limits, step_s)
    notes: list[str] = []
    binding: Binding = "none"
    late = over = 0.0
    shed = np.zeros(0)
    if got > 0:
        per_step, binding, late, over = _pace(got, down, step_s, deadline - now_s, prefer)
        k = math.ceil(got / per_step - 1e-9)
        shed = np.minimum(np.arange(1, k + 1) * per_step, got)
    t = now_s + np.arange(shed.size, dtype=np.float64) * step_s
    reach = float(t[-1] + step_s) if shed.size else now_s
    if short > 0:
        notes.append(f"target out of reach: {short / 1e6:.3g} MW short with every class at its minimum"
                     + ("" if allow_critical else " (inference-critical excluded)"))
    if binding == "ramp":
        notes.append(f"the ramp-down limit wins: target reached {late:.0f} s after the deadline")
    elif binding == "deadline":
        notes.append(f"the deadline wins: the shed runs {100 * over:.0f} % over the ramp-down limit")
    if by_class[PRIORITIES[0]] > 0:
        notes.append(f"{PRIORITIES[0]} sheds {by_class[PRIORITIES[0]] / 1e6:.3g} MW: enact through clock locks "
                     "and routing, not a bare power cap")
    return DrPlan(ev.id, target, need, short <= 1e-6, short, by_class, limit, cap.copy(), draw, t, shed, reach,
                  deadline, binding, late, over, notes, np.asarray(gpu_min_w, dtype=np.float64),
                  np.asarray(gpu_priority), e, classes)


def dr_restore_plan(plan: DrPlan, limits: GridLimits, headroom_w: float = math.inf,
                    demand_w: FloatArray | None = None, step_s: float = 1.0) -> ReleasePlan:
    """Give the event's caps back (plan.limit_w up to plan.before_cap_w), highest priority first, each step
    within the ramp-up limit and all of it within the breaker's headroom_w. demand_w: what each GPU would
    draw uncapped now (default: its draw when the event was planned)."""
    demand = plan.draw_w if demand_w is None else demand_w
    return release_plan(plan.limit_w, plan.before_cap_w, demand, plan._priority, limits, headroom_w, step_s,
                        plan._eff)
