"""The ramp limiter (issue 16): plain policy functions over numpy arrays, no I/O.

A utility limits how fast a large load may move (powerplane.grid.GridLimits: MW/s over a window). Three
things move a training site faster than that, and each has its plan here:

- `floor_plan`: a synchronous training job swings between compute (near the GPU limit) and communication or
  checkpoint phases (near idle) every iteration. A power floor held on its GPUs through the low phases (the
  GB300 power-smoothing floor) narrows every transition to what the limit allows; where the hardware has no
  floor (H100), or the floor cannot (the breaker headroom, an energy budget), the compute peak is capped
  instead, which slows the job.
- `stagger_plan`: a large job starting (idle to compute power) or stopping, as GPU groups per step.
- `release_step` / `release_plan`: caps released after an emergency, highest priority first, so the site's
  rise stays within the ramp-up limit.

Conventions are those of controllers.capping: per-GPU arrays in the site's GPU order, priorities index
powerplane.site.PRIORITIES (0 = inference-critical), power in W; GPU power is DC, the utility sees wall power,
so each function takes the GPUs' PSU efficiency (`eff`: controllers.capping.gpu_efficiency(site), or 1.0).

The breaker always wins: every function takes the rise the breaker policy leaves (`headroom_w`, wall W above
the present load: the binding level's threshold x limit minus its load) and never plans a rise above it. A
plan that cannot meet the ramp limit within it says so (`fits`, `excess_w`, `held_w`), it never borrows the
breaker's margin. CapController takes floor_plan, release_step and shed_step through controllers.grid_limits
(docs/grid.md); stagger_plan is not called by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from powerplane.grid import GridLimits, ramp_step_w
from powerplane.site import PRIORITIES, FloatArray, IntArray


def per_gpu(value: float | FloatArray, n: int) -> FloatArray:
    """A scalar or per-GPU value as a float array of n."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).astype(np.float64)


def check_inputs(fn: str, n: int, step_s: float = 1.0, **arrays: FloatArray | IntArray) -> None:
    """One clear line for the first input of fn that does not fit: a per-GPU array of another length than n,
    or a step that is not a positive number of seconds."""
    if not step_s > 0:
        raise ValueError(f"{fn}: step_s must be a positive number of seconds, got {step_s!r}")
    for name, arr in arrays.items():
        if np.shape(arr) != (n,):
            raise ValueError(f"{fn}: {name} has shape {np.shape(arr)}, expected one value per GPU ({n})")


# ---- power floor for synchronous training ----------------------------------------------------------


@dataclass
class FloorPlan:
    """Per job: the floor held through its low phases and the cap on its compute peak (W per GPU, DC), and
    what they cost. Per GPU (site order): `gpu_floor_w` / `gpu_cap_w`, NaN where none is set."""

    floor_w: FloatArray
    cap_w: FloatArray  # the compute peak's cap; the job's compute power where it is not capped
    mechanism: list[str]  # per job: "power-floor" (the GPU's smoothing control) or "peak-cap" (it has none)
    gpu_floor_w: FloatArray
    gpu_cap_w: FloatArray
    swing_w: float  # the site's step at a transition with no plan (wall W, all jobs together)
    planned_swing_w: float  # the same with the plan
    allowance_w: float  # the step the ramp limit allows (wall W)
    energy_w: float  # mean wall W the floors burn (held in the low phases only)
    slowdown: FloatArray  # per job, the estimated share by which an iteration lengthens under the cap
    throughput_cost_w: float  # the GPU time the slowdown costs, at the jobs' mean wall power
    floor_rise_w: float  # how far the floors raise the low-phase load (wall W): within headroom_w
    fits: bool
    excess_w: float  # how far the planned swing is still over the allowance (0 where it fits)
    notes: list[str] = field(default_factory=list)

    @property
    def cost_w(self) -> float:
        """Energy burnt plus GPU time lost, in the same currency (mean wall W)."""
        return self.energy_w + self.throughput_cost_w


@dataclass
class _Jobs:
    n: FloatArray
    eff: FloatArray
    compute_w: FloatArray
    comm_w: FloatArray
    comm_frac: FloatArray
    min_w: FloatArray
    max_w: FloatArray


