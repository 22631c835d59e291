"""Grid limits watched in the streams (streams/grid_watch.py): the site's and its feeds' load against the utility's
ramp, range and oscillation limits, one event per violation, never raised on a roll-up with racks missing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from powerplane.grid import GridLimits, OscillationBand
from powerplane.schemas import Event, RackSummary
from powerplane.site_file import site_from_dict
from streams.grid_watch import GridWatch
from streams.site_stage import SiteStage

MW = 1e6
T0 = 1_750_000_000.0


def watch(limits: GridLimits) -> GridWatch:
    return GridWatch("g", {"g": limits}, 1.0)


def feed(w: GridWatch, power_w: np.ndarray, complete: np.ndarray | None = None) -> list[Event]:
    out: list[Event] = []
    for i, p in enumerate(power_w.tolist()):
        ok = True if complete is None else bool(complete[i])
        out += w.observe(T0 + i, {"g": (p, ok)})
    return out


def test_a_ramp_over_the_limit_is_one_event_that_resolves_when_the_ramp_stops() -> None:
    # 80 MW, then up at 3 MW/s for 10 s against a 2 MW/s limit, then flat.
    p = np.concatenate([np.full(30, 80.0), 80.0 + 3.0 * np.arange(1, 11), np.full(40, 110.0)]) * MW
    w = watch(GridLimits(ramp_up_mw_per_s=2.0, ramp_down_mw_per_s=2.0, ramp_window_s=1.0))
    events = feed(w, p)
    assert [(e.kind, e.state) for e in events] == [("grid_ramp", "open"), ("grid_ramp", "resolved")]
    opened, resolved = events
    assert opened.id == resolved.id and opened.levels == ["g"] and opened.severity == "warning"
    assert opened.ts_s == T0 + 30  # the first second of the ramp
    assert "ramp up 3 MW/s over 1 s" in opened.summary and "limit of 2 MW/s" in opened.summary
    assert opened.details is not None and opened.details["limit_mw_per_s"] == 2.0
    assert resolved.ts_s == T0 + 39 + 10  # the last ramping second, then clear_s under the limit


def test_an_oscillation_above_its_band_limit_is_raised_and_one_below_it_is_not() -> None:
    t = np.arange(200.0)
    limits = GridLimits(bands=[OscillationBand(lo_hz=0.1, hi_hz=0.4, limit_mw=2.0)], band_window_s=60.0)
    loud = feed(watch(limits), (80.0 + 3.0 * np.sin(2 * math.pi * 0.25 * t)) * MW)
    assert [(e.kind, e.state) for e in loud] == [("grid_oscillation", "open")]
    assert loud[0].ts_s == T0 + 59  # as soon as a whole band window is there
    assert loud[0].details is not None and loud[0].details["amplitude_mw"] == pytest.approx(3.0, rel=0.1)
    assert "oscillation 0.1-0.4 Hz at 3" in loud[0].summary
    quiet = feed(watch(limits), (80.0 + 1.0 * np.sin(2 * math.pi * 0.25 * t)) * MW)
    assert quiet == []


def test_a_band_above_what_one_second_samples_resolve_is_reported_as_such() -> None:
    t = np.arange(120.0)
    bands = [OscillationBand(lo_hz=0.2, hi_hz=2.0, limit_mw=1.0),  # straddles 0.5 Hz: measured below it only
             OscillationBand(lo_hz=1.0, hi_hz=5.0, limit_mw=0.1)]  # wholly above: never evaluated here
    w = watch(GridLimits(bands=bands, band_window_s=60.0))
    assert [b.hi_hz for b in w.series["g"].bands] == [2.0]
    events = feed(w, (80.0 + 3.0 * np.sin(2 * math.pi * 0.25 * t)) * MW)
    assert len(events) == 1
    assert "measured 0.2-0.5 Hz only" in events[0].summary and "power smoothing" in events[0].summary
    assert events[0].details is not None and events[0].details["band_partial"] == 1.0


def test_incomplete_samples_neither_raise_nor_resolve_and_the_buffer_stays_bounded() -> None:
    p = np.full(100, 80.0 * MW)
    p[50:] = 60.0 * MW  # a 20 MW step down ...
    complete = np.ones(100, dtype=bool)
    complete[50:55] = False  # ... while racks are missing from the roll-up
    w = watch(GridLimits(ramp_down_mw_per_s=1.0, range_mw=5.0, range_window_s=20.0))
    assert feed(w, p, complete) == []
    assert w.series["g"].ring.cap == 21  # the longest window, both ends
    c = w.counters()["g"]
    assert c["incomplete_samples"] == 5 and c["samples"] == 100
    assert w.observe(T0 + 50, {"g": (80.0 * MW, True)}) == []  # not newer than the last: dropped, counted
    assert w.counters()["g"]["late_dropped"] == 1


def test_an_open_event_survives_a_checkpoint_and_resolves_once() -> None:
    limits = GridLimits(ramp_up_mw_per_s=2.0)
    p = np.concatenate([np.full(10, 80.0), [90.0], np.full(30, 90.0)]) * MW
    w = watch(limits)
    first = feed(w, p[:15])
    assert [e.state for e in first] == ["open"]
    w2 = watch(limits)
    w2.load_state(w.state())
    rest = [e for i in range(15, p.size) for e in w2.observe(T0 + i, {"g": (float(p[i]), True)})]
    assert [(e.id, e.state) for e in rest] == [(first[0].id, "resolved")]


# ---- in the site stage ---------------------------------------------------------------------------------------


def _site(grid: dict[str, object] | None, feed_grid: dict[str, object] | None = None) -> dict[str, object]:
    racks = [{"id": f"rk{i}", "pdu_a": "pdu-a", "pdu_b": "pdu-b", "server_type": "s", "servers": 2,
              "rating_kw": 40.0} for i in range(2)]
    d: dict[str, object] = {
        "name": "g",
        "server_types": {"s": {"gpus": 8, "gpu_max_w": 700.0, "gpu_min_w": 200.0, "gpu_idle_w": 70.0,
                               "other_w": 2000.0, "psu_efficiency": 0.94, "rating_kw": 20.0}},
        "feeds": [{"id": "util-a", "feed": "A", "rating_kw": 1000.0, **({"grid": feed_grid} if feed_grid else {})},
                  {"id": "util-b", "feed": "B", "rating_kw": 1000.0}],
        "ups": [{"id": "ups-a", "parent": "util-a", "rating_kw": 500.0},
                {"id": "ups-b", "parent": "util-b", "rating_kw": 500.0}],
        "rpps": [{"id": "rpp-a", "parent": "ups-a", "rating_kw": 200.0},
                 {"id": "rpp-b", "parent": "ups-b", "rating_kw": 200.0}],
        "pdus": [{"id": "pdu-a", "parent": "rpp-a", "rating_kw": 100.0},
                 {"id": "pdu-b", "parent": "rpp-b", "rating_kw": 100.0}],
        "halls": [{"id": "h", "zones": [{"id": "z", "capacity_kw": 200.0}],
                   "rows": [{"id": "r", "zone": "z", "racks": racks}]}],
    }
    if grid is not None:
        d["grid"] = grid
    return d


def _summary(rack: int, ts: float, power_w: float, reporting: int = 16) -> RackSummary:
    return RackSummary(site="g", rack=f"rk{rack}", ts_s=ts, interval_s=1.0, seq=int(ts - T0) + 1, power_w=power_w,
                       pdu_power_w=[math.nan, math.nan], mode="normal", gpus_expected=16, gpus_reporting=reporting,
                       gpus_throttled=0)


def _run(stage: SiteStage, script: dict[int, list[RackSummary | None]]) -> list[Event]:
    """Per second, the racks' summaries (None: that rack sent nothing); then the clock closes every window."""
    events: list[Event] = []
    for sec in sorted(script):
        for s in script[sec]:
            if s is not None:
                events += stage.add(s).events
    events += stage.advance(T0 + max(script) + 30).events
    return [e for e in events if e.kind.startswith("grid_")]


