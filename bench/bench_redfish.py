"""Redfish collector scale check: can one process poll 2,000 BMCs every 10 s?

Starts --servers processes that together serve the legacy mockup tree (tests/data/redfish/legacy:
Power + Thermal) over HTTP/1.1 with keep-alive on --bmcs ports of 127.0.0.1, one port per simulated
BMC (so the per-BMC connection limit applies as it would to real BMCs). Then one asyncio loop in this
process builds --bmcs redfish sources sharing one ClientSession, and times:

  discovery  the first read of every source at once (discovery + first sample, ~6 GETs per BMC)
  steady     --rounds further reads of every source at once (2 GETs per BMC: Power and Thermal)

all sources fired together (worse than the scheduler, which spreads them over the interval). Reported:
wall time and this process's CPU time per round. Target: a steady round well under the 10 s interval.

    .venv/bin/python bench/bench_redfish.py [--bmcs 2000] [--rounds 5] [--servers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from collectors.base import load_source
from collectors.redfish import RedfishSource

TREE = Path(__file__).resolve().parents[1] / "tests" / "data" / "redfish" / "legacy"


def serve(n_ports: int, q: Any, stop: Any) -> None:
    docs = {("/redfish/v1/" + str(p.parent.relative_to(TREE))).rstrip("/.").rstrip("/"): p.read_bytes()
            for p in TREE.rglob("index.json")}

    async def get(request: web.Request) -> web.Response:
        body = docs.get(request.path.rstrip("/"))
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", get)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = []
        for _ in range(n_ports):
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        q.put(ports)
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(main())


async def run(urls: list[str], rounds: int) -> None:
    sources = []
    for i, url in enumerate(urls):
        src = load_source(f"bmc{i}", {"kind": "redfish", "url": url, "site": "bench", "rack": f"r{i // 16:03d}",
                                      "server": i % 16, "timeout_s": 9.0})
        assert isinstance(src, RedfishSource)
        sources.append(src)
    for s in sources:
        await s.start()

    async def one_round(label: str) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(s.read() for s in sources), return_exceptions=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        bad = [r for r in results if isinstance(r, BaseException)]
        print(f"{label:10s} {len(sources)} reads  wall {wall:6.2f} s  cpu {cpu:6.2f} s  errors {len(bad)}"
              + (f"  first: {bad[0]}" if bad else ""))

    await one_round("discovery")
    for i in range(rounds):
        await one_round(f"steady {i + 1}")
    for s in sources:
        await s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bmcs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--servers", type=int, default=4)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.bmcs + 256  # the client's sockets; the servers are other processes
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    per = [args.bmcs // args.servers + (1 if i < args.bmcs % args.servers else 0) for i in range(args.servers)]
    procs = [ctx.Process(target=serve, args=(n, q, stop), daemon=True) for n in per]
    for p in procs:
        p.start()
    try:
        ports = [port for _ in procs for port in q.get(timeout=60)]
        asyncio.run(run([f"http://127.0.0.1:{p}" for p in ports], args.rounds))
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
