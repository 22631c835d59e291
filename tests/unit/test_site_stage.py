"""The site stage on the digital twin, in process: every emergency kind before its deadline, roll-up against
the twin's ground truth, headroom when a feed is lost, and an exact resume from a checkpoint."""

from __future__ import annotations

import copy as copy_module
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from powerplane.schemas import Event, Headroom
from powerplane.site import KIND, Site
from powerplane.site_file import load_site
from sim import Twin, load_scenario
from sim.fleet import rack_frames
from streams.rollup import Limits, frame_outputs
from streams.site_stage import SiteStage

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "lab-every-emergency.toml"
THERMAL_BITS = 0x20 | 0x40 | 0x08


@dataclass
class Run:
    site: Site
    events: list[Event] = field(default_factory=list)
    headroom: dict[str, list[Headroom]] = field(default_factory=dict)
    est: dict[float, np.ndarray] = field(default_factory=dict)  # window end -> level loads
    truth: dict[float, np.ndarray] = field(default_factory=dict)
    inlet_true: dict[float, np.ndarray] = field(default_factory=dict)
    first_throttle_s: float | None = None
    rated: np.ndarray | None = None


def run_twin(seconds: int, stage: SiteStage | None = None) -> tuple[Run, SiteStage]:
    site = load_site(ROOT / "examples" / "lab.toml")
    tw = Twin(site, scenario=load_scenario(SCENARIO), seed=3, epoch_s=0.0)
    lim, st = Limits(site), stage or SiteStage(site)
    run = Run(site)
    for k in range(seconds):
        fr = tw.step(1.0)
        t = tw.epoch_s + fr.t_s
        run.truth[t] = fr.level_power_w.copy()
        run.inlet_true[t] = fr.rack_inlet_true_c.copy()
        if run.first_throttle_s is None and ((fr.throttle_reasons & THERMAL_BITS) != 0).any():
            run.first_throttle_s = t
        for f in rack_frames(site, fr, t, 1.0, k + 1, "twin"):
            out = st.add(frame_outputs(site, lim, f)[1])
            run.events += out.events
            for h in out.headroom:
                run.headroom.setdefault(h.level, []).append(h)
            if out.windows and st.last is not None:
                run.est[st.last.ts_s] = st.last.load_w.copy()
    return run, st


@pytest.fixture(scope="module")
def run() -> Run:
    return run_twin(240)[0]


def opened(run: Run, kind: str, level: str) -> list[Event]:
    return [e for e in run.events if e.kind == kind and e.state == "open" and level in e.levels]


def test_every_emergency_kind_is_detected_before_its_deadline(run: Run) -> None:
    ride = 10.0
    # UPS lineup A lost at 10 s: a critical loss naming it, inside the ride-through.
    ups = opened(run, "feed_loss", "ups-a") + opened(run, "ups_loss", "ups-a")
    assert ups and ups[0].severity == "critical" and ups[0].ts_s <= 10 + ride
    assert ups[0].deadline_s is not None and ups[0].deadline_s <= 10 + ride + 3
    # Feed B lost at 60 s.
    feed = opened(run, "feed_loss", "util-b")
    assert feed and feed[0].ts_s <= 60 + ride
    # Breakers over their rating during the surge on one feed: critical, with a time to trip that the twin's
    # breakers (which never tripped) did not beat.
    crit = [e for e in run.events if e.kind == "breaker_overload" and e.severity == "critical"]
    assert crit and all(e.deadline_s is not None and e.deadline_s > e.ts_s for e in crit)
    b = run.site.levels_of_kind("rpp")[0]
    first_over = min(t for t, v in run.truth.items() if v[b] > run.site.level_rated_w[b])
    rpp = [e for e in crit if run.site.level_ids[b] in e.levels]
    assert rpp and rpp[0].ts_s <= first_over + 8
    # Cooling lost at 130 s: detected before the hottest inlet in the zone truly reaches 32 C.
    reach = min(t for t, v in run.inlet_true.items() if v.max() >= 32.0)
    cool = opened(run, "cooling_failure", "zone-1")
    assert cool and 130 < cool[0].ts_s < reach, (cool[:1], reach)
    # GPUs throttling for heat: reported within a few seconds of the first one.
    slow = opened(run, "thermal_slowdown", "zone-1")
    assert run.first_throttle_s is not None and slow and slow[0].ts_s <= run.first_throttle_s + 5
    assert not [e.summary for e in run.events if e.kind == "thermal_slowdown" and ": 0 GPU" in e.summary]
    # rack-03 silent from 20 s to 35 s: reported, then resolved once it reports again.
    lost = opened(run, "telemetry_loss", "rack-03")
    assert lost and 20 <= lost[0].ts_s <= 20 + 5 + 3
    resolved = [e for e in run.events if e.id == lost[0].id and e.state == "resolved"]
    assert resolved and resolved[0].ts_s > 35


def test_no_emergency_is_opened_twice_while_it_lasts(run: Run) -> None:
    live: dict[tuple[str, str], str] = {}
    for e in run.events:
        key = (e.kind, e.levels[0])
        if e.state == "open":
            assert live.setdefault(key, e.id) == e.id, f"{key} opened again as {e.id} while {live[key]} was open"
        else:
            assert live.pop(key) == e.id
    # Nothing cried wolf before the first fault at 10 s.
    assert not [e for e in run.events if e.ts_s < 10]


