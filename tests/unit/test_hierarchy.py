"""Budgets down the power tree, and the power brake: a level over its limit is brought back even when
every PDU under it is within its own limit; a level the caps cannot hold gets the brake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controllers.capping import CapSettings, brake_levels, decide_caps, worst_level
from powerplane.site import PRIORITIES, FloatArray, Site
from powerplane.site_file import load_site
from sim.fleet import Fleet

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
S = CapSettings()
CRIT = PRIORITIES.index("inference-critical")


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


def tree_loads(site: Site, pdu_power_w: FloatArray) -> FloatArray:
    """Every feed level's load from the rack PDU meters (n_racks, 2), as the streams stage rolls it up."""
    n = len(site.level_ids)
    out = np.full(n, np.nan)
    per_pdu = np.bincount(site.rack_pdu.ravel(), weights=pdu_power_w.ravel(), minlength=n)
    out[site.rack_pdu.ravel()] = per_pdu[site.rack_pdu.ravel()]
    for kind in ("rpp", "ups", "utility"):
        lv = site.levels_of_kind(kind)
        kids = np.flatnonzero(np.isin(site.level_parent, lv))
        sums = np.bincount(site.level_parent[kids], weights=np.nan_to_num(out[kids]), minlength=n)
        out[lv] = sums[lv]
    return out


def test_the_rpp_over_its_limit_sheds_every_rack_although_each_pdu_is_under_its_own(site: Site) -> None:
    _, limit = site.limits_w("A-lost")
    b = site.rack_pdu[:, 1]
    rpp = site.level("rpp-b1")
    pdu = np.column_stack([np.zeros(site.n_racks), np.full(site.n_racks, 36_000.0)])  # 78 % of each PDU
    loads = tree_loads(site, pdu)
    assert np.all(loads[b] < S.cap_threshold * limit[b])
    assert loads[rpp] > S.high_threshold * limit[rpp]  # 288 kW on a 320 kW RPP: 90 %
    power = cap = site.gpu_max_w.copy()
    new = decide_caps(site, power, cap, loads, limit, S)
    shed_wall = (cap - new) / 0.94
    per_rack = np.bincount(site.gpu_rack, weights=shed_wall, minlength=site.n_racks)
    # Every rack under the RPP gives its part, evenly (they are alike), low priority only: shedding the
    # lower classes is enough to bring the RPP under its high threshold, so critical is not touched.
    assert np.all(per_rack > 0) and per_rack.std() < 0.01 * per_rack.mean()
    assert np.all(new[site.gpu_priority == CRIT] == 700)
    after = loads[rpp] - per_rack.sum()
    assert after == pytest.approx((S.cap_threshold - S.target_margin) * limit[rpp], rel=0.01)
    # The reason names the RPP, not a PDU.
    lvl, ratio = worst_level(site, loads, limit)
    assert {site.level_ids[i] for i in lvl} == {"rpp-b1"} and ratio[0] == pytest.approx(0.9)


def test_a_rack_takes_the_largest_share_any_ancestor_asks(site: Site) -> None:
    _, limit = site.limits_w("A-lost")
    pdu = np.column_stack([np.zeros(site.n_racks), np.full(site.n_racks, 36_000.0)])
    pdu[3, 1] = 44_000.0  # rack 4's own PDU is over 89 % as well
    loads = tree_loads(site, pdu)
    power = cap = site.gpu_max_w.copy()
    new = decide_caps(site, power, cap, loads, limit, S)
    per_rack = np.bincount(site.gpu_rack, weights=(cap - new) / 0.94, minlength=site.n_racks)
    own = 44_000.0 - (S.high_threshold - S.target_margin) * 46_000.0  # what its PDU alone asks (all classes)
    assert per_rack[3] >= own * 0.99
    assert per_rack[3] > per_rack[np.arange(site.n_racks) != 3].max()
    # And every level above ends at or under its target once the caps take effect.
    shed_b = np.zeros_like(pdu)
    shed_b[:, 1] = per_rack
    after = tree_loads(site, pdu - shed_b)
    feed = site.rack_pdu.ravel()
    assert np.all(after[feed][pdu.ravel() > 0] <= S.high_threshold * limit[feed][pdu.ravel() > 0] * 1.001)
    assert after[site.level("rpp-b1")] <= S.cap_threshold * limit[site.level("rpp-b1")]


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_loop_feed_loss_holds_every_level_of_the_tree(site: Site, seed: int) -> None:
    """The simulated fleet loses feed A; with every level's load fed back each second, no breaker on
    the surviving feed stays over its high threshold after the first decision, and critical keeps the most."""
    fleet = Fleet(site, seed=seed)
    everyone = np.arange(site.n_gpus)
    _, limit = site.limits_w("A-lost")
    fleet.step()
    fleet.lose_feed("A")
    worst: list[float] = []
    breakers = np.flatnonzero(np.isin(site.level_kind, [1, 2, 3, 4]) & (limit > 0))
    for i in range(20):
        fr = fleet.step()
        loads = tree_loads(site, fr.pdu_power_w)
        if i > 1:
            worst.append(float(np.max(loads[breakers] / limit[breakers])))
        fleet.set_limit(everyone, decide_caps(site, fr.power_w, fleet.limit_w, loads, limit, S))
    assert max(worst) <= S.high_threshold * 1.01
    prio = site.gpu_priority
    assert fleet.limit_w[prio == CRIT].mean() > fleet.limit_w[prio != CRIT].mean()