def _jobs(jobs: Sequence[IntArray], compute_w: FloatArray, comm_w: FloatArray, comm_frac: FloatArray,
          gpu_min_w: FloatArray, gpu_max_w: FloatArray, eff: FloatArray) -> _Jobs:
    k = len(jobs)
    for name, arr in (("compute_w", compute_w), ("comm_w", comm_w), ("comm_frac", comm_frac)):
        if np.shape(arr) != (k,):
            raise ValueError(f"floor_plan: {name} has shape {np.shape(arr)}, expected one value per job ({k})")
    if (np.asarray(comm_frac) < 0).any() or (np.asarray(comm_frac) >= 1).any():
        raise ValueError("floor_plan: comm_frac must lie in [0, 1)")
    if any(j.size == 0 for j in jobs):
        raise ValueError("floor_plan: a job has no GPUs")
    hi = np.array([float(gpu_max_w[j].min()) for j in jobs])
    comp = np.minimum(np.asarray(compute_w, dtype=np.float64), hi)
    return _Jobs(
        n=np.array([j.size for j in jobs], dtype=np.float64),
        eff=np.array([float(eff[j].mean()) for j in jobs]),
        compute_w=comp,
        comm_w=np.minimum(np.asarray(comm_w, dtype=np.float64), comp),
        comm_frac=np.asarray(comm_frac, dtype=np.float64),
        min_w=np.array([float(gpu_min_w[j].max()) for j in jobs]),
        max_w=hi,
    )


def _floors(jb: _Jobs, need_w: float, headroom_w: float, energy_budget_w: float,
            most_w: FloatArray | None = None) -> FloatArray:
    """Floor raise per job (wall W of swing removed), cheapest energy first: a watt of floor burns only
    during the low phases, so the job with the shortest ones gives a watt of swing for the least energy.
    most_w: per job, the most it may take (its share; 0 where it has no floor)."""
    room = jb.n * (jb.compute_w - jb.comm_w) / jb.eff
    if most_w is not None:
        room = np.minimum(room, most_w)
    out = np.zeros(jb.n.size)
    left = min(need_w, max(headroom_w, 0.0))
    budget = energy_budget_w
    # Jobs with the same low-phase share cost the same per watt: they share the raise in proportion to their
    # swing, so every job is smoothed alike (one job floored flat beside another left swinging would rest the
    # plan on the estimate of each job's phases being right; an even share degrades gracefully).
    for frac in np.unique(jb.comm_frac).tolist():
        if left <= 0:
            break
        m = jb.comm_frac == frac
        r = float(room[m].sum())
        by_budget = budget / frac if frac > 0 else math.inf
        take = min(r, left, by_budget)
        if r > 0:
            out[m] = take * room[m] / r
        left -= take
        budget -= take * frac
    return out


