"""The twin against measured H100 power under vLLM serving: real figures and the twin's, side by side.

Rebuilds the two real cases of BRIEF.md ("Real GPU power under LLM serving": public nvidia-smi logs,
power.draw every 250 ms, H100 SXM, Llama-3 under vLLM, Poisson arrivals) on one 8-GPU H100 node in the twin
(sim/validation.py: 70B at TP4, 2 req/s; 8B on one GPU at a low rate), reads the twin's power_w every
250 ms for --seconds after a 30 s warm-up, computes every figure as it can be computed from a real log,
and prints a markdown table: real figure, twin figure, the band the test holds it to, and whether it is
within. Deterministic for a seed. --cost also times Twin.step on the 100 MW reference site (ms per
simulated second at 1 s and 250 ms steps, one core).

    .venv/bin/python bench/bench_twin_validation.py [--seconds 600] [--seed 1] [--json PATH] [--cost]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.validation import BANDS, CASES, REAL, SOURCE, band, figures, run_case  # noqa: E402

LABELS = {
    "p1_w": "per-GPU reading p1 (W)", "p50_w": "per-GPU reading p50 (W)", "p99_w": "per-GPU reading p99 (W)",
    "max_w": "per-GPU reading max (W)", "change_1s_p50_w": "1 s change p50 (W)",
    "change_1s_p99_w": "1 s change p99 (W)", "tp_corr": "TP group: pairwise correlation",
    "tp_spread": "TP group: spread of the GPUs' medians", "unused_w": "unused GPUs of the node (W)",
    "idle_w": "idle level (W)", "idle_share": "share of seconds below 150 W", "burst_p50_s": "bursts > 250 W, p50 (s)",
    "burst_p90_s": "bursts > 250 W, p90 (s)", "cv": "coefficient of variation", "ramp_up_s": "ramp idle -> peak (s)",
    "ramp_down_s": "fall peak -> idle (s)", "rise_250ms_max_w": "largest rise per 250 ms (W)",
    "glitch_70_share": "glitch readings near 70 W", "glitch_95_share": "glitch readings near 95 W",
}


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"


def _real(r: tuple[float, float]) -> str:
    return _fmt(r[0]) if r[0] == r[1] else f"{_fmt(r[0])}-{_fmt(r[1])}"


def table(all_figs: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| case | figure | real | twin | test band | within |", "|---|---|---:|---:|---:|---|"]
    for case in CASES:
        f = all_figs[case.name]
        for name, real in REAL[case.name].items():
            corr = f"{_fmt(f['tp_corr_min'])}-{_fmt(f['tp_corr_max'])}"
            twin = corr if name == "tp_corr" else _fmt(f[name])
            b = BANDS[case.name].get(name)
            if b is None:
                rng, ok = "", ""
            else:
                lo, hi = band(real, *b)
                rng, ok = f"{_fmt(lo)}-{_fmt(hi)}", "yes" if lo <= f[name] <= hi else "**no**"
            lines.append(f"| {case.name} | {LABELS[name]} | {_real(real)} | {twin} | {rng} | {ok} |")
    return lines


def cost(seconds: int = 6) -> dict[str, float]:
    """ms per simulated second of the reference site, 1 s and 250 ms steps, median of rounds of 3 s."""
    from powerplane.refsite import reference_site
    from sim import Twin

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    out = {}
    for dt in (1.0, 0.25):
        tw = Twin(reference_site(), seed=20261124)
        for _ in range(round(20 / dt)):
            tw.step(dt)
        per = []
        for _ in range(seconds):
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for _ in range(round(3 / dt)):
                tw.step(dt)
            per.append((time.perf_counter() - t0) / 3 * 1e3)
            gc.enable()
        out[f"ms_per_sim_s_dt{dt:g}"] = statistics.median(per)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="simulated seconds per case (real runs: ~10 min)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--cost", action="store_true", help="also time Twin.step on the 100 MW reference site")
    args = ap.parse_args()
    all_figs = {}
    for case in CASES:
        reads, active = run_case(case, seconds=args.seconds, seed=args.seed)
        all_figs[case.name] = figures(reads, active)
    print(f"Twin vs real H100 serving power; real figures: {SOURCE}.")
    print(f"{args.seconds:g} simulated s per case after 30 s warm-up, seed {args.seed}, readings every 250 ms.\n")
    print("\n".join(table(all_figs)))
    out: dict[str, object] = {"figures": all_figs, "seconds": args.seconds, "seed": args.seed}
    if args.cost:
        c = cost()
        out["cost"] = c
        print("\nTwin.step, 100 MW reference site: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