def test_rollup_matches_the_twins_ground_truth(run: Run) -> None:
    # PDU meters refresh every 10 s: for 12 s after a feed is lost or restored they lag the truth by up to
    # half the load. Compare outside those transitions.
    moves = (10, 40, 60, 120)
    ts = sorted(t for t in set(run.est) & set(run.truth) if not any(0 <= t - m < 12 for m in moves))
    assert len(ts) > 180
    est = np.array([run.est[t] for t in ts])
    truth = np.array([run.truth[t] for t in ts])
    kinds = run.site.level_kind
    # Metered levels (PDU and up) follow the meters (+-1%, refreshed every 10 s): within 3% on average.
    # Levels summed from GPU readings (rack, row, hall, zone, site) carry NVML's sampling error: within 4%
    # on average, and no window of the site more than 15% off.
    feed = np.isin(kinds, [KIND[k] for k in ("utility", "ups", "rpp", "pdu")])
    live = truth.mean(axis=0) > 1_000
    ratio = est.mean(axis=0)[live] / truth.mean(axis=0)[live]
    assert np.all(np.abs(ratio[feed[live]] - 1) <= 0.03), np.abs(ratio[feed[live]] - 1).max()
    assert np.all(np.abs(ratio[~feed[live]] - 1) <= 0.04), ratio[~feed[live]]
    s = run.site.levels_of_kind("site")[0]
    assert np.all(np.abs(est[:, s] / truth[:, s] - 1) <= 0.15)


def test_headroom_drops_when_a_feed_is_lost(run: Run) -> None:
    site = run.headroom["lab"] if "lab" in run.headroom else run.headroom[run.site.level_ids[0]]
    before = np.mean([h.headroom_w for h in site if 45 <= h.ts_s < 55])
    during = np.mean([h.headroom_w for h in site if 75 <= h.ts_s < 115])
    assert during < before - 0.3 * abs(before)
    assert all(h.mode == "B-lost" for h in site if 75 <= h.ts_s < 115)
    # Thermal headroom of the failing zone shrinks, with a time to the limit while it climbs.
    zone = run.headroom["zone-1"]
    calm = [h for h in zone if 100 <= h.ts_s < 125]
    hot = [h for h in zone if 140 <= h.ts_s < 155]
    assert min(h.thermal_headroom_c or 99 for h in hot) < min(h.thermal_headroom_c or 99 for h in calm) - 3
    assert any(h.time_to_limit_s is not None and h.time_to_limit_s < 60 for h in hot)


def test_a_resumed_stage_continues_exactly() -> None:
    _, first = run_twin(100)
    site = first.site
    copy = SiteStage(site)
    assert copy.load_state(first.state())
    # Both continue on the same next 40 s of telemetry (the twin is deterministic for its seed).
    a, _ = run_twin(140, first)
    b, _ = run_twin(140, copy)
    ea = [(e.id, e.state, e.ts_s) for e in a.events if e.ts_s > 100]
    eb = [(e.id, e.state, e.ts_s) for e in b.events if e.ts_s > 100]
    assert ea == eb and ea
    ha = [(h.level, h.ts_s, h.headroom_w) for hs in a.headroom.values() for h in hs if h.ts_s > 101]
    hb = [(h.level, h.ts_s, h.headroom_w) for hs in b.headroom.values() for h in hs if h.ts_s > 101]
    assert ha == hb and ha
    # A checkpoint of another site is refused, not half-loaded.
    elsewhere = copy_module.copy(site)
    elsewhere.name = "elsewhere"
    assert not SiteStage(elsewhere).load_state(first.state())


def test_the_forecast_band_recovers_within_seconds_of_a_feed_loss(run: Run) -> None:
    # Feed B lost at 60 s: util-a takes the whole load. History from before the change would put its p99
    # ~290 kW above its load for minutes (issue 15); the stage starts its forecasts afresh instead.
    after = [h for h in run.headroom["util-a"] if 66 <= h.ts_s <= 110]
    assert after and all(h.mode == "B-lost" for h in after)
    wide = [(h.ts_s, h.power_w, h.forecast_p99_w) for h in after if h.forecast_p99_w - h.power_w > 0.15 * h.power_w]
    assert not wide, wide


def test_the_published_headroom_is_the_records_encoded() -> None:
    """The worker encodes headroom straight from a window's columns: what it publishes must be exactly what
    encoding each Headroom record gives, thermal fields, missing forecasts and all."""
    site = load_site(ROOT / "examples" / "lab.toml")
    tw = Twin(site, scenario=load_scenario(SCENARIO), seed=3, epoch_s=0.0)
    lim, st = Limits(site), SiteStage(site)
    windows = []
    for k in range(40):
        fr = tw.step(1.0)
        for f in rack_frames(site, fr, tw.epoch_s + fr.t_s, 1.0, k + 1, "twin"):
            windows += st.add(frame_outputs(site, lim, f)[1], wall_s=tw.epoch_s + fr.t_s + 0.5).headroom_windows
    assert len(windows) >= 30
    records = [h for w in windows for h in w.records()]
    assert [it for w in windows for it in w.items()] == [(h.key(), h.encode(), h.ts_s) for h in records]
    # The check covers every optional field both present and absent.
    assert {h.kind for h in records if h.inlet_c is not None} == {"rack", "zone"}
    assert any(h.time_to_limit_s is not None for h in records) and any(h.plan_p99_w is None for h in records)
    assert all(h.lag_s is not None for h in records)
    assert [Headroom.decode(it[1]) for it in windows[-1].items()] == windows[-1].records()
