"""The ramp limiter and the demand-response planner (controllers.grid_control, controllers.demand_response) on
a 100 MW-like toy site: 100k GPUs of 1 kW, a 20 MW synchronous training job, a utility allowing 3 MW/s."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from controllers.demand_response import dr_plan, dr_restore_plan
from controllers.grid_control import FloorPlan, floor_plan, release_plan, stagger_plan
from powerplane.grid import DemandResponse, GridLimits, dr_outcome, ramp_mw_per_s, ramp_violations
from powerplane.site import PRIORITIES

MW = 1e6
LIMITS = GridLimits(ramp_up_mw_per_s=3.0, ramp_down_mw_per_s=3.0, ramp_window_s=1.0)
N = 100_000
CRIT, BATCH, TRAIN, BEST = (PRIORITIES.index(c) for c in
                            ("inference-critical", "inference-batch", "training", "best-effort"))
# Site order: 50k critical, 20k batch, 20k training (the job), 10k best-effort.
PRIO = np.repeat([CRIT, BATCH, TRAIN, BEST], [50_000, 20_000, 20_000, 10_000]).astype(np.int64)
JOB = np.flatnonzero(PRIO == TRAIN)
GPU_MIN = np.full(N, 200.0)
GPU_MAX = np.full(N, 1000.0)
COMPUTE_W, COMM_W, COMM_FRAC, ITER_S = 1000.0, 150.0, 0.3, 3.0


def _job_plan(headroom_w: float, **kw: Any) -> FloorPlan:
    return floor_plan([JOB], np.array([COMPUTE_W]), np.array([COMM_W]), np.array([COMM_FRAC]), GPU_MIN, GPU_MAX,
                      LIMITS, headroom_w, **kw)


def _swinging_site(high_w: float, low_w: float, dt: float = 0.1, seconds: float = 30.0) -> np.ndarray:
    """The site's load: 80 MW steady plus the job, each GPU at high_w in compute and low_w in communication."""
    t = np.arange(0, seconds, dt)
    in_comm = (t % ITER_S) >= ITER_S * (1 - COMM_FRAC)
    return np.asarray(80 * MW + JOB.size * np.where(in_comm, low_w, high_w))


def test_a_floor_keeps_every_transition_within_the_ramp_limit_for_less_than_capping_costs() -> None:
    free = _swinging_site(COMPUTE_W, COMM_W)
    assert ramp_violations(free, 0.1, LIMITS)[0].max() > 10  # 17 MW steps: the utility's limit broken
    plan = _job_plan(headroom_w=30 * MW)
    assert plan.fits and plan.allowance_w == 3 * MW
    floor, cap = float(plan.floor_w[0]), float(plan.cap_w[0])
    assert cap == COMPUTE_W and floor == pytest.approx(COMPUTE_W - 3 * MW / JOB.size)  # 850 W held, no cap
    held = _swinging_site(cap, floor)
    up, down = ramp_violations(held, 0.1, LIMITS)
    assert up.max() <= 1e-9 and down.max() <= 1e-9
    assert np.nanmax(np.abs(ramp_mw_per_s(held, 0.1, 1.0))) == pytest.approx(3.0)
    # No slowdown; the floor burns 14 MW x 30 % of the time. Capping alone (no headroom for a floor) would
    # cost the job far more GPU time than the floor burns.
    assert plan.slowdown[0] == 0 and plan.energy_w == pytest.approx(14 * MW * COMM_FRAC)
    capped = _job_plan(headroom_w=0.0)
    assert capped.fits and capped.slowdown[0] > 0.5
    assert plan.cost_w < capped.cost_w / 3
    assert np.isfinite(plan.gpu_floor_w[JOB]).all() and np.isnan(plan.gpu_floor_w[PRIO != TRAIN]).all()


def test_the_breaker_headroom_bounds_the_floor_and_the_compute_peak_takes_the_rest() -> None:
    plan = _job_plan(headroom_w=4 * MW)  # the floor would rise 14 MW; the breaker policy leaves 4
    assert plan.floor_rise_w == pytest.approx(4 * MW)
    assert float(np.nansum(plan.gpu_floor_w - COMM_W)) <= 4 * MW + 1
    assert plan.fits and plan.cap_w[0] < COMPUTE_W and plan.slowdown[0] > 0
    assert any("breaker headroom" in n for n in plan.notes)
    held = _swinging_site(float(plan.cap_w[0]), float(plan.floor_w[0]))
    assert ramp_violations(held, 0.1, LIMITS)[0].max() <= 1e-9


