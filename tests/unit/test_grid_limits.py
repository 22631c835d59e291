"""The controller's side of the utility's limits (controllers/grid_limits.py): a demand-response request as a
budget paced by the ramp limits, and cap releases held to the ramp-up allowance, highest priority first."""

from __future__ import annotations

import numpy as np
import pytest

from controllers.capping import CapSettings
from controllers.grid_limits import GridControl
from powerplane.grid import DemandResponse, GridLimits
from powerplane.site_file import load_site

MW = 1e6


def _ctl(grid: dict[str, float] | None, send_floors: bool = False) -> GridControl:
    from pathlib import Path

    site = load_site(Path(__file__).resolve().parents[2] / "examples" / "lab.toml")
    site.grid = GridLimits.model_validate(grid) if grid is not None else None
    return GridControl(site, CapSettings(), send_floors=send_floors)


def test_demand_response_budget_is_paced_down_held_then_raised_at_the_ramp_limits() -> None:
    g = _ctl({"ramp_up_mw_per_s": 0.01, "ramp_down_mw_per_s": 0.02})
    s = g.settings
    scale = (s.cap_threshold - s.target_margin) / s.cap_threshold
    loads = np.full(len(g.site.level_ids), np.nan)
    loads[g.site_level] = 0.4 * MW
    ev = DemandResponse(id="dr", start_s=100.0, reduce_by_pct=25.0, within_s=10.0, hold_s=20.0)
    assert "from 0.40 MW to 0.30 MW" in g.on_demand_response(ev, loads)
    assert "already held" in g.on_demand_response(ev, loads)

    def budget(t: float) -> float:
        return float(g.budget_w(t, loads)[g.site_level])

    assert np.isnan(g.budget_w(99.0, loads)[g.site_level])  # not before it starts
    assert budget(100.0) == pytest.approx(0.4 * MW)  # nothing shed at once: decide_caps sheds above 1.04 x this
    assert budget(102.0) == pytest.approx(0.36 * MW)  # down at 0.02 MW/s
    # The target, reached by the deadline and held, passed so that decide_caps holds the load at or under it.
    assert budget(110.0) == pytest.approx(0.3 * MW * scale)
    assert budget(129.0) == pytest.approx(0.3 * MW * scale)
    assert budget(135.0) == pytest.approx(0.35 * MW)  # back up at 0.01 MW/s from the end of the hold
    assert not np.isfinite(g.budget_w(300.0, loads)).any() and not g.requests  # restored: gone


def test_releases_are_held_to_the_paced_share_of_the_ramp_up_allowance_highest_priority_first() -> None:
    g = _ctl({"ramp_up_mw_per_s": 0.001})  # 1 kW per decision, half of it for releases (the rest is quiet)
    site = g.site
    n = site.n_gpus
    cap = np.full(n, 300.0)
    new = np.full(n, 700.0)
    power = np.full(n, 300.0)  # at their caps: their demand is unknown, each counts its whole rise
    out = g.limit_release(cap, new, power)
    rise_wall = float(np.sum((out - cap) / g.eff))
    assert rise_wall == pytest.approx(500.0, rel=1e-6)
    g.other_w = 700.0  # the rest of the site moved 0.7 kW in a second this minute: releases get what it leaves
    assert float(np.sum((g.limit_release(cap, new, power) - cap) / g.eff)) == pytest.approx(300.0, rel=1e-6)
    g.other_w = 5000.0  # ... never under a quarter
    assert float(np.sum((g.limit_release(cap, new, power) - cap) / g.eff)) == pytest.approx(250.0, rel=1e-6)
    moved = out > cap
    assert set(site.gpu_priority[moved].tolist()) == {0}  # inference-critical comes back first
    # A cut is never slowed, and without a ramp limit nothing is held.
    assert (g.limit_release(cap, np.full(n, 200.0), power) == 200.0).all()
    assert (_ctl(None).limit_release(cap, new, power) == new).all()