def _steady(seconds: range, power_w: tuple[float, float] = (20e3, 20e3)) -> dict[int, list[RackSummary | None]]:
    return {k: [_summary(0, T0 + k, power_w[0]), _summary(1, T0 + k, power_w[1])] for k in seconds}


GRID = {"ramp_up_mw_per_s": 0.002, "ramp_down_mw_per_s": 0.002, "ramp_window_s": 1.0}  # 2 kW/s


def test_the_site_stage_raises_a_real_ramp_of_the_site() -> None:
    stage = SiteStage(site_from_dict(_site(GRID)))
    script = _steady(range(20)) | _steady(range(20, 40), (20e3, 8e3))  # rack 1 drops 12 kW in one second
    events = _run(stage, script)
    assert [(e.kind, e.state, e.levels) for e in events] == [("grid_ramp", "open", ["g"]),
                                                            ("grid_ramp", "resolved", ["g"])]
    assert "g: ramp down 0.012 MW/s over 1 s" in events[0].summary
    assert events[0].details is not None and events[0].details["ramp_mw_per_s"] == pytest.approx(-0.012)


def _dropout_script() -> dict[int, list[RackSummary | None]]:
    script = _steady(range(20))
    # rk1 silent for 8 s, back 12 kW lower (the drop happened unseen); then half its GPUs silent (counted at their
    # limit: its total jumps up) for 5 s.
    script |= {k: [_summary(0, T0 + k, 20e3), None] for k in range(20, 28)}
    script |= _steady(range(28, 40), (20e3, 8e3))
    script |= {k: [_summary(0, T0 + k, 20e3), _summary(1, T0 + k, 14e3, reporting=8)] for k in range(40, 45)}
    script |= _steady(range(45, 70), (20e3, 8e3))
    return script


