"""Event-time windows of the site stage: completeness, lateness, stale and silent racks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from powerplane.schemas import RackSummary
from powerplane.site_file import load_site
from streams.tree import TreeSettings, TreeWindows

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")


def summary(rack: int, ts: float, power_w: float = 40_000.0, **kw: object) -> RackSummary:
    base = dict(site="lab", rack=SITE.rack_ids[rack], ts_s=ts, interval_s=1.0, seq=int(ts), power_w=power_w,
                pdu_power_w=[power_w / 2, power_w / 2], mode="normal", gpus_expected=64, gpus_reporting=64,
                gpus_throttled=0, inlet_c=24.0, gpu_temp_max_c=70.0)
    base.update(kw)
    return RackSummary(**base)  # type: ignore[arg-type]


def feed(tw: TreeWindows, ts: float, racks: range | list[int], **kw: object) -> list:  # type: ignore[type-arg]
    out = []
    for r in racks:
        out += tw.add(summary(r, ts, **kw))
    return out


def test_a_window_closes_as_soon_as_every_rack_has_reported_past_it() -> None:
    tw = TreeWindows(SITE)  # lateness 5 s: completeness, not the bound, must close it
    n = SITE.n_racks
    assert feed(tw, 1.0, range(n - 1)) == []  # one rack still to come: window (0, 1] stays open
    snaps = feed(tw, 1.0, [n - 1])
    assert [s.ts_s for s in snaps] == [1.0]
    site_lv = SITE.levels_of_kind("site")[0]
    assert math.isclose(snaps[0].load_w[site_lv], 40_000.0 * n)


def test_late_frames_are_counted_and_still_refresh_the_rack() -> None:
    tw = TreeWindows(SITE, TreeSettings(lateness_s=2.0))
    for t in range(1, 6):
        feed(tw, float(t), range(1, SITE.n_racks))  # rack 0 silent
    assert tw.closed_through is not None and tw.closed_through >= 1
    feed(tw, 1.0, [0], power_w=50_000.0)  # arrives long after its window closed
    assert tw.late_frames == 1
    assert tw.last_power_w[0] == 50_000.0  # not lost: it is the rack's latest reading


def test_a_silent_rack_is_carried_at_its_last_value_then_at_a_bounded_estimate_never_zero_never_rated() -> None:
    st = TreeSettings(lateness_s=1.0, stale_after_s=3.0, rated_after_s=6.0, estimate_ramp_s=5.0)
    tw = TreeWindows(SITE, st)
    snaps = []
    for t in range(1, 4):
        snaps += feed(tw, float(t), range(SITE.n_racks), power_w=30_000.0)
    for t in range(4, 25):
        snaps += feed(tw, float(t), range(1, SITE.n_racks), power_w=30_000.0)
    rack0 = SITE.rack_level[0]
    by_t = {s.ts_s: s for s in snaps}
    assert by_t[5.0].load_w[rack0] == 30_000.0 and by_t[5.0].rack_age_s[0] == 2.0  # last value, with its age
    assert by_t[8.0].racks_stale[rack0] == 1  # older than stale_after_s: reported stale
    assert 30_000.0 < by_t[8.0].load_w[rack0] < by_t[10.0].load_w[rack0]  # a margin that grows with age
    rated = SITE.level_rated_w[rack0]
    # Past the ramp: last value plus 10 % (its peak never exceeded its last value), not its rating.
    assert math.isclose(by_t[20.0].load_w[rack0], 33_000.0) and by_t[20.0].load_w[rack0] < rated
    assert by_t[12.0].racks_rated[rack0] == 1  # past rated_after_s: flagged as an estimate
    assert all(s.load_w[rack0] > 0 for s in snaps)


def test_a_stale_racks_margin_comes_from_its_recent_peak() -> None:
    tw = TreeWindows(SITE, TreeSettings(lateness_s=1.0, estimate_ramp_s=1.0))
    snaps = []
    for t in range(1, 6):  # rack 0 peaked at 50 kW two seconds before it went silent at 30 kW
        snaps += feed(tw, float(t), range(1, SITE.n_racks), power_w=30_000.0)
        snaps += feed(tw, float(t), [0], power_w=50_000.0 if t == 3 else 30_000.0)
    for t in range(6, 20):
        snaps += feed(tw, float(t), range(1, SITE.n_racks), power_w=30_000.0)
    est = snaps[-1].load_w[SITE.rack_level[0]]
    assert 45_000.0 < est <= 50_000.0  # about its recent peak, never its 66 kW rating


def test_a_rack_whose_gpus_are_silent_is_taken_at_its_live_pdu_meters() -> None:
    tw = TreeWindows(SITE, TreeSettings(lateness_s=1.0))
    snaps = []
    for t in range(1, 6):  # the rack-level roll-up counts silent GPUs at their limit (66 kW); meters say 31 kW
        snaps += feed(tw, float(t), range(1, SITE.n_racks), power_w=30_000.0)
        snaps += feed(tw, float(t), [0], power_w=66_000.0, gpus_reporting=0, pdu_power_w=[15_000.0, 16_000.0])
    assert snaps[-1].load_w[SITE.rack_level[0]] == 31_000.0 and snaps[-1].rack_age_s[0] == 0.0


def test_blank_frames_age_the_rack_instead_of_reading_zero_or_full_power() -> None:
    tw = TreeWindows(SITE, TreeSettings(lateness_s=1.0))
    snaps = []
    for t in range(1, 4):
        snaps += feed(tw, float(t), range(SITE.n_racks), power_w=30_000.0)
    nan = float("nan")
    for t in range(4, 8):
        snaps += feed(tw, float(t), range(1, SITE.n_racks), power_w=30_000.0)
        snaps += feed(tw, float(t), [0], power_w=nan, gpus_reporting=0, pdu_power_w=[nan, nan], inlet_c=None)
    last = snaps[-1]
    assert 30_000.0 <= last.load_w[SITE.rack_level[0]] < 31_000.0 and last.rack_age_s[0] >= 3.0


def test_losing_a_feed_moves_the_load_and_the_limits() -> None:
    tw = TreeWindows(SITE, TreeSettings(lateness_s=1.0))
    snaps = []
    for t in range(1, 6):
        for r in range(SITE.n_racks):
            snaps += tw.add(summary(r, float(t), power_w=40_000.0, pdu_power_w=[0.0, 40_000.0]))
    s = snaps[-1]
    util_a, util_b = SITE.level("util-a"), SITE.level("util-b")
    assert s.dark[util_a] and s.dark_top[util_a] and not s.dark[util_b]
    assert s.site_mode == "A-lost"
    assert math.isclose(s.load_w[util_b], 40_000.0 * SITE.n_racks) and s.load_w[util_a] == 0.0
    assert s.limit_w[util_a] == 0.0 and s.limit_w[util_b] > 0
    assert np.all(s.limit_w[SITE.levels_of_kind("pdu")][::2] == 0.0)  # pdu-aNN carry nothing now


def test_a_meter_drifting_away_from_its_servers_is_reported_once() -> None:
    from streams.site_stage import SiteStage

    st = SiteStage(SITE)
    events = []
    for t in range(1, 421):
        for r in range(SITE.n_racks):
            a = 20_000.0
            if r == 0 and t > 360:
                a = 27_000.0  # the meter of pdu-a01 starts reading 7 kW more than its servers draw
            out = st.add(summary(r, float(t), pdu_power_w=[a, 20_000.0]))
            events += out.events
    gaps = [e for e in events if e.kind == "meter_gap"]
    assert [e.levels[0] for e in gaps] == ["pdu-a01"] and gaps[0].state == "open"
    assert 360 + 30 <= gaps[0].ts_s <= 360 + 30 + 15  # sustained 30 s after the smoothed gap crossed
    assert gaps[0].details is not None and gaps[0].details["gap_w"] > 5_000


def test_when_all_telemetry_stops_the_clock_still_closes_windows_and_reports_the_loss() -> None:
    from streams.site_stage import SiteStage

    st = SiteStage(SITE)
    for t in range(1, 11):
        for r in range(SITE.n_racks):
            st.add(summary(r, float(t)))
    assert st.tree.closed_through == 9
    out = st.advance(10.0 + 5.0 + 8.0)  # 8 s of silence past the lateness bound, driven by the idle timer
    assert out.windows == 8
    lost = {e.levels[0] for e in out.events if e.kind == "telemetry_loss" and e.state == "open"}
    assert lost == set(SITE.rack_ids)
    assert st.last is not None and st.last.racks_stale[SITE.levels_of_kind("site")[0]] == SITE.n_racks


def test_a_window_closes_on_its_own_readings_however_the_frames_are_batched() -> None:
    """The Kafka path hands the stage batches that can hold the next second too: a window must still use
    the meters and inlets of its own second, so both paths see the same trees."""
    from powerplane.schemas import RackSummaryBatch

    n = SITE.n_racks
    frames = [summary(r, float(t), power_w=30_000.0 + 1_000.0 * t, inlet_c=20.0 + t,
                      pdu_power_w=[100.0 * t, 15_000.0 + 100.0 * t]) for t in range(1, 7) for r in range(n)]
    one = TreeWindows(SITE)
    by_second = [s for t in range(6) for s in one.add_batch(RackSummaryBatch.of(frames[t * n:(t + 1) * n]))]
    two = TreeWindows(SITE)
    skewed = frames[:n] + frames[n:2 * n - 1] + frames[2 * n:3 * n] + [frames[2 * n - 1]] + frames[3 * n:]
    mixed = [s for i in range(0, len(skewed), 5) for s in two.add_batch(RackSummaryBatch.of(skewed[i:i + 5]))]
    assert [s.ts_s for s in by_second] == [s.ts_s for s in mixed] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for a, b in zip(by_second, mixed, strict=True):
        np.testing.assert_allclose(a.load_w, b.load_w)
        np.testing.assert_allclose(a.inlet_c, b.inlet_c)
