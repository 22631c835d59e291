"""The Alertmanager sink on a real Alertmanager (Debian's prometheus-alertmanager) running the shipped
compose/alertmanager.yml, its webhooks pointed at a local receiver: a feed loss on pp.events pages once
when it opens and once when it resolves; a warning goes to chat instead; and on the 100 MW reference site
a feed loss pages once for itself and never for the thousand alerts it causes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from powerplane import topics
from powerplane.config import RUNBOOK_BASE_URL, Config
from powerplane.kafka import Producer, create_topics, process_auth
from powerplane.refsite import RefSiteParams, reference_site_dict, to_toml
from powerplane.schemas import Event
from powerplane.site import Site
from powerplane.site_file import load_site
from streams.sinks.alertmanager.alerts import parse_rfc3339
from streams.sinks.base import load_sink
from streams.sinks.runner import SinkStats, run
from tests.integration.conftest import ROOT, free_port

BINARY = "/usr/bin/prometheus-alertmanager"
REPOST_S = 1.0
RESOLVE_TIMEOUT_S = 4.0  # short, so an alert the sink failed to re-post would resolve during the test


class Webhook:
    """Records every notification Alertmanager sends, by path (/pager or /chat)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.got.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notes(self, site: str, path: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """(path, status, alert) for each alert of this site in each notification."""
        return [(p, a["status"], a) for p, body in list(self.got) for a in body["alerts"]
                if a["labels"].get("site") == site and (path is None or p == path)]


def _config(hook_port: int, group_wait: str = "1s", resolve_timeout_s: float = RESOLVE_TIMEOUT_S) -> dict[str, Any]:
    """The shipped example config, with its webhooks pointed here and its waits shortened."""
    config = yaml.safe_load((ROOT / "compose" / "alertmanager.yml").read_text())
    config.setdefault("global", {})["resolve_timeout"] = f"{resolve_timeout_s:.0f}s"
    stack = [config["route"]]
    while stack:
        r = stack.pop()
        for k, v in (("group_wait", group_wait), ("group_interval", "1s")):
            if k in r or r is config["route"]:  # child routes inherit what they do not set
                r[k] = v
        stack.extend(r.get("routes") or [])
    for rc in config["receivers"]:
        for w in rc.get("webhook_configs") or []:
            w["url"] = f"http://127.0.0.1:{hook_port}/{rc['name']}"
    return config


@pytest.fixture()
def alertmanager(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Webhook]]:
    """A real Alertmanager on the shipped config; indirect parametrization passes _config's arguments."""
    if not Path(BINARY).exists():
        pytest.fail(f"{BINARY} missing: apt-get install prometheus-alertmanager (`make test` does: "
                    "scripts/ensure-debian-packages)")
    hook = Webhook()
    cfg_file = tmp_path / "alertmanager.yml"
    cfg_file.write_text(yaml.safe_dump(_config(hook.port, **getattr(request, "param", {}))))
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen([BINARY, f"--config.file={cfg_file}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="],  # no HA gossip port (9094) to collide on
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ready(url), 20, f"alertmanager did not start (see {tmp_path}/alertmanager.log)")
        yield url, hook
    finally:
        proc.terminate()
        proc.wait(10)
        hook.server.shutdown()
        log.close()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout_s} s")


def _event(site: str, eid: str, kind: str, severity: str, state: str, level: str, t: float) -> Event:
    return Event(id=eid, site=site, kind=kind, severity=severity, state=state, levels=[level, "rack-01"], ts_s=t,
                 deadline_s=t + 10.0 if state == "open" else None, opened_s=t if state == "open" else t - 8,
                 summary=f"{kind} on {level}", details={"load_frac": 1.15})