def test_a_rack_dropping_out_of_the_roll_up_raises_no_ramp(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = SiteStage(site_from_dict(_site(GRID)))
    assert _run(stage, _dropout_script()) == []
    assert stage.grid is not None and stage.grid.counters()["g"]["incomplete_samples"] >= 8 + 5
    # The same roll-up taken at face value: the return 12 kW lower and the silent GPUs counted at their limit
    # read as ramps over the limit.
    trusting = SiteStage(site_from_dict(_site(GRID)))
    assert trusting.grid is not None
    monkeypatch.setattr(trusting.grid, "complete", lambda snap, name: True)
    assert {e.kind for e in _run(trusting, _dropout_script())} == {"grid_ramp"}


def test_a_feed_with_its_own_limits_is_watched_on_its_own_share() -> None:
    # Both racks hang from util-a (one PDU per feed): in the normal feed state it carries half their load.
    stage = SiteStage(site_from_dict(_site(None, {"ramp_down_mw_per_s": 0.005})))
    assert stage.grid is not None and list(stage.grid.series) == ["util-a"]
    assert stage.grid.racks["util-a"].all()
    events = _run(stage, _steady(range(20)) | _steady(range(20, 40), (20e3, 8e3)))  # -12 kW: -6 kW on util-a
    assert [(e.levels, e.state) for e in events] == [(["util-a"], "open"), (["util-a"], "resolved")]
    assert events[0].details is not None and events[0].details["ramp_mw_per_s"] == pytest.approx(-0.006, rel=0.05)


def test_a_site_without_grid_limits_watches_nothing() -> None:
    stage = SiteStage(site_from_dict(_site(None)))
    assert stage.grid is None
    assert _run(stage, _steady(range(20)) | _steady(range(20, 40), (20e3, 0.0))) == []
