"""compose/webhook/receiver.py, the stand-in for the pager and chat bridges: it answers Alertmanager's
webhook POSTs with 200 and logs one line per notification, refuses what is not one, and has a health URL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_receiver_logs_one_line_per_notification() -> None:
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "compose" / "webhook" / "receiver.py"), "pager=0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(re.search(r"listening on :(\d+)", proc.stdout.readline()).group(1))  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        doc = {"status": "firing", "groupLabels": {"site": "lab", "alertname": "FeedLoss"},
               "externalURL": "http://alertmanager:9093",
               "alerts": [{"labels": {"alertname": "FeedLoss", "site": "lab"}}]}
        req = urllib.request.Request(f"{base}/hook", json.dumps(doc).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        want = "pager: firing 1 alert(s) FeedLoss group {alertname=FeedLoss,site=lab} from http://alertmanager:9093"
        assert proc.stdout.readline().strip() == want
        bad = urllib.request.Request(f"{base}/hook", b"[1, 2]", {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(bad, timeout=5)
            raise AssertionError("a non-notification was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
        assert "not an Alertmanager notification" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)