def test_feed_loss_pages_once_then_resolves_once_and_warnings_go_to_chat(
        cfg: Config, alertmanager: tuple[str, Webhook]) -> None:
    url, hook = alertmanager
    site = f"amtest-{uuid.uuid4().hex[:8]}"
    from ops.demo import wait_for_groups

    create_topics(cfg.kafka_bootstrap)  # a consumer sees a topic created after it subscribed only minutes later
    sink = load_sink("alertmanager", {"kind": "alertmanager", "url": url, "repost_s": REPOST_S})
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: out.setdefault("stats", run(cfg, sink, stop, group=f"g-{site}", auth=auth)))
    th.start()
    # Publish once the sink consumes: on a fresh broker (this file run alone) the group coordinator takes a while.
    wait_for_groups(cfg, (f"g-{site}",))
    p = Producer(cfg.kafka_bootstrap, "alertmanager-test")

    def publish(*events: Event) -> None:
        for e in events:
            p.send(topics.EVENTS.name, e.encode(), key=e.id.encode())
        p.flush()

    try:
        t = time.time()
        feed = f"feed-loss-{site}"
        publish(_event(site, feed, "feed_loss", "critical", "open", "utility-A", t),
                # The detector re-publishes an open event while it lasts: still one alert.
                _event(site, feed, "feed_loss", "critical", "open", "utility-A", t + 1),
                _event(site, f"gap-{site}", "meter_gap", "warning", "open", "pdu-a01", t))
        _wait(lambda: len(hook.notes(site, "/pager")) >= 1 and len(hook.notes(site, "/chat")) >= 1, 30,
              "no firing notifications")
        # Longer than resolve_timeout: only the sink's re-posts keep the alert firing.
        time.sleep(RESOLVE_TIMEOUT_S + 3 * REPOST_S)
        pager = hook.notes(site, "/pager")
        assert [(s, a["labels"]["alertname"]) for _, s, a in pager] == [("firing", "FeedLoss")], pager
        # No per-event label: what the alert is about; the event behind it in the annotations.
        assert pager[0][2]["labels"] == {"alertname": "FeedLoss", "site": site, "level": "utility-A",
                                         "severity": "critical"}
        ann = pager[0][2]["annotations"]
        assert ann["summary"] == "feed_loss on utility-A" and ann["event_id"] == feed and ann["kind"] == "feed_loss"
        assert ann["runbook_url"] == f"{RUNBOOK_BASE_URL}#feedloss" and ann["runbook_url"].startswith("https://")
        deadline_s = parse_rfc3339(ann["deadline"])  # absolute: the first record's or the update's
        assert deadline_s is not None and t + 9.99 <= deadline_s <= t + 11.01, (ann["deadline"], t)
        chat = hook.notes(site, "/chat")
        assert [(s, a["labels"]["alertname"]) for _, s, a in chat] == [("firing", "MeterGap")], chat

        publish(_event(site, feed, "feed_loss", "critical", "resolved", "utility-A", time.time()))
        _wait(lambda: len(hook.notes(site, "/pager")) >= 2, 20, "no resolved notification")
        time.sleep(3.0)  # a few more group intervals: nothing else may arrive
        pager = hook.notes(site, "/pager")
        assert [s for _, s, _ in pager] == ["firing", "resolved"], pager
        assert [s for _, s, _ in hook.notes(site, "/chat")] == ["firing"], "the warning must still be open"
    finally:
        stop.set()
        th.join(30)
        p.close()
    assert out["stats"].dead_letters == 0


