"""Digital twin benchmark: simulated seconds of the 100 MW reference site per wall-clock second, one core.

Builds the reference site (powerplane/refsite.py: 1,024 NVL72-class racks, 73,728 GPUs) with the default
workload (sim.default_workload: inference pools replaying the Azure LLM trace 2023, CC-BY 4.0,
Patel et al., "Splitwise", ISCA 2024; training and fine-tuning jobs), warms every candidate up, then times
them in interleaved rounds:

  (a) step1       Twin.step(1.0): one call per simulated second (the collectors' 1 s interval) - the target
  (b) step100ms   ten Twin.step(0.1) calls per simulated second (a 100 ms control loop, DCGM's fastest rate)
  (c) 70b-step1   as (a) with every pool serving llama3-70b instead of llama3-405b: ~4x the requests/s

Each round times every candidate once over --seconds simulated seconds, in a rotated order, so slow phases
of a shared machine hit all of them; the garbage collector is off inside timed regions (as in timeit); the
process pins itself to one CPU. Reported per simulated second: median and min over rounds.

Target (from the issue): one simulated second of the reference site in < 20 ms on one core (>= 50x real
time). This is a benchmark, not a test: it exits 1 with a "TARGET MISSED" line if (a)'s median misses it.
--profile prints where (a)'s time goes (cProfile, by function).

    .venv/bin/python bench/bench_twin.py [--repeat 9] [--seconds 5] [--warmup 30] [--json PATH] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from powerplane.refsite import reference_site  # noqa: E402
from sim import Twin, default_workload  # noqa: E402

TARGET_MS = 20.0
SEED = 20261124


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build(kind: str) -> Twin:
    site = reference_site()
    wl = default_workload(site)
    if kind == "70b":
        from sim.serving import MODELS, ServingConfig, estimate_capacity_rps
        from sim.workload import PoolSpec

        tr = wl.resolved_trace()
        spec = Twin(site, wl, seed=SEED).hw.specs[0]
        m = MODELS["llama3-70b"]
        pools: list[PoolSpec] = []
        for p in wl.pools:
            old = estimate_capacity_rps(MODELS[p.model], spec, p.tp, p.chunk_tokens, p.max_batch,
                                        float(tr.prompt.mean()), float(tr.output.mean()), ServingConfig())
            new = estimate_capacity_rps(m, spec, p.tp, p.chunk_tokens, p.max_batch, float(tr.prompt.mean()),
                                        float(tr.output.mean()), ServingConfig())
            pools.append(dataclasses.replace(p, model=m.name, rate_scale=round(p.rate_scale * new / old, 3)))
        wl = dataclasses.replace(wl, pools=tuple(pools))
    return Twin(site, wl, seed=SEED)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9, help="interleaved rounds")
    ap.add_argument("--seconds", type=int, default=5, help="simulated seconds per candidate per round")
    ap.add_argument("--warmup", type=int, default=30, help="simulated seconds before timing (batches fill)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--profile", action="store_true", help="profile (a) afterwards, by function")
    args = ap.parse_args()

    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    t_build = time.perf_counter()
    twins = {"step1": build("405b"), "step100ms": build("405b"), "70b-step1": build("70b")}
    t_build = time.perf_counter() - t_build
    calls: dict[str, Callable[[Twin], Any]] = {
        "step1": lambda tw: tw.step(1.0),
        "step100ms": lambda tw: [tw.step(0.1) for _ in range(10)][-1],
        "70b-step1": lambda tw: tw.step(1.0),
    }
    info: dict[str, dict[str, float]] = {}
    for name, tw in twins.items():
        for _ in range(args.warmup):
            calls[name](tw)
        fr = calls[name](tw)
        info[name] = {"requests_per_s": float(fr.pools.arrivals.sum() / (0.1 if name == "step100ms" else 1.0)),
                      "site_mw": fr.site_power_w / 1e6, "instances": float(tw.n_inst)}
    names = list(twins)
    per_s: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            tw, call = twins[name], calls[name]
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for _ in range(args.seconds):
                call(tw)
            dt = time.perf_counter() - t0
            gc.enable()
            per_s[name].append(dt / args.seconds * 1e3)

    site = twins["step1"].site
    print(f"Digital twin, 100 MW reference site: {site.n_racks} racks, {site.n_gpus:,} GPUs; "
          f"{int(info['step1']['instances']):,} inference instances, "
          f"{len(twins['step1'].workload.jobs)} training jobs.")
    print(f"Machine: {os.cpu_count()} cores ({_cpu_model()}), pinned to CPU {cpu}; Python "
          f"{platform.python_version()}, numpy {np.__version__}. Build of 3 twins: {t_build:.2f} s.")
    print(f"{args.repeat} interleaved rounds x {args.seconds} simulated s per candidate, after {args.warmup} s "
          f"warm-up.\n")
    print("| candidate | requests/s | site MW | ms per simulated s, median | min | x real time (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    out: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "cpu": _cpu_model(), "pinned": cpu,
                                       "python": platform.python_version(), "numpy": np.__version__},
                           "args": vars(args) | {"json": str(args.json) if args.json else None},
                           "site": {"racks": site.n_racks, "gpus": site.n_gpus}, "candidates": {}}
    for name in names:
        med, mn = statistics.median(per_s[name]), min(per_s[name])
        print(f"| {name} | {info[name]['requests_per_s']:,.0f} | {info[name]['site_mw']:.1f} | {med:.2f} | "
              f"{mn:.2f} | {1000.0 / med:.0f}x |")
        out["candidates"][name] = {"median_ms": med, "min_ms": mn, "all_ms": per_s[name], **info[name]}
    med = statistics.median(per_s["step1"])
    ok = med < TARGET_MS
    print(f"\n{'TARGET MET' if ok else 'TARGET MISSED'}: one simulated second of the reference site in "
          f"{med:.2f} ms median (min {min(per_s['step1']):.2f} ms) on one core; target < {TARGET_MS:.0f} ms.")
    if args.profile:
        pr = cProfile.Profile()
        tw = twins["step1"]
        pr.enable()
        for _ in range(10):
            tw.step(1.0)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(15)
        print("\nProfile of (a), 10 simulated seconds, by own time:\n" + buf.getvalue())
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
