"""How many SNMP PDUs and Redfish BMCs can one collector process poll at a 10 s interval?

Protocol peers on this machine: SNMP agents serving the real APC AP8641 recording from snmpsim-data (24
metered outlets, the most expensive PDU to poll) under one community per simulated PDU, and aiohttp
servers serving the Redfish legacy mockup on one port per simulated BMC. The SNMP agent is
bench/snmp_responder.py by default (snmpsim itself, --snmp-peer snmpsim, saturates at ~10-20 such
polls/s per process, so it would be what is measured); a check at start-up asserts that both agents
give the collector identical readings. One collector process runs
the project's real Scheduler (jitter, timeouts, bounded concurrency) over all the sources for
--intervals intervals after a warm-up interval, with a counting sink (Kafka is measured elsewhere).

Reported: polls completed vs expected, timeouts and errors, the collector's own CPU time as a
fraction of one core, and poll-duration percentiles. A device count "holds" when >= 99% of polls
succeed on time and the collector needs < 1 core (the GIL makes one core the ceiling).

    .venv/bin/python bench/bench_collectors.py [--snmp 1000] [--redfish 1000] [--intervals 3]

The simulators share this machine's 2 cores with the collector, so the figures are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_redfish import serve as serve_redfish  # noqa: E402
from bench.snmp_responder import serve as serve_snmp  # noqa: E402
from collectors.base import Source, load_source  # noqa: E402
from collectors.scheduler import Scheduler  # noqa: E402
from tests.integration.snmp_server import SnmpSim, read_recording, snmpsim_data  # noqa: E402


def check_fast_agent(text: str, work: Path, ctx: Any) -> None:
    """The fast agent must give the collector exactly what snmpsim gives it for the same recording."""
    import numpy as np

    q, stop = ctx.Queue(), ctx.Event()
    fp = ctx.Process(target=serve_snmp, args=({"ref": text}, q, stop), daemon=True)
    fp.start()
    sim = SnmpSim({"ref": text}, work / "ref").start()
    try:
        fast_port = q.get(timeout=60)

        async def read(port: int) -> Any:
            src = load_source("ref", {"kind": "snmp", "host": "127.0.0.1", "port": port, "community": "ref",
                                      "site": "bench", "rack": "r", "feed": "A", "timeout_s": 5.0})
            await src.start()
            try:
                return (await src.read())[0]
            finally:
                await src.close()

        a, b = asyncio.run(read(sim.port)), asyncio.run(read(fast_port))
        for field in ("pdu_power_w", "inlet_c", "pdu_phase_current_a", "pdu_bank_current_a", "pdu_outlet_power_w"):
            x, y = getattr(a, field), getattr(b, field)
            same = (x is None and y is None) or (x is not None and y is not None and np.array_equal(
                np.asarray(x, dtype=float), np.asarray(y, dtype=float), equal_nan=True))
            if not same:
                raise SystemExit(f"fast agent differs from snmpsim on {field}: {y} vs {x}")
        print(f"fast agent == snmpsim for AP8641: {a.pdu_power_w[0]:.0f} W, "
              f"{len(a.pdu_outlet_power_w if a.pdu_outlet_power_w is not None else [])} outlets", flush=True)
    finally:
        sim.stop()
        stop.set()
        fp.join(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snmp", type=int, default=1000)
    ap.add_argument("--redfish", type=int, default=1000)
    ap.add_argument("--intervals", type=int, default=3)
    ap.add_argument("--interval-s", type=float, default=10.0)
    ap.add_argument("--snmp-servers", type=int, default=2)
    ap.add_argument("--redfish-servers", type=int, default=2)
    ap.add_argument("--snmp-peer", choices=["fast", "snmpsim"], default="fast",
                    help="fast: bench/snmp_responder.py (default); snmpsim: the reference agent (slow)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.redfish + 1024)), hard))

    work = Path(tempfile.mkdtemp(prefix="bench-collectors-"))
    text = read_recording(snmpsim_data("UPS/apc-8641.snmprec"))
    sims: list[SnmpSim] = []
    ctx = mp.get_context("spawn")
    q, stop_ev = ctx.Queue(), ctx.Event()
    procs: list[Any] = []
    try:
        if args.snmp and args.snmp_peer == "fast":
            check_fast_agent(text, work, ctx)
        per = -(-args.snmp // max(1, args.snmp_servers))
        snmp_peers: list[tuple[int, list[str]]] = []
        fast_procs: list[Any] = []
        for k in range(args.snmp_servers if args.snmp else 0):
            comms = {f"pdu{i}": text for i in range(k * per, min(args.snmp, (k + 1) * per))}
            if not comms:
                continue
            if args.snmp_peer == "snmpsim":
                sim = SnmpSim(comms, work / f"snmp{k}", start_timeout_s=300).start()
                sims.append(sim)
                snmp_peers.append((sim.port, list(comms)))
            else:
                fp = ctx.Process(target=serve_snmp, args=(comms, q, stop_ev), daemon=True)
                fp.start()
                fast_procs.append(fp)
                snmp_peers.append((q.get(timeout=60), list(comms)))
        procs.extend(fast_procs)
        redfish_procs: list[Any] = []
        if args.redfish:
            n = args.redfish_servers
            counts = [args.redfish // n + (1 if i < args.redfish % n else 0) for i in range(n)]
            redfish_procs = [ctx.Process(target=serve_redfish, args=(c, q, stop_ev), daemon=True) for c in counts]
            for p in redfish_procs:
                p.start()
            procs.extend(redfish_procs)
        ports = [port for _ in redfish_procs for port in q.get(timeout=120)]
        sources: list[Source] = []
        for snmp_port, comms in snmp_peers:
            for c in comms:
                sources.append(load_source(c, {"kind": "snmp", "host": "127.0.0.1", "port": snmp_port, "community": c,
                                               "site": "bench", "rack": c, "feed": "A",
                                               "interval_s": args.interval_s, "timeout_s": 5.0}))
        for i, port in enumerate(ports):
            sources.append(load_source(f"bmc{i}", {"kind": "redfish", "url": f"http://127.0.0.1:{port}",
                                                   "site": "bench", "rack": f"r{i // 16}", "server": i % 16,
                                                   "interval_s": args.interval_s, "timeout_s": 5.0}))
        print(f"{sum(len(c) for _, c in snmp_peers)} SNMP PDUs (AP8641 recording) on {len(snmp_peers)} "
              f"{args.snmp_peer} agent(s), {len(ports)} Redfish BMCs on {len(redfish_procs)} server(s); "
              f"interval {args.interval_s:g} s", flush=True)
        frames = [0]
        sched = Scheduler(sources, lambda fr: frames.__setitem__(0, frames[0] + len(fr)), seed=7)
        stop = threading.Event()
        warm = args.interval_s  # first interval: starts and discovery, not measured
        measure = args.intervals * args.interval_s

        async def run() -> tuple[float, float, dict[str, tuple[int, int, int]]]:
            task = asyncio.create_task(sched.run(stop))
            await asyncio.sleep(warm)
            before = {n: (st.ok, st.errors, st.timeouts) for n, st in sched.status.items()}
            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(measure)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            after = {n: (st.ok - before[n][0], st.errors - before[n][1], st.timeouts - before[n][2])
                     for n, st in sched.status.items()}
            stop.set()
            await task
            return cpu, wall, after

        cpu, wall, delta = asyncio.run(run())
        ok = sum(d[0] for d in delta.values())
        err = sum(d[1] for d in delta.values())
        tmo = sum(d[2] for d in delta.values())
        expected = len(sources) * measure / args.interval_s
        hist = sched.metrics.duration
        print(f"measured {wall:.1f} s: polls ok {ok} of ~{expected:.0f} expected ({ok / expected:.1%}), "
              f"errors {err}, timeouts {tmo}")
        print(f"collector CPU {cpu:.1f} s over {wall:.1f} s = {cpu / wall:.2f} of one core "
              f"(simulators run in other processes)")
        for kind in ("snmp", "redfish"):
            samples = [s for m in hist.collect() for s in m.samples
                       if s.labels.get("kind") == kind and s.name.endswith("_bucket")]
            if samples:
                total = max(s.value for s in samples)
                p50 = next(float(s.labels["le"]) for s in samples if s.value >= 0.5 * total)
                p99 = next(float(s.labels["le"]) for s in samples if s.value >= 0.99 * total)
                print(f"  {kind:8s} poll duration p50 <= {p50:g} s, p99 <= {p99:g} s (histogram buckets)")
        holds = ok >= 0.99 * expected and cpu / wall < 1.0
        print(("HOLDS" if holds else "DOES NOT HOLD") + f": {len(sources)} devices at {args.interval_s:g} s")
        return 0 if holds else 1
    finally:
        for sim in sims:
            sim.stop()
        stop_ev.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


if __name__ == "__main__":
    raise SystemExit(main())
