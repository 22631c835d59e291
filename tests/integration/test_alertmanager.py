"""The Alertmanager sink on a real Alertmanager (Debian's prometheus-alertmanager) running the shipped
compose/alertmanager.yml, its webhooks pointed at a local receiver: a feed loss on pp.events pages once
when it opens and once when it resolves; a warning goes to chat instead."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, process_auth
from powerplane.schemas import Event
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


def _config(hook_port: int) -> dict[str, Any]:
    """The shipped example config, with its webhooks pointed here and its waits shortened."""
    config = yaml.safe_load((ROOT / "compose" / "alertmanager.yml").read_text())
    config.setdefault("global", {})["resolve_timeout"] = f"{RESOLVE_TIMEOUT_S:.0f}s"
    stack = [config["route"]]
    while stack:
        r = stack.pop()
        for k in ("group_wait", "group_interval"):
            if k in r or r is config["route"]:  # child routes inherit what they do not set
                r[k] = "1s"
        stack.extend(r.get("routes") or [])
    for rc in config["receivers"]:
        for w in rc.get("webhook_configs") or []:
            w["url"] = f"http://127.0.0.1:{hook_port}/{rc['name']}"
    return config


@pytest.fixture()
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Webhook]]:
    if not Path(BINARY).exists():
        pytest.fail(f"{BINARY} missing: apt-get install prometheus-alertmanager (.ci/run does)")
    hook = Webhook()
    cfg_file = tmp_path / "alertmanager.yml"
    cfg_file.write_text(yaml.safe_dump(_config(hook.port)))
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
    sink = load_sink("alertmanager", {"kind": "alertmanager", "url": url, "repost_s": REPOST_S})
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: out.setdefault("stats", run(cfg, sink, stop, group=f"g-{site}", auth=auth)))
    th.start()
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
        _wait(lambda: len(hook.notes(site, "/pager")) >= 1 and len(hook.notes(site, "/chat")) >= 1, 20,
              "no firing notifications")
        # Longer than resolve_timeout: only the sink's re-posts keep the alert firing.
        time.sleep(RESOLVE_TIMEOUT_S + 3 * REPOST_S)
        pager = hook.notes(site, "/pager")
        assert [(s, a["labels"]["alertname"]) for _, s, a in pager] == [("firing", "feed_loss")], pager
        labels = pager[0][2]["labels"]
        assert {k: labels[k] for k in ("site", "level", "kind", "severity")} == {
            "site": site, "level": "utility-A", "kind": "feed_loss", "severity": "critical"}
        ann = pager[0][2]["annotations"]
        assert ann["summary"] == "feed_loss on utility-A" and ann["runbook_url"].endswith("runbooks.md#feed_loss")
        assert "deadline" in ann
        chat = hook.notes(site, "/chat")
        assert [(s, a["labels"]["alertname"]) for _, s, a in chat] == [("firing", "meter_gap")], chat

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

    from ops.demo import Services, wait_for_groups
    from tests.integration.test_streams_site import Plant, site_copy

    url, hook = alertmanager
    path, site = site_copy(tmp_path, f"lab-am-{uuid.uuid4().hex[:6]}")
    scenario = tmp_path / "feed-loss.toml"
    scenario.write_text('name = "feed-a-15s"\n[[events]]\nat_s = 5\nkind = "lose_feed"\nfeed = "A"\n'
                        'duration_s = 15\n')
    c = cfg.model_copy(update={"site_file": str(path)})
    svc = Services(c, tmp_path / "logs")
    sink = load_sink("alertmanager", {"kind": "alertmanager", "url": url, "repost_s": REPOST_S})
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: out.setdefault("stats", run(c, sink, stop, group=f"g-{site.name}", auth=auth)))
    plant = Plant(c, site, float(int(time.time())), scenario_file=scenario, speed=1.0)  # real time: wall-clock alerts
    try:
        svc.start("streams", "streams", "worker")
        th.start()
        wait_for_groups(c, ("powerplane-streams",), check=svc.check)
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
        ("firing", "feed_loss", "util-a"), ("resolved", "feed_loss", "util-a")], pager