def test_the_brake_needs_the_level_over_100_percent_for_its_grace_time(site: Site) -> None:
    n = len(site.level_ids)
    limit = np.full(n, 100.0)
    over = np.full(n, np.nan)
    i = site.level("ups-b")
    over[i] = 105.0
    since = np.full(n, np.inf)
    brake, since = brake_levels(over, limit, since, 10.0, S)
    assert not brake.any()
    brake, since = brake_levels(over, limit, since, 11.0, S)
    assert not brake.any()
    brake, since = brake_levels(over, limit, since, 10.0 + S.brake_after_s, S)
    assert np.flatnonzero(brake).tolist() == [i]
    # A reading back under the limit resets the clock.
    under = over.copy()
    under[i] = 95.0
    brake, since = brake_levels(under, limit, since, 13.0, S)
    assert not brake.any() and np.isinf(since[i])


def test_a_braked_level_sends_every_gpu_under_it_to_its_minimum(site: Site) -> None:
    _, limit = site.limits_w("A-lost")
    pdu = np.column_stack([np.zeros(site.n_racks), np.full(site.n_racks, 30_000.0)])
    loads = tree_loads(site, pdu)
    brake = np.zeros(len(site.level_ids), dtype=bool)
    brake[site.level("ups-b")] = True
    power = cap = site.gpu_max_w.copy()
    new = decide_caps(site, power, cap, loads, limit, S, brake=brake)
    np.testing.assert_array_equal(new, site.gpu_min_w)
    # Nothing is released while the brake holds, even with room everywhere.
    again = decide_caps(site, new, new, tree_loads(site, pdu * 0.3), limit, S, brake=brake)
    np.testing.assert_array_equal(again, site.gpu_min_w)


def test_a_zone_heat_budget_sheds_the_zone_to_it(site: Site) -> None:
    _, limit = site.limits_w("normal")
    pdu = np.full((site.n_racks, 2), 15_000.0)  # 30 kW a rack, far under every breaker
    loads = tree_loads(site, pdu)
    zone = site.levels_of_kind("zone")[0]
    loads[zone] = 30_000.0 * site.n_racks
    power = cap = site.gpu_max_w.copy()
    assert np.array_equal(decide_caps(site, power, cap, loads, limit, S), cap)
    budget = np.full(len(site.level_ids), np.nan)
    budget[zone] = 0.9 * loads[zone]
    new = decide_caps(site, power, cap, loads, limit, S, heat_budget_w=budget)
    shed = float(((cap - new) / 0.94).sum())
    assert shed >= 0.1 * loads[zone] * 0.99


def test_the_controller_sees_an_rpp_over_from_its_pdus_before_the_stage_window(site: Site) -> None:
    """Feed A lost: every B PDU at 36 kW (under its own threshold) reports per frame; the RPP's window still
    says the normal 144 kW. The controller sums the PDUs and sheds for the RPP in the same decision."""
    from controllers.controller import CapController
    from powerplane.schemas import LevelAggregate
    from powerplane.signing import Keyring

    ctl = CapController(site, Keyring({"k": b"\x02" * 32}, "k"), S, 30.0)
    ctl.cap_w[:] = site.gpu_max_w
    ctl.gpu_power_w[:] = site.gpu_max_w

    def agg(level: str, kind: str, power_w: float, ts: float) -> LevelAggregate:
        return LevelAggregate(site="lab", level=level, kind=kind, ts_s=ts, window_s=1.0, power_w=power_w,
                              limit_w=float(site.limits_w("A-lost")[1][site.level(level)]), rated_w=1.0,
                              mode="normal", gpus_expected=64, gpus_reporting=64)

    ctl.on_aggregate(agg("rpp-b1", "rpp", 144_000.0, 99.0), 99.5)  # the last window: before the loss
    for r in range(site.n_racks):
        ctl.on_aggregate(agg(site.level_ids[int(site.rack_pdu[r, 0])], "pdu", 0.0, 100.0), 100.1)
        ctl.on_aggregate(agg(site.level_ids[int(site.rack_pdu[r, 1])], "pdu", 36_000.0, 100.0), 100.1)
    cmds = ctl.decide(100.5)
    assert {c.target for c in cmds} == set(site.rack_ids)
    assert all(c.reason.startswith("shedding: rpp-b1 at 90%") for c in cmds), {c.reason for c in cmds}
    # In steady state the sum of the PDUs agrees with the window, which stays what the controller uses.
    ctl2 = CapController(site, Keyring({"k": b"\x02" * 32}, "k"), S, 30.0)
    ctl2.cap_w[:] = site.gpu_max_w
    ctl2.on_aggregate(agg("rpp-b1", "rpp", 150_000.0, 100.0), 100.5)
    for r in range(site.n_racks):
        ctl2.on_aggregate(agg(site.level_ids[int(site.rack_pdu[r, 1])], "pdu", 18_000.0, 100.0), 100.1)
        ctl2.on_aggregate(agg(site.level_ids[int(site.rack_pdu[r, 0])], "pdu", 18_000.0, 100.0), 100.1)
    assert ctl2.decide(100.6) == []
    assert ctl2._feed_estimates(ctl2.level_power_w)[site.level("rpp-b1")] == 150_000.0
