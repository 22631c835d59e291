"""The twin's UPS units and their SNMP signal (sim/ups.py): what a trap receiver and a poller would publish
to pp.facility when a feed is lost, restored, or a card sends a false trap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerplane.facility_checks import FacilityChecker
from powerplane.schemas import FacilityReading
from powerplane.site import Site
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim import Twin
from sim.fleet import Fleet
from sim.scenario import load_scenario, scenario_from_dict
from sim.source import FacilitySource

ROOT = Path(__file__).resolve().parents[2]
EPOCH_S = 1.7e9
LOSS_AT_S, RESTORE_AT_S = 20, 50


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(ROOT / "examples" / "lab.toml")


def _run(site: Site, events: list[dict[str, Any]], seconds: int, **ups: Any) -> tuple[Twin, list[FacilityReading]]:
    """Step the twin one second at a time, taking the records due after each step (as evaluate would), and
    check every one with the receiver's facility checker at its arrival time."""
    scen = scenario_from_dict({"events": events, "ups": {"trap_latency_ms": [50, 300], **ups}}, site=site)
    twin = Twin(site, scenario=scen, seed=3, epoch_s=EPOCH_S)
    checker = FacilityChecker(site)
    out: list[FacilityReading] = []
    for _ in range(seconds):
        twin.step(1.0)
        for r in twin.facility_readings(twin.t_s):
            verdict = checker.check(r, now_s=r.ts_s)
            assert verdict.reading is not None, verdict.reason
            out.append(r)
    return twin, out


def _traps(rs: list[FacilityReading], name: str, unit: str | None = None) -> list[FacilityReading]:
    return [r for r in rs if r.via == "trap" and r.trap == name and (unit is None or r.unit == unit)]


def _polls(rs: list[FacilityReading], unit: str) -> list[FacilityReading]:
    return [r for r in rs if r.via == "poll" and r.unit == unit]


def test_feed_loss_sends_on_battery_traps_within_the_latency_and_polls_show_the_battery_draining(lab: Site) -> None:
    _, rs = _run(lab, [{"at_s": LOSS_AT_S, "kind": "lose_feed", "feed": "A",
                        "duration_s": RESTORE_AT_S - LOSS_AT_S}], 70)
    feed_a = [lab.level_ids[i] for i in lab.levels_of_kind("ups") if lab.level_feed[i] == 0]
    assert feed_a == ["ups-a"]
    for lineup in feed_a:
        first = _traps(rs, "xupstdOnBattery", lineup)[0]
        assert first.on_battery is True and first.feed == "A" and first.alarm_kinds == ["on_battery"]
        assert LOSS_AT_S + 0.05 <= first.ts_s - EPOCH_S <= LOSS_AT_S + 0.3
        assert first.battery_remaining_s is not None and first.battery_remaining_s > 60
        restored = _traps(rs, "xupstdUtilityPowerRestored", lineup)
        assert len(restored) == 1 and restored[0].on_battery is False
        assert RESTORE_AT_S + 0.05 <= restored[0].ts_s - EPOCH_S <= RESTORE_AT_S + 0.3
        on_bat = [p for p in _polls(rs, lineup) if LOSS_AT_S < p.ts_s - EPOCH_S <= RESTORE_AT_S]
        assert len(on_bat) == 3  # every 10 s
        assert all(p.on_battery and p.output_source == "battery" and p.input_voltage_v == [0.0] * 3
                   and p.alarm_kinds == ["input_bad", "on_battery"] for p in on_bat)
        charge = [p.battery_charge_pct for p in on_bat]
        assert charge == sorted(charge, reverse=True) and charge[-1] is not None and charge[-1] < 100.0
        before = [p for p in _polls(rs, lineup) if p.ts_s - EPOCH_S <= LOSS_AT_S]
        assert before and all(p.on_battery is False and p.output_source == "normal" for p in before)
        assert all(400 < v < 560 for p in before for v in p.input_voltage_v or [])
    assert not _traps(rs, "xupstdOnBattery", "ups-b")
    assert all(p.on_battery is False for p in _polls(rs, "ups-b"))


def test_the_output_power_a_poll_reads_is_the_lineups_true_load(lab: Site) -> None:
    twin = Twin(lab, seed=3, epoch_s=EPOCH_S)
    rs: list[FacilityReading] = []
    for _ in range(12):
        fr = twin.step(1.0)
        got = twin.facility_readings(twin.t_s)
        for r in got:
            true_w = float(fr.level_power_w[lab.level_index[r.unit]])
            assert sum(r.output_power_w or []) == pytest.approx(true_w, rel=0.05)
        rs += got
    assert {r.unit for r in rs} == {"ups-a", "ups-b"}