def test_floors_go_on_swinging_job_gpus_only_and_never_above_their_caps() -> None:
    g = _ctl({"ramp_up_mw_per_s": 0.005, "ramp_down_mw_per_s": 0.005})
    site = g.site
    train = site.gpu_priority == 2
    cap = np.full(site.n_gpus, 700.0)
    cap[np.flatnonzero(train)[:8]] = 400.0  # the breaker policy holds these lower
    floor = np.full(site.n_gpus, np.nan)
    for k in range(12):  # a synchronous job: whole seconds of compute, then of communication
        p = np.full(site.n_gpus, 300.0)
        p[train] = 690.0 if k % 3 else 130.0
        floor = g.floors(p, cap)
    assert np.isfinite(floor[train]).all() and not np.isfinite(floor[~train]).any()
    assert (floor[train] <= cap[train]).all()
    # 64 GPUs swinging 560 W each (~38 kW at the wall) against 5 kW/s: floored close to their high phase.
    assert np.nanmin(floor[train][8:]) > 550.0
    assert not np.isfinite(_ctl(None).floors(p, cap)).any()  # no ramp limit: no floor
    # A best-effort fine-tuning job swings like training and is floored alike; steady GPUs of the class are not.
    g = _ctl({"ramp_up_mw_per_s": 0.005, "ramp_down_mw_per_s": 0.005})
    be = np.flatnonzero(site.gpu_priority == 3)
    for k in range(12):
        p = np.full(site.n_gpus, 300.0)
        p[be[:32]] = 690.0 if k % 3 else 130.0
        floor = g.floors(p, np.full(site.n_gpus, 700.0))
    assert np.isfinite(floor[be[:32]]).all() and not np.isfinite(floor[be[32:]]).any()


def test_an_announced_job_start_has_its_gpus_floored_up_to_compute_power_before_it_within_the_allowance() -> None:
    """A synchronous job's GPUs start within one second: 64 GPUs from ~100 W idle to ~700 W is ~40 kW at once
    against a 5 kW/s limit. Told 60 s ahead, the controller floors them up before the start, no second's rise
    over the paced share of the allowance, and at the start they already draw what they will compute at."""
    g = _ctl({"ramp_up_mw_per_s": 0.005, "ramp_down_mw_per_s": 0.005})
    site = g.site
    train = np.flatnonzero(site.gpu_priority == 2)
    idle = np.full(site.n_gpus, 300.0)
    idle[train] = site.gpu_idle_w[train]
    cap = np.full(site.n_gpus, np.nan)
    assert "64 GPUs start at 1970-01-01 00:01:40 UTC" in g.on_job_notice("sync", train, 100.0)
    walls = []
    for t in range(40, 101):
        f = g.floors(np.fmax(idle, g.floor_w), cap, now_s=float(t))
        walls.append(float(np.nansum(np.where(np.isfinite(f), f - site.gpu_idle_w, 0.0)[train] / g.eff[train])))
        assert not np.isfinite(f[np.setdiff1d(np.arange(site.n_gpus), train)]).any()  # only the job's GPUs
    steps = np.diff(walls)
    assert walls[0] == 0.0  # nothing burnt long before the start
    assert steps.max() <= g.paced_w(5000.0) + 1.0 and (steps >= -1.0).all()
    assert np.allclose(g.floor_w[train], site.gpu_max_w[train])  # at the start: their compute power
    # Without the notice, the same idle GPUs get no floor at all (nothing runs).
    h = _ctl({"ramp_up_mw_per_s": 0.005, "ramp_down_mw_per_s": 0.005})
    assert not np.isfinite(h.floors(idle, cap, now_s=100.0)).any()


def test_a_demand_response_shed_is_paced_lowest_priority_first_and_a_breaker_cut_stays_whole() -> None:
    g = _ctl({"ramp_down_mw_per_s": 0.004})  # 4 kW/s down: 2 kW a decision for the request's own cuts
    site = g.site
    n = site.n_gpus
    cap = np.full(n, np.nan)  # uncapped
    power = np.full(n, 650.0)
    base = np.full(n, 700.0)  # without the request: nothing cut
    dr = np.full(n, 300.0)  # the request's budget: every GPU to 300 W
    out = g.limit_shed(cap, base, dr, power)
    fell = float(np.sum((power - np.minimum(power, out)) / g.eff))
    assert fell == pytest.approx(g.paced_w(4000.0), rel=1e-6)
    cut = out < 650.0
    assert set(site.gpu_priority[cut].tolist()) == {3}  # best-effort first
    assert (out[~cut] == 700.0).all()  # the rest keep their caps without the request, not pinned at their draw
    # A breaker's cut (in base) is never slowed; the request's extra below it is.
    base[:8] = 200.0
    out = g.limit_shed(cap, base, np.minimum(dr, base), power)
    assert (out[:8] == 200.0).all()
    assert (_ctl(None).limit_shed(cap, base, dr, power) == dr).all()  # no ramp limit: nothing held


