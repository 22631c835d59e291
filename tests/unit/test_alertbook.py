"""Which alerts the Alertmanager sink posts, and when (no server: the pure AlertBook)."""

from __future__ import annotations

import pytest

from powerplane.schemas import Event
from powerplane.validation import ConfigError
from streams.sinks.alertmanager.alerts import AlertBook, parse_rfc3339, rfc3339
from streams.sinks.base import SinkConfigError, load_sink


def ev(state: str = "open", severity: str = "critical", ts: float = 1000.0, eid: str = "e1") -> Event:
    return Event(id=eid, site="lab", kind="feed_loss", severity=severity, state=state, levels=["util-a", "ups-a"],
                 ts_s=ts, deadline_s=ts + 10 if state == "open" else None, summary="feed A lost", opened_s=990.0)


def test_open_posts_once_with_labels_annotations_and_start() -> None:
    book = AlertBook(runbook_base="https://ops.example/runbooks.md", repost_s=60)
    (a,) = book.update(ev(), now_s=1000.5)
    assert a["labels"] == {"alertname": "feed_loss", "site": "lab", "level": "util-a", "kind": "feed_loss",
                           "severity": "critical", "event_id": "e1"}
    assert a["annotations"]["runbook_url"] == "https://ops.example/runbooks.md#feed_loss"
    assert a["annotations"]["deadline"] == rfc3339(1010.0) and a["annotations"]["levels"] == "util-a, ups-a"
    assert a["startsAt"] == rfc3339(990.0) and "endsAt" not in a
    # The detector's updates of the same occurrence (and re-deliveries) post nothing new ...
    assert book.update(ev(ts=1001.0), now_s=1001.5) == []
    assert book.update(ev(ts=1001.0), now_s=1001.6) == []
    # ... until the re-post that keeps it from expiring in Alertmanager, with the latest annotations.
    assert book.due(now_s=1030.0) == []
    (again,) = book.due(now_s=1061.0)
    assert again["annotations"]["deadline"] == rfc3339(1011.0) and again["startsAt"] == rfc3339(990.0)
    assert book.due(now_s=1062.0) == []


def test_resolution_ends_the_alert_at_its_event_time_never_in_the_future() -> None:
    book = AlertBook()
    book.update(ev(), now_s=1000.0)
    (end,) = book.update(ev("resolved", ts=1020.0), now_s=1021.0)
    assert end["endsAt"] == rfc3339(1020.0) and end["labels"]["event_id"] == "e1"
    assert book.due(now_s=5000.0) == []  # no longer re-posted
    book.update(ev(eid="e2"), now_s=1000.0)
    (end,) = book.update(ev("resolved", ts=9999.0, eid="e2"), now_s=1030.0)  # clock skew: event time ahead
    assert end["endsAt"] == rfc3339(1030.0)


def test_escalation_replaces_the_alert_and_info_is_not_sent() -> None:
    book = AlertBook()
    (warn,) = book.update(ev(severity="warning"), now_s=1000.0)
    old, new = book.update(ev(severity="critical"), now_s=1005.0)
    assert old["labels"]["severity"] == "warning" and old["endsAt"] == rfc3339(1005.0)
    assert new["labels"]["severity"] == "critical" and new["startsAt"] == warn["startsAt"] and "endsAt" not in new
    assert AlertBook().update(ev(severity="info"), now_s=1000.0) == []
    assert AlertBook(min_severity="info").update(ev(severity="info"), now_s=1000.0) != []


def test_failed_repost_is_retried_soon_and_held_alerts_are_adopted() -> None:
    book = AlertBook(repost_s=60, retry_s=5)
    (a,) = book.update(ev(), now_s=1000.0)
    book.failed([a], now_s=1000.0)
    assert book.due(now_s=1004.0) == [] and len(book.due(now_s=1005.0)) == 1
    fresh = AlertBook(repost_s=60)
    held = [{"labels": a["labels"], "annotations": a["annotations"], "startsAt": "2024-01-01T00:00:00.123456789Z"},
            {"labels": {"alertname": "other"}, "startsAt": "2024-01-01T00:00:00Z"}]  # not ours: no event_id
    assert fresh.adopt(held, now_s=2000.0) == 1
    (end,) = fresh.update(ev("resolved", ts=1.0), now_s=2001.0)  # resolved before it started: clamp
    assert parse_rfc3339(end["endsAt"]) == pytest.approx(parse_rfc3339("2024-01-01T00:00:00.123456Z"))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.url: must start with http:// or https://"):
        load_sink("am", {"kind": "alertmanager", "url": "localhost:9093"})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.repost_s: input should be greater than 0"):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "repost_s": 0})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.min_severity: must be one of "):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "min_severity": "loud"})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.kind: unknown sink kind 'alertmanger'"):
        load_sink("am", {"kind": "alertmanger", "url": "http://a:9093"})


def test_every_mistake_of_a_sink_table_is_reported_at_once_with_its_path() -> None:
    with pytest.raises(ConfigError) as e:  # the one error class of every config mistake
        load_sink("am", {"kind": "alertmanager", "repost_s": "60", "timeout_ms": -1, "min_severity": "loud",
                         "runbook": "docs/runbooks.md"})
    assert isinstance(e.value, SinkConfigError)
    assert e.value.errors == [
        "sinks.am.url: missing (required)",
        "sinks.am.repost_s: input should be a valid number, got '60'",
        "sinks.am.timeout_ms: input should be greater than 0, got -1",
        "sinks.am.min_severity: must be one of info, warning, critical, got 'loud'",
        "sinks.am.runbook: unknown key",
    ]


def test_sample_toml_configures() -> None:
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name, opts in tomllib.loads((root / "streams/sinks/alertmanager/sample.toml").read_text())["sinks"].items():
        sink = load_sink(name, opts)
        assert sink.kind == "alertmanager" and sink.topics == ("pp.events",)
    runbooks = (root / "docs" / "runbooks.md").read_text()
    for kind in ("feed_loss", "ups_loss", "breaker_overload", "cooling_failure", "thermal_slowdown",
                 "telemetry_loss", "meter_gap", "command_refused"):
        assert f"\n## {kind}\n" in runbooks, f"no runbook section for {kind} (alerts link to #{kind})"
