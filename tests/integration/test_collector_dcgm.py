"""The `dcgm` source over real HTTP: a local server (http.server on 127.0.0.1) serves dcgm-exporter pages.

No Kafka here: these tests need only the loopback interface.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from collectors.base import SourceError, load_source
from collectors.dcgm import METRICS, DcgmSource
from collectors.scheduler import Scheduler
from powerplane.schemas import TelemetryFrame

DATA = Path(__file__).resolve().parents[1] / "data" / "dcgm"
PROM = "text/plain; version=0.0.4; charset=utf-8"


class Exporter:
    """What the fake exporter answers on each path: (status, content type, body, delay_s)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes, float]] = {}
        self.hits: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        ex = self.server.exporter
        ex.hits.append(self.path)
        status, ctype, body, delay = ex.routes.get(self.path, (404, "text/plain", b"404 page not found\n", 0.0))
        if delay:
            time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    exporter: Exporter


@pytest.fixture
def exporter() -> Iterator[tuple[Exporter, str]]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.exporter = Exporter()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv.exporter, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def dcgm(url: str, **options: object) -> DcgmSource:
    src = load_source("node17-dcgm", {"kind": "dcgm", "url": url, "site": "lab", "rack": "r02", "server": 5,
                                      **options})
    assert isinstance(src, DcgmSource)
    return src


async def read_once(src: DcgmSource) -> list[TelemetryFrame]:
    await src.start()
    try:
        return await src.read()
    finally:
        await src.close()


def page_columns(text: str) -> dict[str, list[float]]:
    """The page's values per frame field, GPU 0..7, read line by line without the source's parser."""
    cols: dict[str, dict[int, float]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, rest = line.split("{", 1)
        if name in METRICS:
            gpu = int(rest.split('gpu="', 1)[1].split('"', 1)[0])
            cols.setdefault(METRICS[name].field, {})[gpu] = float(line.rsplit(" ", 1)[1]) / METRICS[name].divisor
    return {k: [v[g] for g in sorted(v)] for k, v in cols.items()}


def test_values_equal_the_served_page(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    text = (DATA / "h100x8.txt").read_text()
    ex.routes["/metrics"] = (200, PROM, text.encode(), 0.0)
    t0 = time.time()
    [f] = asyncio.run(read_once(dcgm(f"{base}/metrics")))
    f = TelemetryFrame.decode(f.encode())
    assert ex.hits == ["/metrics"]
    assert (f.site, f.rack, f.source) == ("lab", "r02", "node17-dcgm") and f.ts_s >= t0
    assert f.gpu_server.tolist() == [5] * 8 and f.gpu_slot.tolist() == list(range(8))
    cols = page_columns(text)
    for name in ("power_w", "limit_w", "temp_c", "sm_clock_mhz", "util"):
        np.testing.assert_allclose(getattr(f, name), cols[name], rtol=1e-6, err_msg=name)
    assert f.mem_clock_mhz is not None and f.mem_clock_mhz.tolist() == cols["mem_clock_mhz"]
    assert f.energy_j is not None and f.energy_j.tolist() == cols["energy_j"]
    assert f.throttle_reasons is not None and f.throttle_reasons.tolist() == cols["throttle_reasons"]


def test_older_exporter_blanks_are_nan_over_http(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    ex.routes["/metrics"] = (200, PROM, (DATA / "older_exporter_blanks.txt").read_bytes(), 0.0)
    [f] = asyncio.run(read_once(dcgm(f"{base}/metrics")))
    assert f.power_w[0] == pytest.approx(287.312) and math.isnan(f.power_w[1])
    assert np.isnan(f.limit_w).all() and f.throttle_reasons is None


def test_http_500_is_a_source_error(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    ex.routes["/metrics"] = (500, "text/plain", b"failed to collect metrics: DCGM error\n", 0.0)
    with pytest.raises(SourceError, match=rf"^HTTP 500 Internal Server Error from {base}/metrics$"):
        asyncio.run(read_once(dcgm(f"{base}/metrics")))


def test_a_garbage_page_is_a_source_error(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    ex.routes["/metrics"] = (200, "text/html", (DATA / "garbage.html").read_bytes(), 0.0)
    ex.routes["/binary"] = (200, PROM, b"\xff\xfe\x00garbage", 0.0)
    ex.routes["/broken"] = (200, PROM, b'DCGM_FI_DEV_POWER_USAGE{gpu="0" 300\n', 0.0)
    with pytest.raises(SourceError, match="not a Prometheus text page"):
        asyncio.run(read_once(dcgm(f"{base}/metrics")))
    with pytest.raises(SourceError, match="not UTF-8 text"):
        asyncio.run(read_once(dcgm(f"{base}/binary")))
    with pytest.raises(SourceError, match="not a Prometheus text page"):
        asyncio.run(read_once(dcgm(f"{base}/broken")))


def test_wrong_path_and_nothing_listening_are_source_errors(exporter: tuple[Exporter, str]) -> None:
    _, base = exporter
    with pytest.raises(SourceError, match="HTTP 404"):
        asyncio.run(read_once(dcgm(f"{base}/nope")))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=f"cannot scrape http://127.0.0.1:{port}/metrics: ClientConnectorError"):
        asyncio.run(read_once(dcgm(f"http://127.0.0.1:{port}/metrics")))


def test_a_slow_exporter_times_out(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    ex.routes["/metrics"] = (200, PROM, (DATA / "h100x8.txt").read_bytes(), 1.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(read_once(dcgm(f"{base}/metrics", timeout_s=0.2)))
    assert time.monotonic() - t0 < 3.0  # gives up, does not hang


def test_under_the_scheduler(exporter: tuple[Exporter, str]) -> None:
    ex, base = exporter
    ex.routes["/metrics"] = (200, PROM, (DATA / "h100x8.txt").read_bytes(), 0.0)
    src = dcgm(f"{base}/metrics", interval_s=0.1)
    frames: list[TelemetryFrame] = []
    sched = Scheduler([src], frames.extend, seed=1)
    asyncio.run(sched.run(threading.Event(), duration_s=0.6))
    st = sched.status["node17-dcgm"]
    assert st.state == "ok" and st.errors == 0 and st.ok >= 3
    assert len(frames) == st.ok and [f.seq for f in frames] == list(range(1, st.ok + 1))
    assert len(ex.hits) == st.ok