def test_a_release_takes_the_room_the_floors_leave_and_counts_a_low_phase_gpu_at_its_compute_phase() -> None:
    """Training GPUs capped at 400 W swing between their cap (compute) and ~130 W (communication), floored to
    the 4 kW/s allowance. One read in its low phase, at its floor, may be in its high phase at its new cap the
    next second: the site then rises by the floors' swing plus the release. So a release takes only the room
    the floors leave; the first decision finds none, and its floors make room for the next. Read in its low
    phase, a GPU's release is counted at its compute phase (counted as free, all would go at once)."""
    up = 4000.0
    g = _ctl({"ramp_up_mw_per_s": up / MW, "ramp_down_mw_per_s": up / MW})
    site = g.site
    train = site.gpu_priority == 2
    cap = np.where(train, 400.0, np.nan)
    p = np.full(site.n_gpus, 300.0)
    for k in range(6):  # the controller has seen them swing
        p[train] = 400.0 if k % 2 else 130.0
        g.floors(p, cap)
    assert 0.9 * up < g.swing_w <= up + 200.0  # the floors take the allowance (10 W steps: +-5 W a GPU)
    p[train] = 130.0  # read now in the low phase
    to = np.where(train, 700.0, np.nan)
    out = g.limit_release(cap, to, p)
    assert (out[train] == 400.0).all()  # no room yet
    g.floors(p, out)  # this decision's floors leave the next release its paced share
    assert g.swing_w < up - 0.8 * g.paced_w(up)
    out = g.limit_release(cap, to, p)
    rise = float(np.sum(np.where(train, out - 400.0, 0.0) / g.eff))
    assert rise == pytest.approx(min(g.paced_w(up), up - g.swing_w), rel=1e-6)
    assert g.swing_w + rise <= up + 1.0  # the worst second: low phase at the floor, then compute at the new cap


def test_the_rest_of_the_sites_swing_is_measured_when_a_job_gpus_reading_is_missing() -> None:
    """At scale some GPU's reading is always missing (~5 of 44,000 job GPUs a second on the reference site). The
    rest of the site's one-second change (here inference stepping 3 kW every other second) must still be measured:
    it is what the releases and floors leave room for. With any reading missing it read as 0."""
    g = _ctl({"ramp_up_mw_per_s": 0.005, "ramp_down_mw_per_s": 0.005})
    site = g.site
    train = np.flatnonzero(site.gpu_priority == 2)
    loads = np.full(len(site.level_ids), np.nan)
    for k in range(15):
        p = np.full(site.n_gpus, 300.0)
        p[train] = 500.0
        p[train[k % train.size]] = np.nan  # one missing reading each second
        loads[g.site_level] = 0.2 * MW + (3000.0 if k % 2 else 0.0)
        g.note_site_load(loads)
        g.floors(p, np.full(site.n_gpus, np.nan))
    assert g.other_w == pytest.approx(3000.0, abs=50.0)
    assert g.paced_w(5000.0) == pytest.approx(2000.0, abs=50.0)  # what the rest's swing leaves, not half of 5 kW


