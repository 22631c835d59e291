"""The live dashboard on the real broker, in Debian's headless chromium (issue 6, "Live dashboard").

1. Lab site, the real pipeline: the fleet publishes telemetry, the streams worker rolls it up, the
   controller caps after a feed loss and the fleet's actuator acknowledges. The page loads with no
   console errors, its numbers change as telemetry flows, the feed loss and the caps show up, and an
   emergency published on pp.events is on the page within 2 s.
2. The 100 MW reference site (1,024 racks, every level kind): a full tree of aggregates and headroom
   each second; the page keeps drawing a frame in well under a second.

Screenshots go to $PP_ARTIFACTS (default .powerplane/artifacts/).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import urllib.request
from pathlib import Path

from ops.demo import GROUPS, Services, wait_for_groups
from powerplane.config import Config
from powerplane.kafka import Producer, create_topics
from powerplane.refsite import RefSiteParams, reference_site_dict, to_toml
from powerplane.signing import load_keyring
from powerplane.site_file import load_site
from tests.dashboard_synth import emergency, frames
from tests.integration.cdp import Chromium
from tests.integration.conftest import ROOT, free_port

ARTIFACTS = Path(os.environ.get("PP_ARTIFACTS", str(ROOT / ".powerplane" / "artifacts")))


def _wait_http(url: str, svc: Services, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        svc.check()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout_s:.0f} s")
        time.sleep(0.3)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


# The load cell of one PDU row in the power tree, as the user reads it.
PDU_LOAD_JS = """(() => { const tr = document.querySelector('#tree tr[data-id="pdu-b03"]');
  return tr ? tr.children[3].textContent : null; })()"""


async def _browse_lab(port: int, cfg: Config, site_name: str, svc: Services) -> dict[str, float]:
    out: dict[str, float] = {}
    async with Chromium(free_port(), width=1600, height=900) as b:
        await b.navigate(f"http://127.0.0.1:{port}/")
        await b.wait_for("window.__pp && window.__pp.messages >= 1", 20)
        # Telemetry flows: the PDU's load is on the page, and it changes.
        first = await b.wait_for(PDU_LOAD_JS + " && " + PDU_LOAD_JS + " !== '\\u2013' && " + PDU_LOAD_JS, 60)
        await b.wait_for(f"{PDU_LOAD_JS} !== {first!r}", 15)
        await b.wait_for("+document.getElementById('rate').textContent > 0", 10)
        assert await b.eval("S.racks.length") == 8
        await b.wait_for("document.getElementById('heatinfo').textContent.includes('8 racks')", 5)
        # The feed loss (the streams worker's mode) and the controller's caps, acknowledged.
        await b.wait_for("document.getElementById('feedstate').textContent.includes('A-lost')", 40)
        await b.wait_for("document.querySelectorAll('#caps tbody tr td.lvl').length > 0", 30)
        assert "power_cap" in await b.eval("document.getElementById('log').textContent")
        # An emergency published on pp.events is on the page within 2 s.
        prod = Producer(cfg.kafka_bootstrap, "test-dashboard")
        cell = "document.querySelector('#tree tr[data-id=\"pdu-b03\"] td:last-child').textContent"
        topic, key, value, _ts = emergency(load_site(cfg.site_file), "pdu-b03", time.time(), deadline_in_s=42.0)
        t_pub = time.monotonic()
        prod.send(topic, value, key=key)
        prod.flush()
        await b.wait_for("document.getElementById('emerg').textContent.includes('breaker trips in ~42 s')", 2.0,
                         poll_s=0.05)
        out["emergency_s"] = time.monotonic() - t_pub
        prod.close()
        deadline_txt = await b.eval("document.querySelector('#emerg .dl').textContent")
        # A countdown, or the shedding the controller did since it opened, acknowledged (issue 15).
        assert re.fullmatch(r"T-\d+(\.\d)? s|shed acked \d\d:\d\d:\d\d", deadline_txt), deadline_txt
        # The level's row counts it. Not `before + 1`: the calibrated twin overloads pdu-b03 during the feed loss,
        # and the worker's own emergency on it may resolve (the caps took) in the same second ours opens.
        await b.wait_for(f"+({cell} || 0) >= 1", 2.0, poll_s=0.05)
        await asyncio.sleep(1.5)  # one more tick so the screenshot shows the chart moving
        await b.screenshot(ARTIFACTS / "dashboard-lab.png")
        out["max_draw_ms"] = float(await b.eval("window.__pp.maxDrawMs"))
        assert b.errors == [], b.errors
    return out


def test_dashboard_shows_the_live_loop_and_an_emergency_within_2_s(cfg: Config, tmp_path: Path) -> None:
    create_topics(cfg.kafka_bootstrap)
    load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True)
    svc = Services(cfg, tmp_path / "logs")
    port = free_port()
    try:
        svc.start("dashboard", "dashboard", "--port", str(port), "--backfill", "0")  # other tests share the broker
        svc.start("streams", "streams", "worker")
        svc.start("controller", "controller")
        _wait_http(f"http://127.0.0.1:{port}/api/snapshot", svc)
        wait_for_groups(cfg, GROUPS[:3], check=svc.check)
        svc.start("fleet", "fleet", "--duration", "90", "--lose-feed", "A", "--at", "8")
        res = asyncio.run(_browse_lab(port, cfg, "lab", svc))
        assert res["emergency_s"] < 2.0
        m = _metrics(port)
        assert re.search(r'powerplane_dashboard_records_total\{topic="pp.aggregates"\} [1-9]', m), m
        assert re.search(r'powerplane_dashboard_records_total\{topic="pp.acks"\} [1-9]', m)
        assert re.search(r'powerplane_dashboard_consumer_lag_records\{topic="pp.aggregates"\} \d', m), m
        assert re.search(r"powerplane_dashboard_clients \d", m), m
        svc.check()
    finally:
        svc.stop()


def test_dashboard_stays_responsive_with_1024_racks(cfg: Config, tmp_path: Path) -> None:
    create_topics(cfg.kafka_bootstrap)
    site_file = tmp_path / "refsite.toml"
    site_file.write_text(to_toml(reference_site_dict(RefSiteParams())))
    site = load_site(site_file)
    assert site.n_racks == 1024
    ref_cfg = cfg.model_copy(update={"site_file": str(site_file)})
    svc = Services(ref_cfg, tmp_path / "logs")
    port = free_port()
    stop = threading.Event()

    def publish() -> None:  # the full tree once a second, as the streams worker will
        prod = Producer(cfg.kafka_bootstrap, "test-dashboard-ref")
        t0 = time.time()
        for k, recs in enumerate(frames(site, 600, t0 - 60)):
            if k == 75:
                recs.append(emergency(site, "ups-a-h1-03", t0 - 60 + k, deadline_in_s=30.0))
            for t, key, val, ts in recs:
                prod.send(t, val, key=key, timestamp_ms=ts)
            if k >= 60 and stop.wait(max(0.0, t0 + (k - 59) - time.time())):  # 60 s of history, then 1 Hz
                break
        prod.close()

    pub = threading.Thread(target=publish, daemon=True)
    try:
        svc.start("dashboard", "dashboard", "--port", str(port), "--backfill", "0")  # other tests share the broker
        _wait_http(f"http://127.0.0.1:{port}/api/snapshot", svc)
        pub.start()

        async def browse() -> tuple[float, int]:
            async with Chromium(free_port(), width=1600, height=860) as b:
                await b.navigate(f"http://127.0.0.1:{port}/")
                await b.wait_for("S.vals.size >= 3000 && window.__pp.messages >= 3", 90)
                await b.wait_for("document.getElementById('emerg').textContent.includes('ups-a-h1-03')", 60)
                n0 = int(await b.eval("window.__pp.messages"))
                await b.eval("window.__pp.maxDrawMs = 0")
                await asyncio.sleep(6)
                msgs = int(await b.eval("window.__pp.messages")) - n0
                draw = float(await b.eval("window.__pp.maxDrawMs"))
                assert await b.eval("S.racks.length") == 1024
                await b.screenshot(ARTIFACTS / "dashboard-refsite.png")
                assert b.errors == [], b.errors
                return draw, msgs

        draw_ms, msgs = asyncio.run(browse())
        # ~1 Hz deltas keep arriving and each is drawn (heat map, tree, chart) far inside a frame budget
        # that keeps the page interactive.
        assert msgs >= 4, f"only {msgs} messages in 6 s"
        assert draw_ms < 250, f"a draw took {draw_ms:.0f} ms with 1,024 racks"
        (ARTIFACTS / "dashboard-refsite.txt").write_text(f"max draw {draw_ms:.1f} ms over {msgs} messages\n")
        svc.check()
    finally:
        stop.set()
        pub.join(30)
        svc.stop()