def floor_plan(jobs: Sequence[IntArray], compute_w: FloatArray, comm_w: FloatArray, comm_frac: FloatArray,
               gpu_min_w: FloatArray, gpu_max_w: FloatArray, limits: GridLimits, headroom_w: float,
               eff: float | FloatArray = 1.0, energy_budget_w: float = math.inf, other_swing_w: float = 0.0,
               has_floor: Sequence[bool] | None = None, elasticity: float = 1.0) -> FloorPlan:
    """Floors and caps that keep every compute<->communication transition of the given jobs within the
    site's ramp limit.

    jobs: each job's GPU indices. compute_w / comm_w: per job, a GPU's power in its compute phase and in its
    communication and checkpoint phases (DC W); comm_frac: the share of an iteration in the low phases.
    gpu_max_w: the highest limit each GPU may hold now (its maximum, or the cap the breaker policy holds).
    The jobs are taken to transition together (synchronous jobs line up; the worst case), so their swings
    add; other_swing_w is the step the rest of the site may make in the same window. Each job has a share of
    the reduction (cheapest floor energy first, jobs alike in proportion to their swing). A job with a floor
    (has_floor, per job; None: every job) takes its share as a floor (no slowdown), within the breaker's
    headroom_w (the floors raise the low-phase load) and the mean wall W energy_budget_w it may burn; a job
    without one (an H100: no power smoothing) takes its share off its compute peak instead, and no floor.
    Neither takes up another's share. What is left (a floor stopped by the headroom or the budget, a cap
    stopped by a GPU's minimum) is taken off the compute peaks, every job by the same share of its remaining
    swing, never below the floor or a GPU's minimum. The estimated slowdown of a capped job is compute
    share x (compute power / cap - 1) x elasticity (1: compute time inversely proportional to power, the
    pessimistic end; measured GPUs lose less)."""
    n_gpu = gpu_max_w.size
    check_inputs("floor_plan", n_gpu, gpu_min_w=gpu_min_w)
    e = per_gpu(eff, n_gpu)
    jb = _jobs(jobs, compute_w, comm_w, comm_frac, gpu_min_w, gpu_max_w, e)
    hf = np.ones(len(jobs), dtype=bool) if has_floor is None else np.asarray(has_floor, dtype=bool)
    if hf.shape != (len(jobs),):
        raise ValueError(f"floor_plan: has_floor has shape {hf.shape}, expected one value per job ({len(jobs)})")
    down, up = ramp_step_w(limits)
    allowance = max(min(down, up) - other_swing_w, 0.0)
    swing = float(np.sum(jb.n * (jb.compute_w - jb.comm_w) / jb.eff))
    need = max(swing - allowance, 0.0)
    share_w = _floors(jb, need, math.inf, math.inf)  # each job's part of the reduction
    raise_w = _floors(jb, need, headroom_w, energy_budget_w, np.where(hf, share_w, 0.0))
    floor = jb.comm_w + raise_w * jb.eff / jb.n
    # The compute peak of a job without a floor takes its share; then every job by the same share of what
    # it can still give takes the rest.
    cap_room = jb.n * np.maximum(jb.compute_w - np.maximum(floor, jb.min_w), 0.0) / jb.eff
    own_w = np.where(hf, 0.0, np.minimum(share_w, cap_room))
    rest = need - float(raise_w.sum()) - float(own_w.sum())
    room = cap_room - own_w
    share = min(rest / float(room.sum()), 1.0) if rest > 1e-6 and room.sum() > 0 else 0.0
    cap = jb.compute_w - (own_w + share * room) * jb.eff / jb.n
    planned = float(np.sum(jb.n * (cap - floor) / jb.eff))
    slow = np.where(cap < jb.compute_w, (1 - jb.comm_frac) * (jb.compute_w / cap - 1) * elasticity, 0.0)
    mean_w = jb.n * ((1 - jb.comm_frac) * jb.compute_w + jb.comm_frac * jb.comm_w) / jb.eff
    gpu_floor = np.full(n_gpu, np.nan)
    gpu_cap = np.full(n_gpu, np.nan)
    for j, idx in enumerate(jobs):
        if raise_w[j] > 0:
            gpu_floor[idx] = np.minimum(floor[j], gpu_max_w[idx])
        if cap[j] < jb.compute_w[j]:
            gpu_cap[idx] = np.clip(cap[j], gpu_min_w[idx], gpu_max_w[idx])
    excess = max(planned - allowance, 0.0)
    notes = []
    if (~hf).any():
        notes.append(f"{int((~hf).sum())} job(s) without a power floor: {own_w.sum() / 1e6:.3g} MW of the swing "
                     f"off their compute peak")
    floor_need = float(share_w[hf].sum())
    if raise_w.sum() < floor_need - 1e-6:
        bound = ("the breaker headroom" if raise_w.sum() >= max(headroom_w, 0.0) - 1e-6 else
                 "the energy budget" if energy_budget_w < math.inf else "the jobs' compute power")
        notes.append(f"{bound} stops the floor at {raise_w.sum() / 1e6:.3g} MW of the {floor_need / 1e6:.3g} MW: "
                     f"the rest is a cap on the compute peak")
    if excess > 1e-6:
        notes.append(f"even capped to the floor the swing is {excess / 1e6:.3g} MW over the ramp limit")
    mech = ["power-floor" if f else "peak-cap" for f in hf.tolist()]
    return FloorPlan(floor, cap, mech, gpu_floor, gpu_cap, swing, planned, allowance,
                     float(np.sum(raise_w * jb.comm_frac)), slow, float(np.sum(slow * mean_w)),
                     float(raise_w.sum()), excess <= 1e-6, excess, notes)


# ---- staggered start and stop --------------------------------------------------------------------


