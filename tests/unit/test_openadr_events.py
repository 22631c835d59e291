"""An OpenADR 2.0b event (as openleadr parses it) read as one demand-response request, or refused by name: what
the utility's VTN asks is what the controller gets, and nothing it cannot read passes as a request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openleadr import objects
from openleadr.messaging import create_message, parse_message

from collectors.openadr.config import load
from collectors.openadr.events import Refused, Rules, read_event, schedule
from powerplane.site_file import load_site
from powerplane.validation import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RULES = Rules({1: 10.0, 2: 25.0, 3: 40.0}, "MW", 30.0, {"res-a": "util-a"})
T0 = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)


def _event(name: str, kind: str, payloads: list[float], ramp_s: float | None = 300.0, duration_s: float = 3600.0,
           targets: list[dict[str, str]] | None = None, measurement: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event as the gateway gets it: built with openleadr's objects, written as the oadrDistributeEvent XML a
    VTN sends, and parsed back by openleadr (its schema checks included)."""
    step = timedelta(seconds=duration_s / len(payloads))  # the intervals fill the active period (openleadr's rule)
    intervals = [objects.Interval(dtstart=T0 + i * step, duration=step, signal_payload=p)
                 for i, p in enumerate(payloads)]
    signal = objects.EventSignal(intervals=intervals, signal_name=name, signal_type=kind, signal_id="s1",
                                 measurement=objects.Measurement(name="real_power", description="RealPower",
                                                                 **measurement) if measurement else None)
    period = objects.ActivePeriod(dtstart=T0, duration=timedelta(seconds=duration_s),
                                  ramp_up_period=timedelta(seconds=ramp_s) if ramp_s else None)
    event = objects.Event(event_descriptor=objects.EventDescriptor(
        event_id="ev-1", modification_number=0, market_context="oadr://utility.example/dr", event_status="far",
        created_date_time=T0 - timedelta(days=1)), active_period=period, event_signals=[signal],
        targets=targets or [{"ven_id": "ven-pp"}])
    _, payload = parse_message(create_message("oadrDistributeEvent", request_id="r1", vtn_id="VTN", events=[event]))
    parsed: dict[str, Any] = payload["events"][0]
    return parsed


def _edited(payload: float | None = None, duration_s: float | None = None) -> dict[str, Any]:
    """A SIMPLE level-2 event as parsed, then changed where openleadr's sender would refuse to write it."""
    event = _event("SIMPLE", "level", [2])
    if payload is not None:
        event["event_signals"][0]["intervals"][0]["signal_payload"] = payload
    if duration_s is not None:
        event["active_period"]["duration"] = timedelta(seconds=duration_s)
    return event


def test_a_simple_level_is_the_configured_share_due_at_the_event_start_after_its_ramp_up() -> None:
    t = read_event(_event("SIMPLE", "level", [1, 2, 1]), RULES)
    assert t is not None and t.reduce_by_pct == 25.0 and t.reduce_to_mw is None  # the strictest interval
    assert (t.start_s, t.within_s, t.hold_s) == (T0.timestamp() - 300.0, 300.0, 3600.0)
    assert t.feed is None
    assert read_event(_event("SIMPLE", "level", [0, 0]), RULES) is None  # normal operation: nothing to shed


def test_a_setpoint_is_a_target_in_the_signal_unit_or_the_configured_one_and_a_percent_offset_a_share() -> None:
    t = read_event(_event("LOAD_DISPATCH", "setpoint", [80.0, 72.5], ramp_s=None), RULES)
    assert t is not None and t.reduce_to_mw == 72.5 and t.within_s == 30.0  # no ramp-up: the configured lead
    kw = read_event(_event("LOAD_DISPATCH", "setpoint", [72_500.0], measurement={"unit": "W", "scale": "k"}), RULES)
    assert kw is not None and kw.reduce_to_mw == pytest.approx(72.5)
    pct = read_event(_event("LOAD_CONTROL", "x-loadControlPercentOffset", [-20.0, -30.0],
                            targets=[{"resource_id": "res-a"}]), RULES)
    assert pct is not None and pct.reduce_by_pct == 30.0 and pct.feed == "util-a"


