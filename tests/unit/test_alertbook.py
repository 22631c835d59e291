"""Which alerts the Alertmanager sink posts, and when (no server: the pure AlertBook and the cause tables)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from powerplane.schemas import Event
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from streams.sinks.alertmanager.alerts import AlertBook, parse_rfc3339, rfc3339
from streams.sinks.alertmanager.causes import ALERT_NAMES, cause_scopes
from streams.sinks.base import SinkConfigError, load_sink

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"
RUNBOOKS = "https://ops.example/runbooks.md"


def ev(state: str = "open", severity: str = "critical", ts: float = 1000.0, eid: str = "e1", kind: str = "feed_loss",
       level: str = "util-a") -> Event:
    return Event(id=eid, site="lab", kind=kind, severity=severity, state=state, levels=[level, "ups-a"],
                 ts_s=ts, deadline_s=ts + 10 if state == "open" else None, summary=f"{kind} on {level}", opened_s=990.0)


@pytest.fixture(scope="module")
def scopes() -> dict[str, dict[str, str]]:
    return cause_scopes(load_site(LAB))


def lab_book(scopes: dict[str, dict[str, str]], **kw: float) -> AlertBook:
    return AlertBook(runbook_base_url=RUNBOOKS, scopes={"lab": scopes}, racks={"lab": 8}, **kw)  # type: ignore[arg-type]


def test_open_posts_once_with_camelcase_name_scope_labels_and_absolute_links(scopes: dict[str, dict[str, str]]) -> None:
    book = lab_book(scopes, repost_s=60)
    (a,) = book.update(ev(), now_s=1000.5)
    # No per-event label (the id, the kind): what the alert is about, and the 2N pair it hangs from.
    assert a["labels"] == {"alertname": "FeedLoss", "site": "lab", "level": "util-a", "severity": "critical",
                           "feed": "util-a+util-b"}
    ann = a["annotations"]
    assert ann["runbook_url"] == "https://ops.example/runbooks.md#feedloss"
    assert ann["event_id"] == "e1" and ann["kind"] == "feed_loss" and ann["levels"] == "util-a, ups-a"
    assert ann["deadline"] == rfc3339(1010.0) and "deadline_in_s" not in ann  # absolute, never a stale countdown
    assert a["startsAt"] == rfc3339(990.0) and "endsAt" not in a
    # The detector's updates of the same occurrence (and re-deliveries) post nothing new ...
    assert book.update(ev(ts=1001.0), now_s=1001.5) == []
    assert book.update(ev(ts=1001.0), now_s=1001.6) == []
    # ... until the re-post that keeps it from expiring in Alertmanager, with the latest annotations.
    assert book.due(now_s=1030.0) == []
    (again,) = book.due(now_s=1061.0)
    assert again["annotations"]["deadline"] == rfc3339(1011.0) and again["startsAt"] == rfc3339(990.0)
    assert book.due(now_s=1062.0) == []


def test_a_lost_feeds_overloads_on_the_other_side_share_its_feed_label(scopes: dict[str, dict[str, str]]) -> None:
    book = lab_book(scopes)
    (b,) = book.update(ev(kind="breaker_overload", level="pdu-b03", eid="o1"), now_s=1000.0)
    (r,) = book.update(ev(kind="telemetry_loss", level="rack-03", eid="t1", severity="warning"), now_s=1000.0)
    (c,) = book.update(ev(kind="cooling_failure", level="zone-1", eid="c1"), now_s=1000.0)
    assert b["labels"]["alertname"] == "BreakerOverload" and b["labels"]["feed"] == "util-a+util-b"
    assert b["labels"]["lineup"] == "ups-a+ups-b" and r["labels"]["lineup"] == "ups-a+ups-b"
    assert "feed" not in c["labels"], "a cooling zone is not beneath a feed: a feed loss must not silence it"
    assert [k for k in ALERT_NAMES.values() if k != k[:1].upper() + k[1:] or "_" in k] == []


def test_two_events_with_one_label_set_are_one_alert_ended_by_the_last(scopes: dict[str, dict[str, str]]) -> None:
    book = lab_book(scopes)
    (a,) = book.update(ev(kind="command_refused", level="rack-01", eid="s1", severity="warning"), now_s=1000.0)
    assert book.update(ev(kind="command_refused", level="rack-01", eid="s2", severity="warning"), now_s=1001.0) == []
    assert book.update(ev("resolved", kind="command_refused", level="rack-01", eid="s1", severity="warning",
                          ts=1002.0), now_s=1002.0) == []
    (end,) = book.update(ev("resolved", kind="command_refused", level="rack-01", eid="s2", severity="warning",
                            ts=1003.0), now_s=1003.0)
    assert end["labels"] == a["labels"] and end["endsAt"] == rfc3339(1003.0)


def test_a_resolved_feed_loss_stays_firing_until_the_overloads_it_silences_end(
        scopes: dict[str, dict[str, str]]) -> None:
    book = lab_book(scopes)
    book.update(ev(), now_s=1000.0)
    book.update(ev(kind="breaker_overload", level="pdu-b03", eid="o1"), now_s=1001.0)
    # The feed is back first; its overload clears a second later on its own clock: ending the FeedLoss now
    # would let Alertmanager page the overload in between.
    assert book.update(ev("resolved", ts=1020.0), now_s=1020.5) == []
    assert book.due(now_s=1021.0) == []
    over_end, feed_end = book.update(ev("resolved", kind="breaker_overload", level="pdu-b03", eid="o1", ts=1021.0),
                                     now_s=1021.5)
    assert over_end["labels"]["alertname"] == "BreakerOverload" and feed_end["labels"]["alertname"] == "FeedLoss"
    assert (parse_rfc3339(feed_end["endsAt"]), parse_rfc3339(over_end["endsAt"])) == (1021.5, 1021.0)
    assert book.live == {} and book.due(now_s=5000.0) == []
    # A hold ends after cause_hold_max_s even if what it silences stays open.
    book = lab_book(scopes, cause_hold_max_s=30)
    book.update(ev(), now_s=1000.0)
    book.update(ev(kind="breaker_overload", level="pdu-b03", eid="o1"), now_s=1001.0)
    assert book.update(ev("resolved", ts=1020.0), now_s=1020.0) == []
    assert book.due(now_s=1049.0) == []
    assert [a["labels"]["alertname"] for a in book.due(now_s=1050.0)] == ["FeedLoss"]


def test_many_racks_without_telemetry_raise_one_site_alert(scopes: dict[str, dict[str, str]]) -> None:
    book = lab_book(scopes)  # lab: 8 racks; half of them silent is a site problem
    def lose(i: int, state: str = "open") -> list[dict[str, object]]:
        return book.update(ev(state, kind="telemetry_loss", level=f"rack-0{i}", eid=f"t{i}", severity="warning"),
                           now_s=1000.0 + i)
    assert [len(lose(i)) for i in (1, 2, 3)] == [1, 1, 1]
    tele, site = lose(4)
    assert tele["labels"]["alertname"] == "TelemetryLoss"
    assert site["labels"] == {"alertname": "SiteTelemetryLoss", "site": "lab", "severity": "critical"}
    assert site["annotations"]["summary"].startswith("4 of 8 racks without telemetry")
    # Racks coming back: the site alert holds while per-rack losses it silences are open, then ends last.
    assert [len(lose(i, "resolved")) for i in (1, 2, 3)] == [1, 1, 1]
    rack_end, site_end = lose(4, "resolved")
    assert rack_end["labels"]["alertname"] == "TelemetryLoss" and site_end["labels"]["alertname"] == "SiteTelemetryLoss"


def test_resolution_ends_the_alert_at_its_event_time_never_in_the_future() -> None:
    book = AlertBook()
    book.update(ev(), now_s=1000.0)
    (end,) = book.update(ev("resolved", ts=1020.0), now_s=1021.0)
    assert end["endsAt"] == rfc3339(1020.0) and end["annotations"]["event_id"] == "e1"
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


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.url: must start with http:// or https://"):
        load_sink("am", {"kind": "alertmanager", "url": "localhost:9093"})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.repost_s: input should be greater than 0"):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "repost_s": 0})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.min_severity: must be one of "):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "min_severity": "loud"})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.kind: unknown sink kind 'alertmanger'"):
        load_sink("am", {"kind": "alertmanger", "url": "http://a:9093"})
    with pytest.raises(SinkConfigError, match=r"^sinks\.am\.runbook_base_url: must be an absolute http:// or https://"):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "runbook_base_url": "docs/runbooks.md"})
    with pytest.raises(SinkConfigError, match=rf"^sinks\.am\.site_file: {tmp_path}/nope\.toml: cannot read"):
        load_sink("am", {"kind": "alertmanager", "url": "http://a:9093", "site_file": str(tmp_path / "nope.toml")})


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
    for name, opts in tomllib.loads((ROOT / "streams/sinks/alertmanager/sample.toml").read_text())["sinks"].items():
        sink = load_sink(name, opts)
        assert sink.kind == "alertmanager" and sink.topics == ("pp.events",)