def test_a_gpu_without_a_floor_control_gets_a_peak_cap_and_an_impossible_swing_says_how_far_over() -> None:
    plan = _job_plan(headroom_w=30 * MW, has_floor=[False])
    assert plan.mechanism == ["peak-cap"]
    # No floor it cannot hold: the whole 14 MW comes off its compute peak (17 MW swing, 3 MW allowed), and the
    # job pays for it in iterations (a cap at 300 W of a 1000 W compute phase).
    assert np.isnan(plan.gpu_floor_w).all() and plan.floor_rise_w == 0.0 and plan.energy_w == 0.0
    assert plan.fits and plan.cap_w[0] == pytest.approx(COMM_W + 3 * MW / JOB.size)
    assert (plan.gpu_cap_w[JOB] == pytest.approx(300.0)) and np.isnan(plan.gpu_cap_w[PRIO != TRAIN]).all()
    assert plan.slowdown[0] == pytest.approx((1 - COMM_FRAC) * (COMPUTE_W / 300.0 - 1))
    held = _swinging_site(float(plan.cap_w[0]), COMM_W)
    assert ramp_violations(held, 0.1, LIMITS)[0].max() <= 1e-9
    # The rest of the site already uses the whole limit; no headroom, and a minimum above the low phase:
    # capped to its 200 W minimum the job still steps 1 MW at each transition.
    worst = _job_plan(headroom_w=0.0, other_swing_w=3 * MW)
    assert not worst.fits and worst.excess_w == pytest.approx(20_000 * 50.0)


def _mixed_plan(**kw: Any) -> FloorPlan:
    """The 20 MW job as two jobs of 10k GPUs each: A on GPUs with a power floor, B on GPUs without (H100s)."""
    a, b = JOB[:10_000], JOB[10_000:]
    return floor_plan([a, b], np.array([COMPUTE_W] * 2), np.array([COMM_W] * 2), np.array([COMM_FRAC] * 2),
                      GPU_MIN, GPU_MAX, LIMITS, kw.pop("headroom_w", 30 * MW), has_floor=[True, False], **kw)


def test_a_mixed_site_floors_the_jobs_that_have_a_floor_and_caps_only_the_compute_peak_of_those_without() -> None:
    a, b = JOB[:10_000], JOB[10_000:]
    plan = _mixed_plan()
    assert plan.mechanism == ["power-floor", "peak-cap"]
    # Each job takes its share of the 14 MW the swing is over (7 MW each: equal swings): A as a floor, B off its
    # compute peak, and neither takes up the other's share. Together they step the site by the allowance.
    assert plan.fits and plan.planned_swing_w == pytest.approx(3 * MW) and plan.allowance_w == 3 * MW
    assert (plan.gpu_floor_w[a] == pytest.approx(850.0)) and np.isnan(plan.gpu_cap_w[a]).all()
    assert np.isnan(plan.gpu_floor_w[b]).all() and (plan.gpu_cap_w[b] == pytest.approx(300.0))
    assert plan.slowdown[0] == 0.0 and plan.slowdown[1] > 1.0  # only the job without a floor slows
    assert plan.floor_rise_w == pytest.approx(7 * MW) and plan.energy_w == pytest.approx(7 * MW * COMM_FRAC)
    assert any("1 job(s) without a power floor: 7 MW" in n for n in plan.notes)
    # Every transition of both jobs together stays within the limit.
    t = np.arange(0, 30, 0.1)
    in_comm = (t % ITER_S) >= ITER_S * (1 - COMM_FRAC)
    load = 80 * MW + a.size * np.where(in_comm, 850.0, COMPUTE_W) + b.size * np.where(in_comm, COMM_W, 300.0)
    assert ramp_violations(load, 0.1, LIMITS)[0].max() <= 1e-9
    # has_floor for every job (or None) is the plan of before: both floored alike, no cap.
    both = floor_plan([a, b], np.array([COMPUTE_W] * 2), np.array([COMM_W] * 2), np.array([COMM_FRAC] * 2),
                      GPU_MIN, GPU_MAX, LIMITS, 30 * MW, has_floor=[True, True])
    assert (both.floor_w == pytest.approx(850.0)) and (both.cap_w == COMPUTE_W).all()
    assert both.mechanism == ["power-floor"] * 2 and np.isnan(both.gpu_cap_w).all()