def test_a_twin_feed_loss_pages_once_and_resolves_once(cfg: Config, alertmanager: tuple[str, Webhook],
                                                       tmp_path: Path) -> None:
    """End to end: the digital twin loses feed A for 15 s; the streams worker detects it from the PDU meters;
    the Alertmanager sink turns the event into exactly one page, and one resolution when the feed is back."""

    from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
    from tests.integration.test_streams_site import Plant, site_copy

    url, hook = alertmanager
    path, site = site_copy(tmp_path, f"lab-am-{uuid.uuid4().hex[:6]}")
    scenario = tmp_path / "feed-loss.toml"
    scenario.write_text('name = "feed-a-15s"\n[[events]]\nat_s = 5\nkind = "lose_feed"\nfeed = "A"\n'
                        'duration_s = 15\n')
    c = cfg.model_copy(update={"site_file": str(path)})
    svc = Services(c, tmp_path / "logs")
    sink = load_sink("alertmanager", {"kind": "alertmanager", "url": url, "repost_s": REPOST_S, "site_file": str(path)})
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: out.setdefault("stats", run(c, sink, stop, group=f"g-{site.name}", auth=auth)))
    plant = Plant(c, site, float(int(time.time())), scenario_file=scenario, speed=1.0)  # real time: wall-clock alerts
    try:
        svc.start("streams", "streams", "worker")
        th.start()
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        plant.run(50)  # lost at 5 s, back at 20 s; the meters catch up within ~10 s, then 5 s clear
        _wait(lambda: [s for _, s, _ in hook.notes(site.name, "/pager")] == ["firing", "resolved"], 30,
              f"no firing-then-resolved page: {hook.notes(site.name, '/pager')}")
        time.sleep(3.0)  # a few more group intervals: nothing else may arrive
        svc.check()
    finally:
        stop.set()
        th.join(30)
        svc.stop()
        plant.producer.close()
    pager = hook.notes(site.name, "/pager")
    assert [(s, a["labels"]["alertname"], a["labels"]["level"]) for _, s, a in pager] == [
        ("firing", "FeedLoss", "util-a"), ("resolved", "FeedLoss", "util-a")], pager


# ---- 100 MW reference site: one page per cause ----------------------------------------------------------
REF_SPEED = 4.0  # event seconds per wall second in the replay: the shipped 10 s critical group_wait is 2.5 s
REF_LOSS_AT_S, REF_LOSS_S, REF_RUN_S = 10, 30, 60
REF_DROPOUT_RACKS = 24  # racks whose telemetry drops out during the loss: TelemetryLoss it causes


def _refsite_feed_loss_events(site: Site, tmp_path: Path) -> list[tuple[float, list[Event]]]:
    """The events the streams worker emits, per window, when the 100 MW site loses feed A (its site stage
    in process on the twin's frames, as tests/unit/test_site_stage.py runs it), with no controller shedding."""
    from sim import Twin, load_scenario
    from sim.fleet import rack_frames
    from streams.rollup import Limits, frame_outputs
    from streams.site_stage import SiteStage

    racks = ", ".join(f'"{r}"' for r in site.rack_ids[:REF_DROPOUT_RACKS])
    scenario = tmp_path / "ref-feed-loss.toml"
    scenario.write_text(f'name = "ref-feed-a"\nduration_s = {REF_RUN_S}\n'
                        f'[[events]]\nat_s = {REF_LOSS_AT_S}\nkind = "lose_feed"\nfeed = "A"\n'
                        f'duration_s = {REF_LOSS_S}\n'
                        f'[[events]]\nat_s = {REF_LOSS_AT_S + 6}\nkind = "telemetry_dropout"\nracks = [{racks}]\n'
                        'duration_s = 12\n')
    twin = Twin(site, scenario=load_scenario(scenario), seed=3, epoch_s=0.0)
    limits, stage = Limits(site), SiteStage(site)
    out: list[tuple[float, list[Event]]] = []
    for k in range(REF_RUN_S):
        fr = twin.step(1.0)
        ts = twin.epoch_s + fr.t_s
        events = [e for f in rack_frames(site, fr, ts, 1.0, k + 1, "twin")
                  for e in stage.add(frame_outputs(site, limits, f)[1]).events]
        out.append((ts, events))
    return out