@pytest.mark.parametrize(("event", "says"), [
    (_event("ELECTRICITY_PRICE", "price", [0.31]), "is not a load reduction the gateway takes"),
    (_event("LOAD_DISPATCH", "delta", [-5.0]), "is not a load reduction the gateway takes"),
    (_event("LOAD_CONTROL", "x-loadControlPercentOffset", [10.0]), "asks for no reduction"),
    (_edited(payload=2.5), "whole numbers 0-3"),  # openleadr's own VTN will not send these three;
    (_edited(duration_s=0.0), "open-ended event"),  # another VTN might
    (_edited(payload=float("nan")), "no finite payload"),
    (_event("SIMPLE", "level", [2], targets=[{"resource_id": "res-z"}]), "are not feeds of this site"),
    (_event("LOAD_DISPATCH", "setpoint", [5.0], measurement={"unit": "Wh", "scale": "k"}), "is not a power"),
])
def test_what_the_gateway_cannot_read_is_refused_naming_the_event_and_why(event: dict[str, Any], says: str) -> None:
    with pytest.raises(Refused, match="event ev-1") as e:
        read_event(event, RULES)
    assert says in str(e.value)


def test_an_event_already_under_way_is_sent_starting_now_and_held_to_its_end() -> None:
    t = read_event(_event("SIMPLE", "level", [2]), RULES)
    assert t is not None
    due = T0.timestamp()
    assert schedule(t, due - 400.0, 30.0) == (due - 300.0, 300.0, 3600.0)  # ahead: as asked
    start, lead, hold = schedule(t, due - 100.0, 30.0)  # the ramp-up has begun: due as asked still
    assert (start, lead, hold) == (due - 100.0, 100.0, 3600.0)
    start, lead, hold = schedule(t, due + 600.0, 30.0)  # past due: within the configured lead, to the event's end
    assert (start, lead) == (due + 600.0, 30.0) and start + lead + hold == pytest.approx(due + 3600.0)
    with pytest.raises(Refused, match="too late"):
        schedule(t, due + 3590.0, 30.0)


def test_the_config_file_reports_every_mistake_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "gw.toml"
    bad.write_text('[vtn]\nurl = "http://vtn.example"\nven_name = "site"\ncert_file = "nope.pem"\n'
                   '[reading]\nsimple_levels = {"4" = 50.0, "2" = 120.0}\nfeeds = {res-a = "ups-a"}\n')
    with pytest.raises(ConfigError) as e:
        load(bad, load_site(ROOT / "examples" / "lab.toml"))
    text = str(e.value)
    for line in ("vtn.url: must be an https URL", "vtn.cert_file: nope.pem: no such file", "vtn.key_file: missing",
                 "vtn.vtn_fingerprint: missing", "reading.simple_levels.4: SIMPLE levels are 1, 2 and 3",
                 "reading.simple_levels.2: a share of the load above 0 and below 100 %",
                 "reading.feeds.res-a: 'ups-a' is not a utility feed of site"):
        assert line in text, text


def test_the_sample_config_loads_against_the_lab_site(tmp_path: Path) -> None:
    text = (ROOT / "collectors" / "openadr" / "sample.toml").read_text()
    for name in ("ven.pem", "ven.key", "utility-ca.pem"):
        (tmp_path / name).write_text("-")
    text = text.replace("/etc/powerplane/openadr/", f"{tmp_path}/")
    (tmp_path / "gw.toml").write_text(text)
    cfg = load(tmp_path / "gw.toml", load_site(ROOT / "examples" / "lab.toml"))
    assert cfg.site == "lab" and cfg.rules.simple_pct == {1: 10.0, 2: 25.0, 3: 40.0}
    assert cfg.issuer == "openadr:powerplane-lab" and cfg.rules.feeds == {"utility-feed-a": "util-a"}