def test_a_false_trap_is_one_on_battery_trap_for_a_healthy_lineup(lab: Site) -> None:
    _, rs = _run(lab, [{"at_s": 10, "kind": "false_trap", "lineup": "ups-b"}], 30)
    traps = [r for r in rs if r.via == "trap"]
    assert [(t.unit, t.trap, t.on_battery) for t in traps] == [("ups-b", "xupstdOnBattery", True)]
    assert 10.05 <= traps[0].ts_s - EPOCH_S <= 10.3
    assert all(p.on_battery is False and p.input_voltage_v and p.input_voltage_v[0] > 400
               for p in _polls(rs, "ups-b"))  # the meters' side of the story: the feed is fine


def test_with_every_trap_lost_the_polls_still_show_on_battery(lab: Site) -> None:
    twin, rs = _run(lab, [{"at_s": LOSS_AT_S, "kind": "lose_feed", "feed": "A"}], 45, trap_loss=1.0)
    assert not [r for r in rs if r.via == "trap"]
    assert twin.ups.traps_lost >= 1
    after = [p for p in _polls(rs, "ups-a") if p.ts_s - EPOCH_S > LOSS_AT_S]
    assert after and all(p.on_battery for p in after)


def test_a_short_battery_warns_low_then_runs_out(lab: Site) -> None:
    _, rs = _run(lab, [{"at_s": 5, "kind": "lose_feed", "feed": "A"}], 40, runtime_at_rated_s=10.0,
                 low_battery_s=5.0, poll_interval_s=2.0)  # ~40 % load: ~25 s of battery
    kinds = [t.trap for t in rs if t.via == "trap" and t.unit == "ups-a"]
    assert kinds[:2] == ["xupstdOnBattery", "xupstdLowBattery"]  # both at once: their latencies may swap them
    assert sorted(kinds[2:]) == ["xupstdBatteryDischarged", "xupstdOutputOff"]
    last = _polls(rs, "ups-a")[-1]
    assert last.battery_remaining_s == 0.0 and last.output_source == "none" and not last.on_battery
    assert last.alarm_kinds == ["battery_depleted", "input_bad", "low_battery", "output_off"]


def test_the_ups_signal_does_not_change_the_twins_frames(lab: Site) -> None:
    ev = [{"at_s": 3, "kind": "lose_feed", "feed": "A"}]
    a = Twin(lab, scenario=scenario_from_dict({"events": ev}, site=lab), seed=5).run(8)
    b = Twin(lab, scenario=scenario_from_dict({"events": ev, "ups": {"trap_loss": 0.5}}, site=lab), seed=5).run(8)
    assert all(np.array_equal(x.power_w, y.power_w, equal_nan=True)
               and np.array_equal(x.pdu_power_w, y.pdu_power_w, equal_nan=True)
               for x, y in zip(a, b, strict=True))


def test_the_simple_fleet_dates_its_traps_from_the_moment_of_the_loss(lab: Site) -> None:
    fleet = Fleet(lab, seed=1, epoch_s=EPOCH_S)
    src = FacilitySource("sim-ups", {}, _ctx(lab, fleet))
    for _ in range(12):
        fleet.step(1.0)
    fleet.lose_feed("A", at_s=12.4)
    for _ in range(12):
        fleet.step(1.0)
    rs = src.read_due(EPOCH_S + fleet.t_s)
    trap = _traps(rs, "xupstdOnBattery", "ups-a")[0]
    assert 12.45 <= trap.ts_s - EPOCH_S <= 12.7
    assert any(p.on_battery for p in _polls(rs, "ups-a"))
    assert src.read_due(EPOCH_S + fleet.t_s) == []  # each record once


def _ctx(site: Site, plant: Any) -> Any:
    from collectors.base import SourceContext

    return SourceContext(site=site, plant=plant)


def test_scenario_mistakes_in_ups_and_false_trap_are_reported_at_once(lab: Site) -> None:
    bad = {"events": [{"at_s": 5, "kind": "false_trap", "lineup": "rpp-a1"},
                      {"at_s": 6, "kind": "false_trap"},
                      {"at_s": 7, "kind": "false_trap", "lineup": "ups-a", "duration_s": 3}],
           "ups": {"trap_latency_ms": [300, 50], "trap_loss": 1.5, "poll_interval_s": 0, "jitter": 1}}
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(bad, "bad.toml", site=lab)
    text = "\n".join(e.value.errors)
    for where in ("events[0].lineup", "events[1].lineup", "events[2].duration_s", "ups.trap_latency_ms",
                  "ups.trap_loss", "ups.poll_interval_s", "ups.jitter"):
        assert where in text, f"{where} missing from:\n{text}"
    assert "'rpp-a1' is not a UPS lineup of site 'lab' (lineups: ups-a, ups-b)" in text


def test_the_example_false_trap_scenario_loads(lab: Site) -> None:
    scen = load_scenario(ROOT / "examples" / "scenarios" / "lab-ups-false-trap.toml", site=lab)
    assert any(e.kind == "false_trap" for e in scen.events) and scen.ups.trap_latency_ms == (50.0, 300.0)