def _on_wall_clock(e: Event, t0_wall: float) -> Event:
    """The event as if it happened now, REF_SPEED times faster: Alertmanager judges endsAt by its clock."""
    def wall(ts: float | None) -> float | None:
        return None if ts is None else t0_wall + ts / REF_SPEED
    return dataclasses.replace(e, ts_s=wall(e.ts_s), opened_s=wall(e.opened_s), deadline_s=wall(e.deadline_s))


def _held(url: str, site: str) -> Counter[tuple[str, str]]:
    """(alertname, state) of every alert Alertmanager holds for the site: active, suppressed (inhibited)."""
    q = urllib.parse.urlencode({"filter": f'site="{site}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{q}", timeout=10) as r:
        return Counter((a["labels"]["alertname"], a["status"]["state"]) for a in json.loads(r.read()))


def _tally(notes: list[tuple[str, str, dict[str, Any]]]) -> Counter[tuple[str, str, str]]:
    return Counter((path, status, a["labels"]["alertname"]) for path, status, a in notes)


@pytest.mark.parametrize("alertmanager", [{"group_wait": "2500ms", "resolve_timeout_s": 30.0}], indirect=True)
def test_100mw_feed_loss_pages_once_for_the_loss_and_never_for_what_it_causes(
        alertmanager: tuple[str, Webhook], tmp_path: Path) -> None:
    """Feed A lost on the 100 MW reference site: ~1,400 PDU, RPP and UPS-side overloads on feed B, UPS lineups
    going dark one by one before the feed's quorum, 24 racks' telemetry lost; through the real sink, the
    shipped config pages exactly once for FeedLoss, once more when it resolves, and nothing else."""
    url, hook = alertmanager
    site_file = tmp_path / "ref-100mw.toml"
    site_file.write_text(to_toml(reference_site_dict(RefSiteParams())))
    site = load_site(site_file)
    batches = _refsite_feed_loss_events(site, tmp_path)
    kinds = Counter(e.kind for _, evs in batches for e in evs if e.state == "open")
    assert kinds["feed_loss"] == 1 and kinds["breaker_overload"] > 500 and kinds["ups_loss"] > 0, kinds
    assert kinds["telemetry_loss"] >= REF_DROPOUT_RACKS, kinds
    sink = load_sink("am", {"kind": "alertmanager", "url": url, "repost_s": 5.0, "site_file": str(site_file)})
    t0 = time.time() + 0.5
    mid: Counter[tuple[str, str]] = Counter()
    for ts, events in batches:
        while (now := time.time()) < t0 + ts / REF_SPEED:
            sink.tick(now)
            time.sleep(0.05)
        sink.write([_on_wall_clock(e, t0) for e in events])
        sink.tick(time.time())
        if ts == REF_LOSS_AT_S + 20:  # the loss in full swing: what Alertmanager holds, and what it silences
            mid = _held(url, site.name)
    assert sink.rejected == 0  # type: ignore[attr-defined]
    assert mid[("BreakerOverload", "suppressed")] > 100 and mid[("BreakerOverload", "active")] == 0, mid
    assert mid[("TelemetryLoss", "suppressed")] >= REF_DROPOUT_RACKS and mid[("FeedLoss", "active")] == 1, mid
    _wait(lambda: [s for _, s, _ in hook.notes(site.name, "/pager")] == ["firing", "resolved"], 20,
          f"no firing-then-resolved page: {_tally(hook.notes(site.name))}")
    time.sleep(3.0)  # a few more group intervals: nothing else may arrive
    pager = hook.notes(site.name, "/pager")
    assert [(s, a["labels"]["alertname"], a["labels"]["level"]) for _, s, a in pager] == [
        ("firing", "FeedLoss", "util-a"), ("resolved", "FeedLoss", "util-a")], pager
    assert pager[0][2]["labels"]["feed"] == "util-a+util-b"
    assert hook.notes(site.name, "/chat") == [], _tally(hook.notes(site.name))
    assert len(hook.got) == 2, "one notification per page: the group holds only the FeedLoss"
