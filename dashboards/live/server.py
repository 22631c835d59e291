"""`powerplane dashboard`: an aiohttp server on loopback for one self-contained page (no CDN, no build
step), fed from Kafka or from a recording, pushing state deltas over server-sent events about once a
second. Prometheus metrics at /metrics.

The page is in `static/`; /events streams `snapshot` then `delta` messages (JSON, see state.py);
/api/history?level=ID is one level's forecast-vs-actual history; POST /api/replay controls a replay;
/api/shadow?seconds=S (live mode) compares the live controller's decisions with a shadow's over the last S
seconds (powerplane/shadow.py; `powerplane controller --shadow`, docs/operations.md), with the twin's estimate
of the shadow policy's effect when `--shadow-estimate FILE` names one (`powerplane shadow estimate --write`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboards.live.feed import TOPICS, LiveFeed
from dashboards.live.replay import Replayer
from dashboards.live.state import DashState
from powerplane.site import Site

log = logging.getLogger("powerplane.dashboard")
STATIC = Path(__file__).parent / "static"
CLIENT_QUEUE = 8  # messages a slow page may fall behind before it is dropped (its EventSource reconnects)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter("powerplane_dashboard_records", "Records consumed, by topic", ["topic"], registry=r)
        self.bad = Counter("powerplane_dashboard_bad_records", "Records that did not decode, by topic", ["topic"],
                           registry=r)
        self.lag = Gauge("powerplane_dashboard_consumer_lag_records", "Records behind the end of each topic", ["topic"],
                         registry=r)
        self.clients = Gauge("powerplane_dashboard_clients", "Pages connected to /events", registry=r)
        self.dropped = Counter("powerplane_dashboard_clients_dropped", "Pages dropped for falling behind", registry=r)
        self.levels = Gauge("powerplane_dashboard_levels", "Levels with values in the state", registry=r)
        self.event_age = Gauge("powerplane_dashboard_event_time_age_seconds",
                               "Wall time minus the newest event time seen (live mode)", registry=r)
        self.push_bytes = Histogram("powerplane_dashboard_push_bytes", "Size of one pushed message", registry=r,
                                    buckets=(1e3, 1e4, 1e5, 3e5, 1e6, 3e6))
        self.push_seconds = Histogram("powerplane_dashboard_push_build_seconds", "Time to build and encode one push",
                                      registry=r, buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0))

    def on_record(self, topic: str, ok: bool) -> None:
        self.records.labels(topic).inc()
        if not ok:
            self.bad.labels(topic).inc()


def _finite(x: Any) -> Any:
    """JSON has no NaN or Infinity: a number not known (no site: no maxima) is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class Dashboard:
    def __init__(self, state: DashState, *, bootstrap: str | None = None, replay_dir: str | None = None,
                 speed: float = 1.0, tick_s: float = 1.0, backfill: int | None = None,
                 shadow_estimate: str | None = None) -> None:
        self.shadow_estimate = shadow_estimate  # a `shadow estimate --write` file, re-read at each /api/shadow
        self.state = state
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.tick_s = tick_s
        self.clients: set[asyncio.Queue[str]] = set()
        self.feed: LiveFeed | None = None
        self.replayer: Replayer | None = None
        self._epoch = state.epoch
        self.bootstrap = bootstrap
        if replay_dir is not None:
            self.replayer = Replayer(replay_dir, state.apply, state.reset, self.lock, speed=speed,
                                     on_record=self.metrics.on_record)
        elif bootstrap is not None:
            self.feed = LiveFeed(bootstrap, state.apply, self.lock, on_record=self.metrics.on_record,
                                 backfill=None if backfill is None else dict.fromkeys(TOPICS, backfill))
        else:
            raise ValueError("the dashboard needs a Kafka bootstrap or a recording to replay")

    # ---- messages -------------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": "replay" if self.replayer else "live", "server_time_s": time.time()}
        if self.replayer is not None:
            out["replay"] = self.replayer.status().as_dict()
        return out

    def snapshot_json(self) -> str:
        with self.lock:
            snap = self.state.snapshot()
        return _dumps({**snap, **self._extra()})

    def _tick_message(self) -> str:
        t0 = time.perf_counter()
        with self.lock:
            if self.state.epoch != self._epoch:  # a replay seeked backwards: every page starts over
                self._epoch = self.state.epoch
                msg = self.state.snapshot()
            else:
                msg = self.state.take_delta()
            n_levels = len(self.state.values)
            clock = self.state.clock_s
        text = _dumps({**msg, **self._extra()})
        m = self.metrics
        m.push_seconds.observe(time.perf_counter() - t0)
        m.push_bytes.observe(len(text))
        m.levels.set(n_levels)
        if self.feed is not None:
            for topic, lag in self.feed.stats.lag.items():
                m.lag.labels(topic).set(lag)
            if clock == clock:  # not NaN
                m.event_age.set(time.time() - clock)
        return text

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            text = self._tick_message()
            for q in list(self.clients):
                if q.qsize() >= CLIENT_QUEUE:
                    self.clients.discard(q)  # its handler sees the sentinel and ends the response
                    self.metrics.dropped.inc()
                    q.put_nowait("")
                else:
                    q.put_nowait(text)
            self.metrics.clients.set(len(self.clients))

    # ---- handlers -------------------------------------------------------------------------------
    async def index(self, _req: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def static(self, req: web.Request) -> web.StreamResponse:
        name = req.match_info["name"]
        path = STATIC / name
        if "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def events(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(req)
        q: asyncio.Queue[str] = asyncio.Queue()
        # Register before the snapshot: a delta built meanwhile repeats some values, never loses any.
        self.clients.add(q)
        self.metrics.clients.set(len(self.clients))
        try:
            await resp.write(f"retry: 1000\ndata: {self.snapshot_json()}\n\n".encode())
            while True:
                try:
                    text = await asyncio.wait_for(q.get(), timeout=15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if not text:
                    break
                await resp.write(f"data: {text}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(q)
            self.metrics.clients.set(len(self.clients))
        return resp

    async def snapshot(self, _req: web.Request) -> web.StreamResponse:
        return web.Response(text=self.snapshot_json(), content_type="application/json")

    async def history(self, req: web.Request) -> web.StreamResponse:
        level = req.query.get("level", "")
        with self.lock:
            known = level in self.state.levels
            hist = self.state.history(level)
        if not known:
            return web.json_response({"error": f"unknown level {level!r}"}, status=404)
        return web.Response(text=_dumps({"level": level, "points": hist}), content_type="application/json")

    async def shadow(self, req: web.Request) -> web.StreamResponse:
        """Live against shadow decisions over the last `seconds` (default 600, at most a day), of the page's site
        (or `site`): a bounded read of pp.commands and pp.shadow in a thread, the page's feed untouched."""
        if self.feed is None or self.bootstrap is None:
            return web.json_response({"error": "not in live mode: the comparison reads pp.commands and pp.shadow"},
                                     status=409)
        try:
            seconds = float(req.query.get("seconds", "600"))
            if not 0 < seconds <= 86400:
                raise ValueError(seconds)
        except ValueError:
            return web.json_response({"error": "seconds: expected a number of seconds above 0, at most 86400"},
                                     status=400)
        site = self.state.site
        name = req.query.get("site") or (site.name if site is not None else None)
        doc = await asyncio.to_thread(self._shadow_doc, self.bootstrap, seconds, name)
        return web.Response(text=_dumps(_finite(doc)), content_type="application/json")

    def _shadow_doc(self, bootstrap: str, seconds: float, site_name: str | None) -> dict[str, Any]:
        from powerplane import shadow, topics
        from powerplane.kafka import read_window

        end = time.time()
        start = end - seconds
        live, _ = shadow.decode_commands(read_window(bootstrap, topics.COMMANDS.name, start, end, 20.0), site_name)
        shad, _ = shadow.decode_commands(read_window(bootstrap, topics.SHADOW.name, start, end, 20.0), site_name)
        return {"start_s": start, "end_s": end, "site": site_name,
                **shadow.report(live, shad, shadow.site_gpu_max_w(self.state.site)),
                "estimate": load_estimate(self.shadow_estimate) if self.shadow_estimate else None}

    async def replay_control(self, req: web.Request) -> web.StreamResponse:
        if self.replayer is None:
            return web.json_response({"error": "not in replay mode (start with --replay DIR)"}, status=409)
        try:
            body = await req.json()
            action = body.get("action")
            if action == "seek":
                self.replayer.seek(float(body["t_ms"]))
            elif action in ("play", "pause"):
                self.replayer.play(action == "play")
            elif action == "speed":
                self.replayer.set_speed(float(body["speed"]))
            else:
                raise ValueError(f"unknown action {action!r} (seek, play, pause, speed)")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return web.json_response({"error": f"bad replay request: {e}"}, status=400)
        return web.json_response(self.replayer.status().as_dict())

    async def metrics_handler(self, _req: web.Request) -> web.StreamResponse:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/snapshot", self.snapshot)
        app.router.add_get("/api/history", self.history)
        app.router.add_post("/api/replay", self.replay_control)
        app.router.add_get("/api/shadow", self.shadow)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    # ---- running --------------------------------------------------------------------------------
    async def serve(self, host: str, port: int, stop: threading.Event,
                    started: threading.Event | None = None) -> None:
        if self.feed is not None:
            await asyncio.to_thread(self.feed.open)  # a missing broker fails here, in one line
            self.feed.start()
        if self.replayer is not None:
            self.replayer.start()
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        ticker = asyncio.create_task(self._ticker())
        log.info("dashboard: http://%s:%d/ (%s)", host, port,
                 f"replaying {self.replayer.rec_dir}" if self.replayer else "live from Kafka")
        if started is not None:
            started.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            ticker.cancel()
            for q in list(self.clients):
                q.put_nowait("")
            await runner.cleanup()
            if self.feed is not None:
                await asyncio.to_thread(self.feed.close)
            if self.replayer is not None:
                await asyncio.to_thread(self.replayer.close)


def load_estimate(path: str) -> dict[str, Any]:
    """The twin's estimate the panel shows (ops/shadow_estimate.py writes it whole, then renames it): the
    document, or {"error": one line} when the file is missing or is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return {"error": f"{path}: no estimate to show ({getattr(e, 'strerror', None) or e})"}
    if not isinstance(doc, dict) or doc.get("kind") != "twin estimate" or not {"live", "shadow", "change"} <= set(doc):
        return {"error": f"{path}: not a `powerplane shadow estimate --write` file"}
    return doc


def run(site: Site | None, *, port: int, stop: threading.Event, bootstrap: str | None = None,
        replay_dir: str | None = None, speed: float = 1.0, host: str = "127.0.0.1",
        backfill: int | None = None, metrics_addr: tuple[str, int] | None = None,
        shadow_estimate: str | None = None) -> None:
    """Serve the page on host:port until `stop`; /metrics there, and on `metrics_addr` too when given (a
    scrape address apart from the page's, as the other services have)."""
    dash = Dashboard(DashState(site=site), bootstrap=bootstrap, replay_dir=replay_dir, speed=speed,
                     backfill=backfill, shadow_estimate=shadow_estimate)
    if metrics_addr is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_addr[1], addr=metrics_addr[0], registry=dash.metrics.registry)
    asyncio.run(dash.serve(host, port, stop))