def test_where_a_cap_without_a_floor_reaches_the_minimum_the_floors_go_first_and_the_rest_is_on_the_peaks() -> None:
    a, b = JOB[:10_000], JOB[10_000:]
    plan = _mixed_plan(other_swing_w=2.5 * MW)  # 0.5 MW allowed: 8.25 MW each, B can give 8 (1000 W to 200 W)
    assert (plan.gpu_cap_w[b] == pytest.approx(200.0)) and np.isnan(plan.gpu_floor_w[b]).all()
    assert (plan.gpu_floor_w[a] == pytest.approx(975.0))  # its own share as a floor, first
    assert (plan.gpu_cap_w[a] == pytest.approx(975.0))  # and B's last 0.25 MW off its peak, down to that floor
    assert plan.fits and plan.planned_swing_w == pytest.approx(0.5 * MW)
    with pytest.raises(ValueError, match="has_floor has shape"):
        floor_plan([a, b], np.array([COMPUTE_W] * 2), np.array([COMM_W] * 2), np.array([COMM_FRAC] * 2),
                   GPU_MIN, GPU_MAX, LIMITS, 30 * MW, has_floor=[True])


def test_a_staggered_start_takes_at_least_20_mw_over_the_limit_and_never_ramps_faster() -> None:
    plan = stagger_plan(JOB, 0.0, 1000.0, LIMITS, group_size=8)
    assert plan.held.size == 0 and sum(g.size for g in plan.groups) == JOB.size
    assert plan.duration_s >= 20 / 3.0
    assert np.abs(plan.step_w).max() <= 3 * MW
    dt = 0.1
    load = np.zeros(round((plan.duration_s + 5) / dt))
    for t0, g in zip(plan.t_s, plan.groups, strict=True):
        load[round(t0 / dt):] += 1000.0 * g.size
    assert load[-1] == pytest.approx(20 * MW)
    assert np.nanmax(ramp_mw_per_s(load, dt, 1.0)) <= 3.0 + 1e-9
    # Stopping: the same in reverse; with half the limit used by the rest of the site, twice as long.
    stop = stagger_plan(JOB, 1000.0, 0.0, LIMITS, group_size=8, other_ramp_w_per_s=1.5 * MW)
    assert (stop.step_w < 0).all() and stop.duration_s >= 20 / 1.5


def test_a_staggered_start_never_rises_above_the_breaker_headroom() -> None:
    plan = stagger_plan(JOB, 0.0, 1000.0, LIMITS, headroom_w=5 * MW, group_size=8)
    assert plan.step_w.sum() <= 5 * MW
    assert plan.held.size == JOB.size - 5000 and "breaker" in plan.reason


def test_a_release_after_an_emergency_rises_within_the_ramp_limit_critical_first_and_within_the_breaker() -> None:
    cap = np.full(N, 400.0)
    demand = np.full(N, 900.0)
    plan = release_plan(cap, GPU_MAX, demand, PRIO, LIMITS)
    assert plan.complete and (plan.rise_w <= 3 * MW + 1e-6).all()
    assert plan.rise_w.sum() == pytest.approx(N * 500.0)
    first = plan.cap_w[0]
    assert (first[PRIO == CRIT] > 400).all() and (first[PRIO != CRIT] == 400).all()
    assert (plan.cap_w[-1] == GPU_MAX).all()
    short = release_plan(cap, GPU_MAX, demand, PRIO, LIMITS, headroom_w=10 * MW)
    assert short.rise_w.sum() <= 10 * MW + 1e-6
    assert not short.complete and short.held_w == pytest.approx(N * 500.0 - 10 * MW)


def _event(**kw: object) -> DemandResponse:
    return DemandResponse.model_validate({"id": "dr-1", "start_s": 100.0, "within_s": 30.0, "hold_s": 600.0,
                                          **kw})