@dataclass
class StaggerPlan:
    """Groups of GPUs and the offset (s from now) at which each moves; `held` are the GPUs not planned: those
    whose start would rise above the breaker's headroom (all of them where no plan fits: `reason`)."""

    t_s: FloatArray  # per group
    groups: list[IntArray]
    step_w: FloatArray  # wall W the site moves at each step (signed: + start, - stop)
    duration_s: float  # steps x step_s: from the first move until the ramp is spent
    held: IntArray
    reason: str = ""


def stagger_plan(gpus: IntArray, from_w: float | FloatArray, to_w: float | FloatArray, limits: GridLimits,
                 headroom_w: float = math.inf, other_ramp_w_per_s: float = 0.0, step_s: float = 1.0,
                 group_size: int = 1, eff: float | FloatArray = 1.0) -> StaggerPlan:
    """Start (to_w above from_w: idle to compute power) or stop a job's GPUs as groups of group_size (a server,
    a rack), in the order given, one batch of whole groups every step_s, so that the site moves by at most
    ramp_step_w(limits, step_s) per step less what the rest of the site is using (other_ramp_w_per_s, the
    same direction). from_w, to_w, eff: scalars or per GPU of `gpus`. A start never rises above headroom_w in
    all: the GPUs past it are `held`, for the caller to start when the breaker policy leaves room."""
    n = gpus.size
    check_inputs("stagger_plan", n, step_s)
    delta = (per_gpu(to_w, n) - per_gpu(from_w, n)) / per_gpu(eff, n)
    rising = bool(delta.sum() > 0)
    down, up = ramp_step_w(limits, step_s)
    step_budget = (up if rising else down) - other_ramp_w_per_s * min(limits.ramp_window_s, step_s)
    size = max(int(group_size), 1)
    bounds = list(range(0, n, size))
    group_w = np.array([abs(float(delta[b:b + size].sum())) for b in bounds])
    groups = [gpus[b:b + size] for b in bounds]
    total = np.cumsum(group_w)
    fit = int(np.searchsorted(total, headroom_w, side="right")) if rising else len(groups)
    held = np.concatenate([g for g in groups[fit:]]) if fit < len(groups) else np.zeros(0, np.int64)
    reason = f"{held.size} GPUs held: their start would rise above the breaker headroom" if held.size else ""
    if step_budget <= 0 or (fit and group_w[:fit].max() > step_budget):
        why = ("the rest of the site uses the whole ramp limit" if step_budget <= 0 else
               f"one group moves {group_w[:fit].max() / 1e6:.3g} MW, more than a step allows "
               f"({step_budget / 1e6:.3g} MW): smaller groups")
        return StaggerPlan(np.zeros(0), [], np.zeros(0), math.nan, gpus.copy(), why)  # nothing planned
    t = np.zeros(fit)
    steps: list[float] = []
    acc = math.inf
    for i in range(fit):
        if acc + group_w[i] > step_budget:
            steps.append(0.0)
            acc = 0.0
        acc += group_w[i]
        steps[-1] += group_w[i]
        t[i] = (len(steps) - 1) * step_s
    sign = 1.0 if rising else -1.0
    return StaggerPlan(t, groups[:fit], sign * np.array(steps), len(steps) * step_s, held, reason)


# ---- ramped release of caps ----------------------------------------------------------------------


def _rise_w(cap_w: FloatArray, new_w: FloatArray, demand_w: FloatArray, eff: FloatArray) -> FloatArray:
    """Wall W each GPU adds when its cap goes from cap_w to new_w: a GPU draws min(demand, cap); one with no
    demand known (NaN) counts as drawing its cap, never less."""
    d = np.where(np.isfinite(demand_w), demand_w, np.inf)
    return np.asarray(np.maximum(np.minimum(d, new_w) - np.minimum(d, cap_w), 0.0) / eff, dtype=np.float64)


