"""Priority-aware capping on the lab site: who gets capped, how far, and when caps come off (POLCA's two
thresholds: 80 % sheds low priority, 89 % sheds anyone, lowest first)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from collectors.base import SourceContext, load_source
from controllers.capping import CapSettings, decide_caps
from controllers.controller import CapController
from powerplane.schemas import Command, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import PRIORITIES, FloatArray, Site
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames
from streams.rollup import Limits, frame_aggregates

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
S = CapSettings()  # low priority: cap at 80 %, uncap at 75 %; everyone: cap at 89 %, uncap at 84 %
CRIT, BATCH, TRAIN, BEST = range(len(PRIORITIES))


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.fixture(scope="module")
def derated(site: Site) -> FloatArray:
    return site.limits_w("normal")[1]


def pdu_loads(site: Site, a_w: float | FloatArray, b_w: float | FloatArray) -> FloatArray:
    """Level-indexed PDU meter readings (W); every other level NaN."""
    out = np.full(len(site.level_ids), np.nan)
    out[site.rack_pdu[:, 0]] = a_w
    out[site.rack_pdu[:, 1]] = b_w
    return out


def rack_gpus(site: Site, rack: int, prio: int | None = None) -> np.ndarray:
    m = site.gpu_rack == rack
    if prio is not None:
        m &= site.gpu_priority == prio
    return np.flatnonzero(m)


def a_lost(site: Site, rack: int, b_w: float, others_b_w: float = 30_000.0) -> FloatArray:
    """Feed A lost everywhere (A meters read 0); rack `rack` draws b_w on its B PDU."""
    b = np.full(site.n_racks, others_b_w)
    b[rack] = b_w
    return pdu_loads(site, 0.0, b)


def full_power(site: Site) -> tuple[FloatArray, FloatArray]:
    return site.gpu_max_w.copy(), site.gpu_max_w.copy()  # (power, cap): uncapped, at full power


def test_lab_thresholds_are_what_the_tests_assume(site: Site, derated: FloatArray) -> None:
    pdu = site.rack_pdu[0, 1]
    assert derated[pdu] == pytest.approx(46_000.0)  # 57.5 kW x 0.8
    assert site.gpu_min_w.min() == 200.0 and site.gpu_max_w.max() == 700.0
    # Each rack: 4 critical servers, 2 batch, 1 training, 1 best-effort (8 GPUs each).
    assert np.bincount(site.gpu_priority[site.gpu_rack == 0]).tolist() == [32, 16, 8, 8]


def test_nothing_over_threshold_changes_nothing(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    new = decide_caps(site, power, cap, pdu_loads(site, 30_000.0, 30_000.0), derated, S)
    np.testing.assert_array_equal(new, cap)
    # Feed A lost, but every B PDU still under 80 % of 46 kW.
    new = decide_caps(site, power, cap, pdu_loads(site, 0.0, 36_000.0), derated, S)
    np.testing.assert_array_equal(new, cap)


def test_small_excess_caps_only_best_effort_on_that_rack(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    new = decide_caps(site, power, cap, a_lost(site, 2, 38_000.0), derated, S)
    changed = np.flatnonzero(new != cap)
    assert changed.size > 0
    assert set(site.gpu_rack[changed].tolist()) == {2}
    assert set(site.gpu_priority[changed].tolist()) == {BEST}
    be = rack_gpus(site, 2, BEST)
    assert np.all(new[be] < 700) and np.all(new[be] >= 200)
    for prio in (CRIT, BATCH, TRAIN):
        assert np.all(new[rack_gpus(site, 2, prio)] == 700)
    # It sheds enough DC watts to bring the PDU to the 77 % target (wall W x PSU efficiency).
    shed_dc = float((cap - new).sum())
    want_wall = 38_000.0 - (S.cap_threshold - S.target_margin) * 46_000.0
    assert shed_dc == pytest.approx(want_wall * 0.94, rel=0.01)


def test_large_excess_exhausts_lower_classes_before_critical(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    # 55 kW on a 46 kW PDU: best-effort, training and batch go to their floor (16 kW DC); that brings the
    # PDU under 89 %, so critical is left alone.
    new = decide_caps(site, power, cap, a_lost(site, 4, 55_000.0), derated, S)
    for prio in (BEST, TRAIN, BATCH):
        assert np.all(new[rack_gpus(site, 4, prio)] == 200), PRIORITIES[prio]
    assert np.all(new[rack_gpus(site, 4, CRIT)] == 700)
    # 62 kW: the lower classes cannot bring it under 89 %; critical gives the rest (~5 kW DC).
    new = decide_caps(site, power, cap, a_lost(site, 4, 62_000.0), derated, S)
    crit = new[rack_gpus(site, 4, CRIT)]
    assert np.all(crit < 700) and np.all(crit > 200)
    want_dc = (62_000.0 - (S.high_threshold - S.target_margin) * 46_000.0) * 0.94
    assert float((cap - new).sum()) == pytest.approx(want_dc, rel=0.01)
    # Other racks untouched.
    assert np.all(new[site.gpu_rack != 4] == 700)


def test_medium_excess_leaves_critical_untouched(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    # Need ~9 kW DC: best-effort (4 kW) and training (4 kW) to their minimum, batch a little.
    new = decide_caps(site, power, cap, a_lost(site, 4, 45_000.0), derated, S)
    assert np.all(new[rack_gpus(site, 4, BEST)] == 200)
    assert np.all(new[rack_gpus(site, 4, TRAIN)] == 200)
    assert np.all(new[rack_gpus(site, 4, BATCH)] < 700)
    assert np.all(new[rack_gpus(site, 4, CRIT)] == 700)


def test_caps_stay_within_gpu_limits(site: Site, derated: FloatArray) -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        power = rng.uniform(0, 900, site.n_gpus)
        power[rng.random(site.n_gpus) < 0.1] = np.nan
        cap = rng.uniform(50, 1000, site.n_gpus)
        cap[rng.random(site.n_gpus) < 0.05] = np.nan
        a = rng.uniform(0, 80_000, site.n_racks)
        b = rng.uniform(0, 80_000, site.n_racks)
        new = decide_caps(site, power, cap, pdu_loads(site, a, b), derated, S)
        assert np.all(np.isfinite(new))
        assert np.all(new >= site.gpu_min_w) and np.all(new <= site.gpu_max_w)


def test_hopeless_overload_floors_every_gpu_at_minimum(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    new = decide_caps(site, power, cap, a_lost(site, 0, 200_000.0), derated, S)
    assert np.all(new[rack_gpus(site, 0)] == 200)


def capped_state(site: Site, derated: FloatArray, rack: int) -> FloatArray:
    power, cap = full_power(site)
    return decide_caps(site, power, cap, a_lost(site, rack, 62_000.0), derated, S)  # critical capped too


def test_hysteresis_between_thresholds_holds_caps(site: Site, derated: FloatArray) -> None:
    caps = capped_state(site, derated, 4)
    for b_w in (38_800.0, 39_800.0, 40_800.0):  # between 84 % (38.6 kW) and 89 % (40.9 kW): nothing moves
        new = decide_caps(site, caps, caps, a_lost(site, 4, b_w), derated, S)
        np.testing.assert_array_equal(new, caps)
    low = site.gpu_priority != CRIT
    for b_w in (34_600.0, 35_500.0, 36_700.0):  # between 75 % and 80 %: low priority stays capped
        new = decide_caps(site, caps, caps, a_lost(site, 4, b_w), derated, S)
        np.testing.assert_array_equal(new[low], caps[low])


def test_below_uncap_threshold_releases_critical_first(site: Site, derated: FloatArray) -> None:
    caps = capped_state(site, derated, 4)
    crit = rack_gpus(site, 4, CRIT)
    assert np.all(caps[crit] < 700)
    # 33 kW: under critical's uncap threshold (84 %: 38.6 kW) but not 1.5 kW under low priority's (75 %).
    new = decide_caps(site, caps, caps, a_lost(site, 4, 33_000.0), derated, S)
    assert np.all(new[crit] > caps[crit])
    for prio in (BATCH, TRAIN, BEST):
        g = rack_gpus(site, 4, prio)
        np.testing.assert_array_equal(new[g], caps[g])
    # Released gradually: at most half the room under critical's uncap threshold (in DC watts).
    room_wall = S.high_uncap_threshold * 46_000.0 - 33_000.0
    assert 0 < float((new - caps).sum()) <= S.release_frac * room_wall * 0.94 * 1.01
    # Far below: everything comes back over a few steps.
    cur = caps
    for _ in range(30):
        cur = decide_caps(site, cur, cur, a_lost(site, 4, 20_000.0), derated, S)
    assert np.all(cur == 700)


def test_missing_gpu_power_counts_as_drawing_its_cap(site: Site, derated: FloatArray) -> None:
    power, cap = full_power(site)
    be = rack_gpus(site, 2, BEST)
    loads = a_lost(site, 2, 38_000.0)
    at_cap = decide_caps(site, power, cap, loads, derated, S)
    power_nan = power.copy()
    power_nan[be] = np.nan
    with_nan = decide_caps(site, power_nan, cap, loads, derated, S)
    np.testing.assert_array_equal(with_nan, at_cap)
    assert np.all(with_nan[be] < 700)
    # Reading NaN as 0 W would have left best-effort alone and capped training instead.
    power_zero = power.copy()
    power_zero[be] = 0.0
    with_zero = decide_caps(site, power_zero, cap, loads, derated, S)
    assert not np.array_equal(with_zero, with_nan)


def test_stale_or_missing_pdu_meters_hold_caps(site: Site, derated: FloatArray) -> None:
    caps = capped_state(site, derated, 4)
    new = decide_caps(site, caps, caps, pdu_loads(site, np.nan, np.nan), derated, S)
    np.testing.assert_array_equal(new, caps)


# ---- closed loop with the simulated fleet ----------------------------------------------------------


def frame_pdu_loads(site: Site, pdu_power_w: FloatArray) -> FloatArray:
    return pdu_loads(site, pdu_power_w[:, 0], pdu_power_w[:, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_loop_feed_loss_brings_every_pdu_under_threshold(site: Site, derated: FloatArray,
                                                               seed: int) -> None:
    fleet = Fleet(site, seed=seed)
    everyone = np.arange(site.n_gpus)
    fr = fleet.step()
    assert fr.pdu_power_w.max() < S.cap_threshold * 46_000.0  # healthy before the loss
    fleet.lose_feed("A")
    pdus = site.rack_pdu.ravel()
    worst_after_first: list[float] = []
    for i in range(20):
        fr = fleet.step()
        loads = frame_pdu_loads(site, fr.pdu_power_w)
        if i > 0:
            worst_after_first.append(float(np.max(loads[pdus] / derated[pdus])))
        fleet.set_limit(everyone, decide_caps(site, fr.power_w, fleet.limit_w, loads, derated, S))
    fr = fleet.step()
    loads = frame_pdu_loads(site, fr.pdu_power_w)
    assert np.all(loads[pdus] <= S.high_threshold * derated[pdus] * 1.01)
    assert max(worst_after_first) <= S.high_threshold * 1.01
    assert np.all(fr.pdu_power_w[:, 0] == 0)  # everything is on feed B
    prio = site.gpu_priority
    assert fleet.limit_w[prio == CRIT].mean() >= fleet.limit_w[prio == BEST].mean()
    assert fleet.limit_w[prio == CRIT].mean() > 200.0  # critical keeps more than the floor


# ---- the controller: frames + aggregates in, signed leased commands out ------------------------------


class Loop:
    def __init__(self, site: Site, seed: int = 3) -> None:
        self.site = site
        self.fleet = Fleet(site, seed=seed, epoch_s=1_700_000_000.0)
        self.source = load_source("sim", {"kind": "sim", "interval_s": 1.0}, SourceContext(site=site,
                                                                                          plant=self.fleet))
        self.ring = Keyring({"k1": b"\x05" * 32}, "k1")
        self.ctl = CapController(site, self.ring, CapSettings(), lease_s=30.0)
        self.limits = Limits(site)

    def feed(self) -> tuple[float, list[TelemetryFrame]]:
        frames = self.source.read_batch()
        now = frames[0].ts_s
        for fr in frames:
            self.ctl.on_frame(fr)
            for agg in frame_aggregates(self.site, self.limits, fr):
                self.ctl.on_aggregate(agg, now)
        return now, frames


def test_controller_is_quiet_when_healthy(site: Site) -> None:
    loop = Loop(site)
    for _ in range(3):
        now, _ = loop.feed()
        assert loop.ctl.decide(now) == []


def test_controller_answers_feed_loss_with_signed_leased_commands(site: Site) -> None:
    loop = Loop(site)
    now, _ = loop.feed()
    assert loop.ctl.decide(now) == []
    loop.fleet.lose_feed("A")
    now, frames = loop.feed()
    assert max(f.pdu_power_w[1] for f in frames) > 0.8 * 46_000.0
    cmds = loop.ctl.decide(now)
    assert cmds
    assert {c.target for c in cmds} <= set(site.rack_ids)
    assert len({c.target for c in cmds}) == len(cmds)  # one command per rack
    for c in cmds:
        assert loop.ring.verify(c) is None
        assert loop.ring.verify(Command.decode(c.encode())) is None
        assert c.action == "power_cap" and c.site == "lab"
        assert c.lease_s == 30.0 and c.issued_at_s == now
        # The reason names the level furthest over and by how much: here the RPP, summed from its PDUs
        # before the streams stage's window for it arrives.
        assert re.fullmatch(r"shedding: (pdu-b\d\d|rpp-b1) at \d+% of its limit", c.reason), c.reason
        assert np.all(c.values >= 200) and np.all(c.values <= 700)

    # Applied through the guard, the next measurement is under the threshold on every PDU.
    act = load_actuator("twin", {"kind": "twin", "safe_limit": "max"}, context=loop.fleet)
    guard = Guard(act, loop.ring, "lab")
    assert {guard.handle(c, now + 0.2).status for c in cmds} <= {"applied", "clamped"}
    _, frames = loop.feed()
    assert max(f.pdu_power_w[1] for f in frames) <= S.high_threshold * 46_000.0 * 1.01

    # Eleven seconds later with no newer data: the caps are held and their leases renewed.
    renew = loop.ctl.decide(now + 11)
    assert renew
    assert {c.reason for c in renew} == {"lease renewal"}
    assert {c.target for c in renew} == {c.target for c in cmds}
    for c in renew:
        assert loop.ring.verify(c) is None and c.issued_at_s == now + 11
        first = next(x for x in cmds if x.target == c.target)
        np.testing.assert_array_equal(c.gpus, first.gpus)
        np.testing.assert_allclose(c.values, first.values)
        assert guard.handle(c, now + 11.1).status in ("applied", "clamped")
    # The renewal kept the guard from reverting at the first command's lease end.
    assert guard.expire(now + 31) == []


def test_controller_does_not_shed_twice_on_the_same_measurement(site: Site) -> None:
    loop = Loop(site)
    loop.fleet.lose_feed("A")
    now, _ = loop.feed()
    first = {c.target: c.values.copy() for c in loop.ctl.decide(now)}
    assert first
    # The next tick comes before any newer PDU load: nothing new is known, so nothing changes.
    assert loop.ctl.decide(now + 1) == []
    crit = site.gpu_priority == CRIT
    assert loop.ctl.cap_w[crit].mean() > 250.0  # critical GPUs were not driven to the floor


def test_caps_taken_off_are_released_not_left_to_lapse(site: Site) -> None:
    """A feed lost for a minute, then back: the caps the controller holds are renewed while it wants them, and
    when it takes them off it releases them (acknowledged), so no lease lapses as if the controller were gone,
    and every GPU ends at its maximum with no lease left. Before, a cap taken back to the maximum went out as a
    power_cap at the maximum that nothing renewed: 30 s later every such GPU's lease lapsed (the 24 h day's
    'power lease lapsed' warnings)."""
    loop = Loop(site)
    act = load_actuator("twin", {"kind": "twin", "safe_limit": "max"}, context=loop.fleet)
    guard = Guard(act, loop.ring, "lab", rate_per_s=100.0, burst=100)  # as powerplane evaluate runs it
    lapsed: list[str] = []
    released: list[str] = []
    for k in range(110):
        if k == 5:
            loop.fleet.lose_feed("A")
        if k == 65:
            loop.fleet.lose_feed(None)
        now, _ = loop.feed()
        for c in loop.ctl.decide(now + 0.5):
            ack = guard.handle(c, now + 0.5)
            assert ack.status in ("applied", "clamped"), (c.action, c.reason, ack.reason)
            if c.action == "release":
                released.append(c.target)
        lapsed += [f"t={k}: {a.target} {a.gpus.size} GPU(s)" for a in guard.expire(now + 0.5)]
    assert loop.ctl.stats.renewals > 0  # caps were held past a lease while the feed was lost
    assert lapsed == []
    assert set(released) == set(site.rack_ids)  # every rack was capped and released explicitly
    np.testing.assert_array_equal(loop.fleet.limit_w, site.gpu_max_w)
    assert not any(t.leases for t in guard.targets.values())


def test_a_rack_over_its_nameplate_is_released_not_labelled_a_power_brake(site: Site) -> None:
    """A rack drawing more than its own nameplate's derated limit (62 kW of 52.8 kW) while each of its PDUs
    carries 68 % of its limit: its best-effort caps come off step by step. The rack level is no breaker, the
    capping policy never brakes on it, yet from the third second the brake read it as a level over 100 % and
    every release step said "power brake: ... over 100% for 2 s" on the operator's dashboard and in the audit."""
    fleet = Fleet(site, seed=3, epoch_s=1_700_000_000.0)
    ctl = CapController(site, Keyring({"k1": b"\x05" * 32}, "k1"), CapSettings(), lease_s=30.0)
    limits = Limits(site)
    best = rack_gpus(site, 0, BEST)
    fleet.set_limit(best, np.full(best.size, 400.0))
    r0 = site.gpu_rack == 0
    steps: list[tuple[str, float, str]] = []
    for k in range(7):
        fr = fleet.step()
        fr.power_w[r0] = fr.limit_w[r0]  # rack-01 flat out, at its caps
        fr.rack_power_w = np.bincount(site.server_rack, weights=site.server_input_w(fr.power_w),
                                      minlength=site.n_racks)
        fr.pdu_power_w = fr.rack_power_w[:, None] * np.array([[0.5, 0.5]])
        assert fr.rack_power_w[0] > 52_800.0 and fr.pdu_power_w[0, 0] < S.uncap_threshold * 46_000.0
        ts = fleet.epoch_s + fr.t_s
        for f in rack_frames(site, fr, ts, 1.0, k, "sim"):
            ctl.on_frame(f)
            for agg in frame_aggregates(site, limits, f):
                ctl.on_aggregate(agg, ts)
        steps += [(c.action, float(c.values.max()), c.reason) for c in ctl.decide(ts + 0.5) if c.target == "rack-01"]
    caps = [v for a, v, _ in steps if a == "power_cap"]
    assert len(caps) >= 4 and caps == sorted(caps) and steps[-1][:2] == ("release", 700.0)  # every step a rise
    assert all(why.startswith("releasing caps") for _, _, why in steps), [why for _, _, why in steps]