def test_demand_response_sheds_best_effort_and_training_before_batch_before_critical_and_restores_in_ramp() -> None:
    power = np.full(N, 1000.0)
    plan = dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, LIMITS)
    by = plan.shed_by_class_w
    assert plan.reachable and plan.need_w == pytest.approx(25 * MW) and plan.binding == "none"
    assert by["best-effort"] == pytest.approx(8 * MW) and by["training"] == pytest.approx(16 * MW)
    assert by["inference-batch"] == pytest.approx(1 * MW) and by["inference-critical"] == 0.0
    assert (plan.limit_w >= GPU_MIN).all() and (plan.limit_w[PRIO == CRIT] == 1000.0).all()
    # Paced within the ramp-down limit, reached within the 30 s deadline.
    assert plan.reach_s <= plan.deadline_s and np.diff(np.r_[0.0, plan.shed_w]).max() <= 3 * MW
    t = np.arange(90.0, 760.0, 1.0)
    load = np.array([100 * MW - (GPU_MAX - np.minimum(power, plan.caps_at(x))).sum() for x in t])
    assert ramp_violations(load, 1.0, LIMITS)[1].max() <= 1e-9
    out = dr_outcome(load, 1.0, 90.0, _event(reduce_by_pct=25.0))
    assert out["met"] == 1.0 and out["time_to_target_s"] <= 30
    restore = dr_restore_plan(plan, LIMITS)
    assert restore.complete and (restore.rise_w <= 3 * MW + 1e-6).all()
    assert restore.rise_w.sum() == pytest.approx(25 * MW)
    assert (restore.cap_w[0][PRIO == BATCH] == 1000.0).all()  # the highest class shed comes back first
    assert (restore.cap_w[-1] == GPU_MAX).all()


def test_a_ramp_limit_too_slow_for_the_deadline_wins_and_the_plan_says_how_late() -> None:
    slow = GridLimits(ramp_up_mw_per_s=0.5, ramp_down_mw_per_s=0.5)
    power = np.full(N, 1000.0)
    plan = dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, slow)
    assert plan.binding == "ramp" and plan.late_s == pytest.approx(20.0) and plan.reach_s == pytest.approx(150.0)
    assert np.diff(np.r_[0.0, plan.shed_w]).max() <= 0.5 * MW + 1e-6
    rushed = dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, slow,
                     prefer="deadline")
    assert rushed.binding == "deadline" and rushed.reach_s <= rushed.deadline_s
    assert rushed.ramp_over == pytest.approx(25 / 30 / 0.5 - 1)


def test_a_target_out_of_reach_says_how_short_and_critical_goes_last_through_clocks_and_routing() -> None:
    power = np.full(N, 1000.0)
    plan = dr_plan(_event(reduce_to_mw=10.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, LIMITS)
    assert not plan.reachable and plan.short_w == pytest.approx(90 * MW - N * 800.0)
    assert plan.shed_by_class_w["inference-critical"] == pytest.approx(40 * MW)
    assert any("clock locks and routing" in n for n in plan.notes) and any("short" in n for n in plan.notes)
    assert (plan.limit_w == GPU_MIN).all()
    no_crit = dr_plan(_event(reduce_to_mw=60.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, LIMITS,
                      allow_critical=False)
    assert no_crit.short_w == pytest.approx(40 * MW - 40 * MW) and no_crit.reachable
    assert math.isclose(no_crit.shed_by_class_w["inference-critical"], 0.0)


def test_a_restore_never_rises_above_the_breaker_headroom() -> None:
    power = np.full(N, 1000.0)
    plan = dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, power, GPU_MAX.copy(), PRIO, GPU_MIN, LIMITS)
    restore = dr_restore_plan(plan, LIMITS, headroom_w=7 * MW)
    assert restore.rise_w.sum() <= 7 * MW + 1e-6 and not restore.complete
    assert restore.held_w == pytest.approx(18 * MW)


def test_bad_input_is_one_line_naming_the_function_and_the_array() -> None:
    with pytest.raises(ValueError, match=r"dr_plan: cap_w has shape \(3,\), expected one value per GPU \(100000\)"):
        dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, np.full(N, 1000.0), np.ones(3), PRIO, GPU_MIN, LIMITS)
    with pytest.raises(ValueError, match="stagger_plan: step_s must be a positive number"):
        stagger_plan(JOB, 0.0, 1000.0, LIMITS, step_s=0.0)
    unknown = GPU_MAX.copy()
    unknown[:10] = np.nan
    with pytest.raises(ValueError, match="dr_plan: cap_w has 10 unknown"):
        dr_plan(_event(reduce_by_pct=25.0), 100.0, 100 * MW, np.full(N, 1000.0), unknown, PRIO, GPU_MIN, LIMITS)
    # No ramp-down limit: the whole shed in the first step, on time.
    plan = dr_plan(_event(reduce_by_pct=25.0), 129.5, 100 * MW, np.full(N, 1000.0), GPU_MAX.copy(), PRIO, GPU_MIN,
                   GridLimits())
    assert plan.binding == "none" and plan.shed_w.size == 1
