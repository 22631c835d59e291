"""Figures of the digital twin to hold against BRIEF.md (quoted in docs/twin.md, "Checks against BRIEF.md").

Prints, deterministically (fixed seeds):
  1. H100 / llama2-70b TP8 phase power: idle bare and with a context, decode at batch 1-256, a prefill chunk's
     demand and what the 700 W limit lets it draw (BRIEF: 60-70 W / ~120 W idle; decode 137-300 W; prefill can
     exceed TDP);
  2. SM clock locked at 1.6 GHz vs free (1.98 GHz) on the lab site: a decode-heavy pool and the default
     conversation workload (Towards Greener LLMs: about the same throughput at < 80% of the energy);
  3. training swing of one job on the lab site (POLCA: 37.5% within 2 s);
  4. the reference site under the default workload for --seconds: inference power against provisioned power
     (POLCA: inference peaks at 79%) and its largest rise within 40 s (POLCA: 11.8%).

Workload: the Azure LLM inference trace 2023 (conversation), CC-BY 4.0, Patel et al., "Splitwise", ISCA 2024.

    .venv/bin/python bench/twin_figures.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from powerplane.refsite import reference_site  # noqa: E402
from powerplane.site import PRIORITIES  # noqa: E402
from powerplane.site_file import load_site  # noqa: E402
from sim import (  # noqa: E402
    JobSpec,
    PoolSpec,
    Trace,
    Twin,
    WorkloadSpec,
    default_workload,
    load_azure_conv,
)
from sim.physics import GPU_SPECS, PowerConfig, busy_power, roofline, solve_phi, static_w  # noqa: E402
from sim.serving import MODELS, ServingConfig, instance_constants  # noqa: E402


def phase_power() -> None:
    h, pc, one = GPU_SPECS["H100-SXM"], PowerConfig(), np.ones(1)
    args = (70.0 * one, h.idle_ctx_w * one, h.dyn_w * one, h.mem_w * one, pc)
    print("1. H100-SXM, llama2-70b at TP8 (per GPU)")
    print(f"   idle: bare 70 W at 345 MHz (the site file's gpu_idle_w); with a context "
          f"{static_w(one, 70.0 * one, h.idle_ctx_w * one, pc)[0]:.0f} W at 1980 MHz, "
          f"{static_w(1590 / 1980 * one, 70.0 * one, h.idle_ctx_w * one, pc)[0]:.0f} W locked at 1590 MHz")
    k = instance_constants(MODELS["llama2-70b"], h, 8, ServingConfig())
    for b in (1, 8, 32, 64, 128, 256):
        tau, uc, um = roofline(one * k.c_tok_s * b, one * (k.mem_w_s + k.mem_kv_s * b * 1300.0), one * k.overhead_s,
                               one)
        print(f"   decode batch {b:3d}: {busy_power(one, uc, um, *args)[0]:5.0f} W, {tau[0] * 1e3:5.1f} ms/token")
    c = one * k.c_tok_s * 2048
    tau, uc, um = roofline(c, one * k.mem_w_s, one * k.overhead_s, one)
    phi, _ = solve_phi(700.0 * one, c, one * k.mem_w_s, one * k.overhead_s, one, 345 / 1980 * one, *args)
    tau2, uc2, um2 = roofline(c, one * k.mem_w_s, one * k.overhead_s, phi)
    print(f"   prefill chunk of 2048 tokens: demands {busy_power(one, uc, um, *args)[0]:.0f} W at 1980 MHz; "
          f"the 700 W limit holds it at {phi[0] * 1980:.0f} MHz, {busy_power(phi, uc2, um2, *args)[0]:.0f} W, "
          f"{tau2[0] / tau[0]:.3f}x the time")


def freq_lock() -> None:
    lab = load_site(ROOT / "examples" / "lab.toml")
    n = 3600
    decode = Trace(np.arange(n, dtype=float), np.full(n, 64.0), np.full(n, 1000.0), float(n), "synthetic")
    cases = {
        "decode-heavy pool (64-token prompts, 1000-token outputs)":
            WorkloadSpec(pools=(PoolSpec(name="decode", model="llama2-70b", gpus=64, rate_scale=40.0),), trace=decode),
        "default conversation workload (Azure trace), all pools": default_workload(lab),
    }
    print("2. SM clock locked at 1600 MHz (applied 1590) vs free, lab site, 100 s after 20-30 s warm-up")
    for label, wl in cases.items():
        res = {}
        for lock in (False, True):
            tw = Twin(lab, wl, seed=12)
            if lock:
                tw.lock_clocks(np.concatenate([tw.pool_slots(p).ravel() for p in tw.pool_names()]), 1600.0)
            fr = tw.run(130)[30:]
            tok = sum(f.pools.tokens.sum() for f in fr)
            e = sum(f.pools.energy_j.sum() for f in fr)
            tt = np.concatenate([f.requests.ttft_s for f in fr])
            res[lock] = (tok / 100, e / tok, np.percentile(tt, 90))
        (t0, e0, p0), (t1, e1, p1) = res[False], res[True]
        print(f"   {label}: throughput {t1 / t0:.3f}x, energy per token {e1 / e0:.3f}x, "
              f"TTFT p90 {p0:.2f} s -> {p1:.2f} s")


def training_swing() -> None:
    lab = load_site(ROOT / "examples" / "lab.toml")
    wl = WorkloadSpec(jobs=(JobSpec(name="t", gpus=64, iter_s=6.0, compute_frac=0.7),), trace=load_azure_conv())
    tw = Twin(lab, wl, seed=21)
    frames = tw.run(60, dt_s=0.5)[4:]
    srv = np.unique(lab.gpu_server[tw.job_gpus[0]])
    p = np.array([f.server_power_w[srv].sum() for f in frames])
    g = np.array([f.gpu_power_true_w[tw.job_gpus[0]].mean() for f in frames])
    print(f"3. training job (8 servers, 6 s steps, 70% compute): servers swing {1 - p.min() / p.max():.1%} "
          f"({p.max() / 1e3:.1f} -> {p.min() / 1e3:.1f} kW) within one 0.5 s step; "
          f"GPUs {g.max():.0f} -> {g.min():.0f} W")


def reference(seconds: int) -> None:
    site = reference_site()
    tw = Twin(site, seed=1)
    inf = np.isin(site.gpu_priority, [PRIORITIES.index("inference-critical"), PRIORITIES.index("inference-batch")])
    racks = np.unique(site.gpu_rack[inf])
    prov = site.level_rated_w[site.rack_level[racks]].sum()
    gpu_max = site.gpu_max_w[inf].sum()
    site_w, inf_w, inf_gpu = [], [], []
    for _ in range(seconds):
        fr = tw.step(1.0)
        site_w.append(fr.site_power_w)
        inf_w.append(fr.rack_power_w[racks].sum())
        inf_gpu.append(fr.gpu_power_true_w[inf].sum())
    w = np.array(inf_w[60:])
    rise = max((w[i + 40] - w[i:i + 40].min()) / w[i:i + 40].min() for i in range(w.size - 40)) if w.size > 41 \
        else float("nan")
    print(f"4. reference site, default workload, {seconds} s (first 60 s dropped): "
          f"site {np.mean(site_w[60:]) / 1e6:.1f} MW mean; inference racks {w.mean() / prov:.1%} of their rack "
          f"rating on average, peak {w.max() / prov:.1%}; "
          f"inference GPUs at {np.mean(inf_gpu[60:]) / gpu_max:.1%} of their power limit; largest rise within 40 s "
          f"{rise:.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=600)
    args = ap.parse_args()
    phase_power()
    freq_lock()
    training_swing()
    reference(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