def _swing(g: GridControl, cap: np.ndarray, refused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One decision of the controller's ramp limit over the lab's 64 training GPUs as one synchronous job (whole
    seconds at 690 W, then at 130 W, each under its cap), the breaker policy asking for no cap at all."""
    p = np.full(g.site.n_gpus, 300.0)
    train = g.site.gpu_priority == 2
    p[train] = np.minimum(690.0 if k % 3 else 130.0, cap[train])
    out, floor = g.ramp_limit(cap, np.full(g.site.n_gpus, 700.0), p, refused, float(k))
    assert floor is not None
    return out, floor


def test_gpus_that_refuse_a_floor_get_a_cap_on_their_compute_peak_and_no_other_gpu_does() -> None:
    """Half the job's racks are H100s (their floors refused): their share of the swing goes on their compute peak,
    the other half holds floors, the job's swing is held within the 15 kW/s allowance, and no other GPU is capped.
    With no GPU refusing, nothing is capped."""
    g = _ctl({"ramp_up_mw_per_s": 0.015, "ramp_down_mw_per_s": 0.015}, send_floors=True)
    site = g.site
    train = site.gpu_priority == 2
    refused = train & (site.gpu_rack < 4)
    cap = np.full(site.n_gpus, 700.0)
    for k in range(15):
        cap, floor = _swing(g, cap, refused, k)
    assert (np.isfinite(g.peak_w) == refused).all() and (cap[refused] == g.peak_w[refused]).all()
    assert (cap[~refused] == 700.0).all()  # the floored GPUs and every other GPU keep what the breaker decided
    assert (np.isfinite(floor) == (train & ~refused)).all()  # floors only where they are held
    # 64 GPUs swinging 560 W (~38 kW at the wall) against 15 kW: each half takes ~11.5 kW of it, the H100s as a
    # cap near 350 W (130 W + 11.5 kW / 32 GPUs x 0.94), the others as a floor near 470 W.
    assert g.peak_w[refused].min() >= 330.0 and g.peak_w[refused].max() <= 370.0
    assert floor[train & ~refused].min() >= 440.0 and floor[train & ~refused].max() <= 500.0
    assert g.floors_hold and 0.8 * 15000 < g.swing_w <= 15000 + 64 * 10 / 0.94  # capped high less low, with floors
    # A peak cap never goes below a GPU's minimum limit, and never raises a cap the breaker policy holds lower.
    low_cap = cap.copy()
    low_cap[refused] = 250.0
    out, _ = g.ramp_limit(low_cap, low_cap, np.full(site.n_gpus, 300.0), refused, 16.0)
    assert (out[refused] == 250.0).all() and (out >= site.gpu_min_w).all()
    h = _ctl({"ramp_up_mw_per_s": 0.015, "ramp_down_mw_per_s": 0.015}, send_floors=True)
    cap = np.full(site.n_gpus, 700.0)
    for k in range(15):
        cap, floor = _swing(h, cap, np.zeros(site.n_gpus, dtype=bool), k)
    assert not np.isfinite(h.peak_w).any() and (cap == 700.0).all() and np.isfinite(floor[train]).all()


def test_peak_caps_come_back_paced_when_the_refusals_expire_and_unpaced_when_the_limit_goes() -> None:
    """The caps on the compute peak are released, as any release, within the paced share of the ramp-up allowance
    a decision (the GPUs compute at them: each one's whole rise counts), once their GPUs hold floors (a refusal
    is asked again after an hour: a replaced server); with no ramp limit left they go the decision after."""
    up = 15000.0
    g = _ctl({"ramp_up_mw_per_s": up / MW, "ramp_down_mw_per_s": up / MW}, send_floors=True)
    site = g.site
    train = site.gpu_priority == 2
    cap = np.full(site.n_gpus, 700.0)
    for k in range(15):
        cap, _ = _swing(g, cap, train, k)
    assert (cap[train] < 400.0).all()
    rises = []
    for k in range(15, 60):
        before = cap
        cap, floor = _swing(g, cap, np.zeros(site.n_gpus, dtype=bool), k)
        rises.append(float(np.sum((cap - before)[train] / g.eff[train])))
    assert not np.isfinite(g.peak_w).any() and (cap[train] == 700.0).all() and np.isfinite(floor[train]).all()
    assert min(rises) >= 0.0 and max(rises) <= g.paced_w(up) + 1.0  # never a cut, never faster than the pace
    assert sum(r > 0 for r in rises) >= 3  # ~20 kW back in steps of at most ~7.5 kW
    # The limit taken away: nothing to hold the peaks for (the plan drops them), then nothing to pace by.
    h = _ctl({"ramp_up_mw_per_s": up / MW, "ramp_down_mw_per_s": up / MW}, send_floors=True)
    cap = np.full(site.n_gpus, 700.0)
    for k in range(15):
        cap, _ = _swing(h, cap, train, k)
    h.site.grid = None
    cap, floor = _swing(h, cap, train, 15)
    assert not np.isfinite(h.peak_w).any() and not np.isfinite(floor).any()
    cap, floor = _swing(h, cap, train, 16)
    assert (cap == 700.0).all()