def release_step(cap_w: FloatArray, to_cap_w: FloatArray, demand_w: FloatArray, gpu_priority: IntArray,
                 budget_w: float, eff: float | FloatArray = 1.0) -> tuple[FloatArray, float]:
    """One decision of a ramped release: (new caps, wall W the site rises by). Caps go up towards to_cap_w
    highest priority first (as controllers.capping releases), a class in full while the budget lasts, the
    class it runs out in by the same share of each GPU's remaining rise, the classes below it not at all."""
    e = per_gpu(eff, cap_w.size)
    new = cap_w.copy()
    left = max(budget_w, 0.0)
    used = 0.0
    for prio in range(len(PRIORITIES)):
        m = (gpu_priority == prio) & (to_cap_w > cap_w)
        if not m.any():
            continue
        gap = _rise_w(cap_w[m], to_cap_w[m], demand_w[m], e[m])
        g = float(gap.sum())
        if g <= left:
            new[m] = to_cap_w[m]
            left -= g
            used += g
            continue
        f = left / g
        d = np.where(np.isfinite(demand_w[m]), demand_w[m], np.inf)
        # Raise each cap by the share f of the way to where its GPU's rise ends (its demand or the target).
        stop = np.where(d > cap_w[m], np.minimum(d, to_cap_w[m]), to_cap_w[m])
        new[m] = cap_w[m] + f * (stop - cap_w[m])
        used += left
        break
    return new, used


@dataclass
class ReleasePlan:
    """Caps per step (row k applies at t_s[k] s from now) and the rise at each; `held_w` is the rise not
    planned because the breaker headroom ran out (complete is then False)."""

    t_s: FloatArray
    cap_w: FloatArray  # (steps, GPUs)
    rise_w: FloatArray
    complete: bool
    held_w: float


def release_plan(cap_w: FloatArray, to_cap_w: FloatArray, demand_w: FloatArray, gpu_priority: IntArray,
                 limits: GridLimits, headroom_w: float = math.inf, step_s: float = 1.0,
                 eff: float | FloatArray = 1.0, max_steps: int = 100_000) -> ReleasePlan:
    """Release caps from cap_w to to_cap_w (the GPUs' maximum after an emergency; the caps held before a
    demand-response event) in steps of step_s, each rising by at most ramp_step_w(limits, step_s) and all of
    them by at most headroom_w. demand_w: what each GPU would draw uncapped (NaN: unknown, counted at its cap).
    A controller deciding once per step calls release_step with the same budget instead."""
    check_inputs("release_plan", cap_w.size, step_s, to_cap_w=to_cap_w, demand_w=demand_w,
                 gpu_priority=gpu_priority)
    target = np.asarray(to_cap_w, dtype=np.float64)
    if not (np.isfinite(cap_w).all() and np.isfinite(target).all()):
        raise ValueError("release_plan: cap_w and to_cap_w must be known limits (no NaN): take an unknown cap "
                         "at the GPU's maximum")
    e = per_gpu(eff, cap_w.size)
    _, up = ramp_step_w(limits, step_s)
    cur = np.asarray(cap_w, dtype=np.float64).copy()
    rows: list[FloatArray] = []
    rises: list[float] = []
    room = headroom_w
    while (cur < target).any() and room > 1e-9 and len(rows) < max_steps:
        cur, used = release_step(cur, target, demand_w, gpu_priority, min(up, room), e)
        rows.append(cur)
        rises.append(used)
        room -= used
    left = float(_rise_w(cur, target, demand_w, e).sum()) if (cur < target).any() else 0.0
    caps = np.vstack(rows) if rows else np.zeros((0, cap_w.size))
    return ReleasePlan(np.arange(len(rows), dtype=np.float64) * step_s, caps, np.array(rises), left <= 1e-6, left)


def shed_step(draw_w: FloatArray, to_w: FloatArray, gpu_priority: IntArray, budget_w: float,
              eff: float | FloatArray = 1.0) -> FloatArray:
    """One decision of a paced shed: per GPU, the cap that takes its draw draw_w down towards to_w, lowest
    priority first (as controllers.capping sheds), a class in full while the budget (wall W the site may fall
    by) lasts, the class it runs out in by the same share of each GPU's cut, the classes above it not at all
    (their caps stay at their draw: nothing taken)."""
    e = per_gpu(eff, draw_w.size)
    cut = np.maximum(draw_w - to_w, 0.0)
    new = draw_w.copy()
    left = max(budget_w, 0.0)
    for prio in reversed(range(len(PRIORITIES))):
        m = (gpu_priority == prio) & (cut > 0)
        total = float(np.sum(cut[m] / e[m]))
        if total <= 0:
            continue
        share = min(left / total, 1.0)
        new[m] = draw_w[m] - share * cut[m]
        left -= share * total
        if left <= 0:
            break
    return new
