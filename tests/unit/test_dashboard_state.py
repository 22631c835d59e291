"""The dashboard's state folding (pure), its replay by event time (a recording on disk, no broker) and
`powerplane status`'s one-line error when no broker answers."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dashboards.live.replay import Replayer
from dashboards.live.state import DashState, status_rows
from ops.cli import main
from powerplane import topics
from powerplane.recording import Recorded, RecordingWriter
from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate, decode_any
from powerplane.site_file import load_site
from tests.dashboard_synth import cap_and_ack, emergency, frames

ROOT = Path(__file__).resolve().parents[2]
LAB = load_site(ROOT / "examples" / "lab.toml")
T0 = 1_800_000_000.0


def agg(level: str, kind: str, ts: float, power: float, limit: float = 46_000.0, mode: str = "normal",
        inlet: float | None = None) -> LevelAggregate:
    return LevelAggregate(site="lab", level=level, kind=kind, ts_s=ts, window_s=1.0, power_w=power, limit_w=limit,
                          rated_w=limit / 0.8, mode=mode, gpus_expected=64, gpus_reporting=64, inlet_c=inlet)


def head(level: str, ts: float, power: float, p99: float, limit: float = 46_000.0) -> Headroom:
    return Headroom(site="lab", level=level, kind="pdu", ts_s=ts, mode="normal", horizon_s=10.0, power_w=power,
                    limit_w=limit, forecast_p50_w=power, forecast_p99_w=p99, headroom_w=limit - p99)


def command(cid: str, rack: str, ts: float, action: str = "power_cap", lease: float = 30.0,
            reason: str = "pdu over 80%") -> Command:
    return Command(id=cid, site="lab", target=rack, action=action, gpus=np.arange(4, dtype=np.uint16),
                   values=np.array([400, 400, 500, 500], dtype=np.float32), params={}, reason=reason,
                   issuer="t", issued_at_s=ts, lease_s=lease)


def ack(cid: str, rack: str, ts: float, status: str = "applied") -> Ack:
    return Ack(command_id=cid, site="lab", target=rack, status=status, gpus=np.arange(4, dtype=np.uint16),
               applied=np.array([400, 400, 500, np.nan], dtype=np.float32), reason="", actuator="t", ts_s=ts)


def event(eid: str, ts: float, state: str = "open", deadline: float | None = None,
          severity: str = "critical") -> Event:
    return Event(id=eid, site="lab", kind="breaker_overload", severity=severity, state=state, levels=["pdu-b03"],
                 ts_s=ts, deadline_s=deadline, summary="pdu-b03 at 115%")


def row(state: DashState, level: str) -> dict[str, object]:
    r = state.level_row(level)
    return dict(zip(("level", *state.snapshot()["cols"]), r, strict=True))


def test_levels_coalesce_into_one_delta_row_with_the_newest_values() -> None:
    s = DashState(site=LAB)
    s.take_delta()
    for k in range(5):
        s.apply(agg("pdu-b03", "pdu", T0 + k, 20_000.0 + k))
    s.apply(head("pdu-b03", T0 + 4, 20_004.0, 21_000.0))
    d = s.take_delta()
    rows = [r for r in d["levels"] if r[0] == "pdu-b03"]
    assert len(rows) == 1, "ten records in a tick must reach the page as one row"
    r = row(s, "pdu-b03")
    assert r["power_w"] == 20_004.0 and r["headroom_w"] == 25_000.0 and r["forecast_p99_w"] == 21_000.0
    assert s.take_delta()["levels"] == [], "nothing changed since the last delta"
    # A late window from another partition does not overwrite a newer one.
    s.apply(agg("pdu-b03", "pdu", T0 + 1, 1.0))
    assert row(s, "pdu-b03")["power_w"] == 20_004.0


def test_missing_values_are_null_never_zero_and_the_snapshot_is_strict_json() -> None:
    s = DashState(site=LAB)
    s.apply(agg("rack-01", "rack", T0, 30_000.0, inlet=None))
    s.apply(agg("rack-02", "rack", T0, math.nan))
    snap = s.snapshot()
    text = json.dumps(snap, allow_nan=False)  # the browser's JSON.parse rejects NaN
    assert row(s, "rack-01")["inlet_c"] is None and row(s, "rack-02")["power_w"] is None
    assert "rack-01" in text and row(s, "rack-01")["headroom_w"] is None


def test_site_layout_gives_the_tree_and_racks_grouped_by_row() -> None:
    s = DashState(site=LAB)
    snap = s.snapshot()
    tree = {t[0]: t for t in snap["tree"]}
    assert tree["pdu-b03"][2] == "rpp-b1" and tree["pdu-b03"][3] == "B"
    assert tree["util-a"][2] == "lab" and tree["hall-1"][2] == "lab", "top levels hang under the site"
    assert snap["racks"] == [f"rack-{i:02d}" for i in range(1, 9)]
    assert snap["rows"] == [["row-1", 0, 8]]
    rows = status_rows(s)
    assert rows == [], "no values yet: nothing to print"


def test_levels_without_a_site_file_appear_as_they_arrive() -> None:
    s = DashState(site=None)
    s.apply(agg("rack-x", "rack", T0, 10_000.0))
    s.apply(agg("ups-z", "ups", T0, 10_000.0, limit=400_000.0))
    d = s.take_delta()
    assert [t[0] for t in d["tree"]] == ["rack-x", "ups-z"] and d["racks"] == ["rack-x"]
    assert s.take_delta()["tree"] == []


def test_forecast_history_merges_aggregate_and_headroom_of_a_window_and_is_bounded() -> None:
    s = DashState(site=LAB, history_len=50)
    for k in range(80):
        s.apply(agg("pdu-a01", "pdu", T0 + k, 20_000.0 + k))
        s.apply(head("pdu-a01", T0 + k, 20_000.0 + k, 22_000.0 + k))
    h = s.history("pdu-a01")
    assert len(h) == 50, "bounded to history_len points"
    assert h[0][0] == T0 + 30 and h[-1][0] == T0 + 79, "oldest first, the newest kept"
    assert h[-1] == [T0 + 79, 20_079.0, 20_079.0, 22_079.0, 46_000.0]
    s.apply(agg("pdu-a01", "pdu", T0 + 10, 1.0))  # far out of order: dropped, not inserted
    assert len(s.history("pdu-a01")) == 50 and s.history("pdu-a01")[-1][0] == T0 + 79


def test_commands_are_pending_until_acked_and_caps_last_until_the_lease_or_a_release() -> None:
    s = DashState(site=LAB)
    s.apply(command("c1", "rack-03", T0))
    s.apply(command("c2", "rack-04", T0))
    assert [p["id"] for p in s.pending()] == ["c1", "c2"] and s.active_caps() == []
    s.apply(ack("c1", "rack-03", T0 + 0.3))
    assert [p["id"] for p in s.pending()] == ["c2"]
    caps = s.active_caps()
    assert [(c["target"], c["applied_min"], c["applied_max"]) for c in caps] == [("rack-03", 400.0, 500.0)]
    # The lease runs out in event time: the cap is gone, and c2 (never acked) is no longer pending.
    s.apply(agg("rack-01", "rack", T0 + 31, 1.0))
    assert s.active_caps() == [] and s.pending() == []
    # A release ends a cap before its lease.
    s.apply(command("c3", "rack-05", T0 + 40))
    s.apply(ack("c3", "rack-05", T0 + 40.1))
    s.apply(command("c4", "rack-05", T0 + 41, action="release"))
    assert s.active_caps() == []
    # A release ends only its knob's cap: a clock lock outlives a power release, a power cap a clock release.
    for cid, action in (("c5", "power_cap"), ("c6", "sm_clock_lock")):
        s.apply(command(cid, "rack-06", T0 + 42, action=action))
        s.apply(ack(cid, "rack-06", T0 + 42.1))
    s.apply(replace(command("c7", "rack-06", T0 + 43, action="release"), params={"knob": "power"}))
    assert [c["action"] for c in s.active_caps()] == ["sm_clock_lock"]
    s.apply(replace(command("c8", "rack-06", T0 + 43, action="release"), params={"knob": "clock"}))
    assert s.active_caps() == []


def test_an_ack_before_its_command_is_kept_and_renewals_stay_out_of_the_log() -> None:
    s = DashState(site=LAB)
    s.apply(ack("c9", "rack-02", T0 + 0.1))
    s.apply(command("c9", "rack-02", T0))
    assert s.pending() == [] and s.active_caps()[0]["id"] == "c9"
    s.take_delta()
    assert list(s.log)[-1]["text"].endswith("power_cap rack-02 (pdu over 80%): 1 applied, 0 refused")
    n = len(s.log)
    s.apply(command("r1", "rack-02", T0 + 5, reason="lease renewal"))
    s.apply(ack("r1", "rack-02", T0 + 5.1))
    s.take_delta()
    kinds = [e["kind"] for e in list(s.log)[n:]]
    assert kinds == ["renewal"], "an applied renewal's ack is noise; the renewal is logged, muted"
    assert s.active_caps()[0]["reason"] == "pdu over 80%", "a renewed cap keeps the reason that set it"
    s.apply(ack("r2", "rack-02", T0 + 6, status="rejected"))
    assert list(s.log)[-1]["severity"] == "warning"


def test_emergencies_open_sorted_by_deadline_resolve_and_are_logged_once() -> None:
    s = DashState(site=LAB)
    s.apply(event("e1", T0, deadline=T0 + 60))
    s.apply(event("e2", T0 + 1, deadline=T0 + 10))
    s.apply(event("e3", T0 + 1, deadline=None, severity="warning"))
    s.apply(event("e1", T0 + 2, deadline=T0 + 55))  # an update: same id, still open
    assert [e["id"] for e in s.open_events()] == ["e2", "e1", "e3"]
    assert s.open_events()[1]["opened_s"] == T0, "the first sighting is when it opened"
    s.apply(event("e2", T0 + 3, state="resolved"))
    assert [e["id"] for e in s.open_events()] == ["e1", "e3"]
    texts = [e["text"] for e in s.log]
    assert sum(t.startswith("OPEN") for t in texts) == 3 and sum(t.startswith("RESOLVED") for t in texts) == 1
    assert s.open_event_counts() == {"pdu-b03": 2}


def test_bounded_event_table_forgets_resolved_events_before_open_ones() -> None:
    s = DashState(site=LAB, max_events=3, log_len=4)
    s.apply(event("open-1", T0))
    for k in range(5):
        s.apply(event(f"r{k}", T0 + k, state="resolved"))
    assert "open-1" in s.events and len(s.events) == 3
    assert len(s.log) == 4 and s.log[-1]["seq"] == 6


def test_status_rows_walk_the_power_tree_with_load_fraction_and_open_events() -> None:
    s = DashState(site=LAB)
    s.apply(agg("lab", "site", T0, 300_000.0, limit=400_000.0))
    s.apply(agg("pdu-b03", "pdu", T0, 40_000.0, mode="A-lost"))
    s.apply(head("pdu-b03", T0, 40_000.0, 42_000.0))
    s.apply(agg("rack-03", "rack", T0, 40_000.0))
    s.apply(event("e1", T0, deadline=T0 + 30))
    rows = status_rows(s, kinds={"site", "pdu"})
    assert [(r["level"], r["depth"]) for r in rows] == [("lab", 0), ("pdu-b03", 1)]
    pdu = rows[1]
    assert pdu["load_frac"] == pytest.approx(40_000 / 46_000) and pdu["headroom_w"] == 4_000.0
    assert pdu["mode"] == "normal" and pdu["open_events"] == 1  # the headroom record's mode is the newer
    assert rows[0]["headroom_w"] is None


def _recording(path: Path, seconds: int) -> None:
    w = RecordingWriter(path, [topics.AGGREGATES.name, topics.HEADROOM.name, topics.EVENTS.name,
                               topics.COMMANDS.name, topics.ACKS.name])
    n: dict[str, int] = {}
    extra = [emergency(LAB, "pdu-b03", T0 + 5), *cap_and_ack(LAB, "rack-03", T0 + 6, "c1")]
    for k, recs in enumerate(frames(LAB, seconds, T0)):
        for t, key, val, ts in recs + [r for r in extra if int(r[3] // 1000) == int(T0) + k]:
            w.add(Recorded(t, 0, n.setdefault(t, 0), ts, key, val, []))
            n[t] += 1
    w.close()


def test_replay_follows_the_recordings_event_time_and_seeks_both_ways(tmp_path: Path) -> None:
    _recording(tmp_path / "rec", 20)
    s = DashState(site=LAB)
    lock = threading.Lock()
    rp = Replayer(tmp_path / "rec", s.apply, s.reset, lock, speed=1.0)
    assert rp.start_ms == int(T0 * 1000) and rp.end_ms == int((T0 + 19) * 1000)
    rp.play(False)
    rp.start()
    try:
        rp.seek((T0 + 10) * 1000)
        deadline = time.monotonic() + 10
        while rp.status().t_ms != int((T0 + 10) * 1000) and time.monotonic() < deadline:
            time.sleep(0.02)
        with lock:
            assert s.clock_s == pytest.approx(T0 + 10)
            assert [e["id"] for e in s.open_events()] == ["ev-test-1"]
            assert s.active_caps()[0]["target"] == "rack-03"
            epoch = s.epoch
        rp.seek((T0 + 2) * 1000)  # backwards: the state starts over and shows the past
        deadline = time.monotonic() + 10
        while rp.status().t_ms != int((T0 + 2) * 1000) and time.monotonic() < deadline:
            time.sleep(0.02)
        with lock:
            assert s.epoch == epoch + 1 and s.clock_s == pytest.approx(T0 + 2)
            assert s.open_events() == [] and s.active_caps() == []
        rp.set_speed(50.0)
        rp.play(True)
        deadline = time.monotonic() + 10
        while not rp.status().done and time.monotonic() < deadline:
            time.sleep(0.05)
        st = rp.status()
        assert st.done and not st.playing and st.t_ms == rp.end_ms
        with lock:
            assert s.clock_s == pytest.approx(T0 + 19)
    finally:
        rp.close()


def test_replay_refuses_a_recording_without_dashboard_topics(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path / "rec", [topics.TELEMETRY.name])
    w.close()
    with pytest.raises(ValueError, match="none of the dashboard's topics"):
        Replayer(tmp_path / "rec", lambda r: None, lambda: None, threading.Lock())


def test_synthetic_records_decode_for_every_level_kind() -> None:
    recs = next(iter(frames(LAB, 1, T0)))
    kinds = {decode_any(v).kind for t, _k, v, _ts in recs if t == topics.AGGREGATES.name}  # type: ignore[attr-defined]
    assert kinds == {"site", "utility", "ups", "rpp", "pdu", "hall", "row", "rack", "zone"}


def test_status_without_a_broker_is_one_line_saying_what_to_do(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
        t0 = time.monotonic()
        rc = main(["status"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err  # exit 1: a server unreachable
    assert "no Kafka broker answers" in err[0] and "powerplane dev up" in err[0]
    assert time.monotonic() - t0 < 15, "a status command must not hang for half a minute"


# ---- issue 15: a dashboard that stays true ---------------------------------------------------------------
def feed_event(eid: str, ts: float, state: str = "open", kind: str = "feed_loss", level: str = "util-a",
               deadline: float | None = None, summary: str = "feed A lost") -> Event:
    return Event(id=eid, site="lab", kind=kind, severity="critical" if kind != "telemetry_loss" else "warning",
                 state=state, levels=[level], ts_s=ts, deadline_s=deadline, summary=summary, opened_s=ts)


def test_pdu_headroom_follows_its_own_records_when_aggregates_carry_frame_times() -> None:
    # PDU aggregates are stamped with their frame (N.415 s), headroom with its window (N.0 s), and the
    # headroom of a window arrives after the next frame's aggregate: each must still be shown.
    s = DashState(site=LAB)
    for k in range(5):
        s.apply(agg("pdu-b01", "pdu", T0 + k + 0.415, 20_000.0 + k))
        s.apply(head("pdu-b01", T0 + k, 20_000.0 + k, 30_000.0 + 1_000.0 * k))
        r = row(s, "pdu-b01")
        assert r["headroom_w"] == 46_000.0 - 30_000.0 - 1_000.0 * k, f"headroom froze at window {k}"
        assert r["power_w"] == 20_000.0 + k and r["ts_s"] == T0 + k + 0.415
    s.apply(head("pdu-b01", T0 + 2, 1.0, 1.0))  # a late headroom window: older than its kind's newest
    assert row(s, "pdu-b01")["headroom_w"] == 12_000.0


def test_a_level_on_a_lost_feed_never_reads_normal() -> None:
    s = DashState(site=LAB)
    s.apply(agg("pdu-a03", "pdu", T0 + 0.415, 21_000.0))  # its rack then goes silent: no newer PDU record
    s.apply(agg("lab", "site", T0 + 2, 200_000.0, limit=400_000.0, mode="A-lost"))
    assert s.mode_of("pdu-a03") == "A-lost" and row(s, "pdu-a03")["mode"] == "A-lost"
    assert [r["mode"] for r in status_rows(s, {"pdu"}) if r["level"] == "pdu-a03"] == ["A-lost"]
    assert s.mode_of("pdu-b03") is None and s.snapshot()["feed_mode"] == "A-lost"
    s.apply(agg("lab", "site", T0 + 30, 300_000.0, limit=400_000.0))  # restored: the badge goes
    assert s.mode_of("pdu-a03") == "normal" and s.take_delta()["feed_mode"] == "normal"


def test_acknowledged_shedding_is_not_overdue_and_a_resolved_event_closes() -> None:
    s = DashState(site=LAB)
    s.apply(feed_event("f1", T0, deadline=T0 + 10))
    racks = [f"rack-0{i}" for i in range(1, 4)]
    for i, r in enumerate(racks):
        s.apply(command(f"c{i}", r, T0 + 0.5, reason="shedding: pdu-b01 at 104% of its limit"))
    for i, r in enumerate(racks[:2]):
        s.apply(ack(f"c{i}", r, T0 + 0.8))
    assert s.open_events()[0]["shed_acked_s"] is None, "one rack still has not acknowledged"
    s.apply(ack("c2", "rack-03", T0 + 1.1))
    s.apply(ack("c2", "rack-03", T0 + 1.5, status="duplicate"))  # at-least-once: counted once
    assert s.open_events()[0]["shed_acked_s"] == T0 + 1.1
    assert s.take_delta()["groups"][0]["shed_acked_s"] == T0 + 1.1
    # A decision from before the event opened is not its shedding.
    s2 = DashState(site=LAB)
    s2.apply(command("old", "rack-01", T0 - 30))
    s2.apply(ack("old", "rack-01", T0 - 29.9))
    s2.apply(feed_event("f1", T0, deadline=T0 + 10))
    assert s2.open_events()[0]["shed_acked_s"] is None
    # Cleared: the card (and its deadline) is gone; a late "open" of the same event does not reopen it.
    s.apply(feed_event("f1", T0 + 60, state="resolved"))
    s.apply(feed_event("f1", T0 + 5))
    assert s.open_events() == [] and s.take_delta()["groups"] == []


def test_emergencies_are_grouped_by_kind_and_cause_with_critical_kinds_above_telemetry_noise() -> None:
    s = DashState(site=LAB, max_events=5000)
    for i in range(1000):
        s.apply(feed_event(f"t{i}", T0 + i * 0.001, kind="telemetry_loss", level=f"rack-{i:04d}",
                           summary=f"rack-{i:04d}: no reading for 6 s; counted conservatively"))
    for i in range(24):
        s.apply(feed_event(f"g{i}", T0 + 1, kind="telemetry_loss", level=f"rack-g{i}",
                           summary=f"rack-g{i}: 3 of 64 GPUs reporting; counted conservatively"))
    s.apply(feed_event("f1", T0 + 2, deadline=T0 + 12))
    s.apply(feed_event("c1", T0 + 3, kind="cooling_failure", level="zone-1", summary="zone-1 inlet rising"))
    groups = s.snapshot()["groups"]
    assert [(g["kind"], g["cause"], g["count"]) for g in groups] == [
        ("feed_loss", "", 1), ("cooling_failure", "", 1), ("telemetry_loss", "no reading", 1000),
        ("telemetry_loss", "GPUs silent", 24)]
    assert groups[0]["critical_kind"] and groups[0]["deadline_s"] == T0 + 12
    assert len(groups[2]["events"]) == 6 and groups[2]["opened_s"] == T0, "a group shows a few members"


def test_acks_collapse_into_one_log_line_per_decision() -> None:
    s = DashState(site=LAB, log_len=50)
    s.take_delta()
    for i in range(1024):
        s.apply(command(f"c{i}", f"rack-{i:04d}", T0, reason="shedding: ups-b at 96% of its limit"))
    first = s.take_delta()["log"]
    assert len(first) == 1 and first[0]["text"].endswith("0 applied, 0 refused, 1024 pending")
    for i in range(1024):
        s.apply(ack(f"c{i}", f"rack-{i:04d}", T0 + 0.5, status="applied" if i else "rejected"))
    log = s.take_delta()["log"]
    assert len(log) == 1 and log[0]["ref"] == first[0]["ref"] and log[0]["severity"] == "warning"
    assert "1024 power_cap (shedding x1024): 1023 applied, 1 refused" in log[0]["text"], log[0]["text"]
    assert [e["ref"] for e in s.log].count(first[0]["ref"]) == 1, "the updated line replaces the first"


def test_a_full_event_table_forgets_telemetry_noise_before_a_feed_loss() -> None:
    s = DashState(site=LAB, max_events=100)
    s.apply(feed_event("f1", T0, deadline=T0 + 10))
    for i in range(1000):
        s.apply(feed_event(f"t{i}", T0 + 1, kind="telemetry_loss", level=f"rack-{i:04d}"))
    d = s.take_delta()
    assert d["groups"][0]["kind"] == "feed_loss" and d["n_open"] == 100
    assert "open_events" not in d, "the page gets events grouped, not 1,000 one by one every second"


def test_telemetry_noise_is_one_log_line_per_second_and_the_feed_loss_stays_in_view() -> None:
    s = DashState(site=LAB, log_len=20)
    s.take_delta()
    s.apply(feed_event("f1", T0, deadline=T0 + 10))
    for i in range(1000):
        s.apply(feed_event(f"t{i}", T0 + 0.5, kind="telemetry_loss", level=f"rack-{i:04d}"))
    texts = [e["text"] for e in s.take_delta()["log"]]
    assert texts[0].startswith("OPEN feed_loss util-a") and len(texts) == 2, texts
    assert texts[1] == "OPEN telemetry_loss x1000: rack-0000, rack-0001, rack-0002 ..."
