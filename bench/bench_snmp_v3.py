"""Client CPU per poll of SNMPv3 authPriv (pysnmp: USM HMAC + AES per message) against the fast v2c path.

One snmpsim responder (another process, so its CPU is not counted) serves the AP8641 rack PDU recording
(30 OIDs per poll) and the Eaton 9PX UPS recording (8 OIDs per poll, model eaton-ups) over v2c and over
SNMPv3 (user pp, SHA-256 + AES-128). For each case, N sources of the collector poll concurrently; after one
warm-up read each (discovery), R rounds are timed with time.process_time: client CPU per poll = CPU / polls.

    PYTHONPATH=$PWD python bench/bench_snmp_v3.py [--sources 20] [--rounds 5]

snmpsim answers slowly (tens of polls a second), so the pysnmp cases include pysnmp's 0.1 s engine timer
ticking while they wait; with a fast agent their per-poll figure is a little lower, never higher.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectors.base import load_source
from collectors.snmp.source import SnmpSource
from tests.integration.snmp_server import SnmpSim, V3User, snmpsim_data

AUTH, PRIV = "bench-auth-key", "bench-priv-key"
CASES: list[tuple[str, dict[str, Any]]] = [
    ("v2c fast", {"version": "2c"}),
    ("v2c pysnmp", {"version": "2c", "codec": "pysnmp"}),
    ("v3 authPriv SHA-256/AES-128 (pysnmp)", {"version": "3", "user": "pp", "auth_protocol": "SHA-256",
                                              "priv_protocol": "AES-128", "auth_key_env": "BENCH_V3_AUTH",
                                              "priv_key_env": "BENCH_V3_PRIV"}),
]
DEVICES = {"ap8641": {"rack": "r1", "feed": "A"}, "eaton-9px": {"model": "eaton-ups", "lineup": "ups-a"}}


async def measure(sim: SnmpSim, device: str, kw: dict[str, Any], n: int, rounds: int) -> tuple[float, int]:
    extra = dict(kw)
    if kw["version"] == "3":
        extra["context"] = device
    sources: list[SnmpSource] = []
    for i in range(n):
        s = load_source(f"{device}-{i}", {"kind": "snmp", "host": sim.host, "port": sim.port, "community": device,
                                          "site": "lab", "timeout_s": 20.0, "retries": 0, **DEVICES[device],
                                          **extra})
        assert isinstance(s, SnmpSource)
        sources.append(s)
    for s in sources:
        await s.start()
    try:
        await asyncio.gather(*(s.read() for s in sources))  # discovery, not timed
        cpu0 = time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(s.read() for s in sources))
        return (time.process_time() - cpu0) / (n * rounds), n * rounds
    finally:
        for s in sources:
            await s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the table shows min-max")
    args = ap.parse_args()
    os.environ["BENCH_V3_AUTH"], os.environ["BENCH_V3_PRIV"] = AUTH, PRIV
    import importlib.util

    spec = importlib.util.find_spec("snmpsim")
    assert spec is not None and spec.origin is not None
    recs: dict[str, Path | str] = {
        "ap8641": snmpsim_data("UPS/apc-8641.snmprec"),
        "eaton-9px": Path(spec.origin).resolve().parent / "data/recorded/eaton-9PX-partial-walk.snmprec"}
    with tempfile.TemporaryDirectory() as tmp, SnmpSim(recs, Path(tmp), v3_user=V3User("pp", AUTH, PRIV)) as sim:
        print(f"| device | case | client CPU per poll (ms), {args.repeat} runs of {args.sources} sources x "
              f"{args.rounds} rounds |")
        print("|---|---|---|")
        for device in DEVICES:
            for name, kw in CASES:
                ms = [1000 * asyncio.run(measure(sim, device, kw, args.sources, args.rounds))[0]
                      for _ in range(args.repeat)]
                print(f"| {device} | {name} | {min(ms):.2f}-{max(ms):.2f} (median {statistics.median(ms):.2f}) |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
