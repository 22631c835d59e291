"""What `powerplane status` makes of the records it reads (no broker): the newest window per level wins
whatever order partitions deliver them in, another site's records are left out, events group by kind."""

from __future__ import annotations

from pathlib import Path

from ops.cli.status import summary_text
from ops.status import Latest, drill_down, fold, summary
from powerplane.schemas import Event, Headroom, LevelAggregate
from powerplane.site_file import load_site

LAB = load_site(Path(__file__).resolve().parents[2] / "examples" / "lab.toml")
T0 = 1_700_000_000.0


def agg(level: str, kind: str, ts_s: float, power_w: float, mode: str = "normal",
        site: str = LAB.name) -> LevelAggregate:
    return LevelAggregate(site=site, level=level, kind=kind, ts_s=ts_s, window_s=1.0, power_w=power_w,
                          limit_w=100_000.0, rated_w=125_000.0, mode=mode, gpus_expected=0, gpus_reporting=0)


def ev(eid: str, kind: str, severity: str, state: str = "open", ts_s: float = T0) -> Event:
    return Event(id=eid, site=LAB.name, kind=kind, severity=severity, state=state, levels=["pdu-a01"], ts_s=ts_s,
                 deadline_s=ts_s + 20 if severity == "critical" else None, summary=f"{kind} here")


def test_newest_window_wins_and_other_sites_are_left_out() -> None:
    latest = Latest(site=LAB.name)
    fold(latest, agg("pdu-a01", "pdu", T0 + 1, 90_000.0, mode="A-lost"))
    fold(latest, agg("pdu-a01", "pdu", T0, 20_000.0))  # an older window from a slower partition
    fold(latest, agg("pdu-a01", "pdu", T0 + 5, 1.0, site="elsewhere"))
    fold(latest, Headroom(site=LAB.name, level="pdu-a01", kind="pdu", ts_s=T0 + 1, mode="A-lost", horizon_s=10.0,
                          power_w=90_000.0, limit_w=100_000.0, forecast_p50_w=91_000.0, forecast_p99_w=95_000.0,
                          headroom_w=5_000.0))
    fold(latest, agg("pdu-b01", "pdu", T0 + 1, 50_000.0))
    s = summary(latest, LAB, worst_n=1, now_s=T0 + 3)
    assert s["worst_levels"][0] | {"ts_s": None} == {
        "level": "pdu-a01", "kind": "pdu", "power_w": 90_000.0, "limit_w": 100_000.0, "load_frac": 0.9,
        "headroom_w": 5_000.0, "mode": "A-lost", "ts_s": None, "reporting": True}
    assert s["levels_by_mode"] == {"A-lost": 1, "normal": 1}
    assert s["levels_reporting"] == 2 and s["levels_missing"] == len(LAB.level_ids) - 2
    assert s["newest_window_age_s"] == 2.0


def test_open_events_grouped_by_kind_most_severe_first() -> None:
    latest = Latest(site=LAB.name)
    for i in range(30):
        fold(latest, ev(f"tl-{i}", "telemetry_loss", "warning"))
    fold(latest, ev("tl-0", "telemetry_loss", "warning", state="resolved", ts_s=T0 + 1))
    fold(latest, ev("bo-1", "breaker_overload", "critical"))
    latest.clock_s = T0 + 5
    s = summary(latest, LAB)
    assert [(g["kind"], g["count"], g["severity"]) for g in s["open_events_by_kind"]] == [
        ("breaker_overload", 1, "critical"), ("telemetry_loss", 29, "warning")]
    assert s["open_events_by_kind"][0]["next_deadline_in_s"] == 15.0
    text = summary_text(s)
    assert "     1 breaker_overload (critical, next deadline in 15 s)" in text
    assert "    29 telemetry_loss (warning)" in text
    d = drill_down(latest, LAB, "pdu-a01")
    assert sorted(c["level"] for c in d["children"]) == sorted(LAB.children("pdu-a01"))
    assert not any(c["reporting"] for c in d["children"]) and len(d["open_events"]) == 30
