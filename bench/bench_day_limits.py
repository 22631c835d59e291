"""What limits the day-long evaluation's saving (issue 14, docs/performance.md): three measurements on the day
trace of `powerplane evaluate --day --site-slice 1` (the Azure LLM inference trace 2023, conversation,
CC-BY 4.0, Patel et al., Splitwise, ISCA 2024, under sim/diurnal.py's envelope), one row of the reference site.

1. reserve: the critical pools' burst reserve (controllers.burst, default settings) fed a real day of one
   critical pool's arrivals (its rate x Poisson), per hour from each even hour: mean rate, the hour's own p99
   of the 30 s rate, the reserve's mean. Does the reserve follow the envelope down?
2. misses: which critical requests miss the relative TTFT SLO on one instance at the peak's per-instance rate
   (TP8: the baseline's 13 instances per pool; TP16: the full policy's 6), by prompt length.
3. bound: the inference pools' energy over the day modelled from the measured serving profile: the baseline
   (13 TP8 instances per pool at max clock), the full policy's planned instances (TP16, capacity for 1.15 x
   the hour's highest 30 s rate, x 1.1 more for batch pools) and an oracle serving each 30 s rate with exactly
   the TP16 instances its capacity needs (no reserve, no margin), at max clock, and again with the cheapest
   clock of the profile chosen each second.

    .venv/bin/python bench/bench_day_limits.py
"""

from __future__ import annotations

import numpy as np

import sim.profiling as sp
from controllers.burst import BurstMemory
from ops.day import day_workload, site_slice
from powerplane.serving_profile import class_key
from sim.diurnal import Envelope, diurnal_trace
from sim.engine import Twin
from sim.serving import instance_constants
from sim.slo import isolated_ttft_s, ttft_slo_s
from sim.trace import rate_table
from sim.trace_files import default_trace

DAY = 86_400


def _setup():  # type: ignore[no-untyped-def]
    site, _ = site_slice(1)
    tr = diurnal_trace(default_trace(), Envelope(), seed=0)
    wl = day_workload(site, tr)
    table = rate_table(wl.resolved_trace(), wl.rate_window_s)
    sec = np.arange(DAY)
    rates = {p.name: table.rate[np.minimum(np.mod(sec + p.shift_s, table.period_s).astype(int),
                                           table.rate.size - 1)] * p.rate_scale
             for p in wl.pools if p.priority.startswith("inference")}
    return site, tr, wl, rates


def reserve(rates: dict[str, np.ndarray]) -> None:
    lam = rates["critical-1"]
    arr = np.random.default_rng(0).poisson(lam).astype(float)
    m = BurstMemory(1)
    m.seed(lam[None, -3600:])
    res = np.zeros(DAY)
    for t in range(DAY):
        m.add(arr[t:t + 1])
        res[t] = m.reserve_rps()[0]
    print("1. reserve (critical-1, req/s): hour | mean rate | p99 of the 30 s rate | reserve mean")
    for h in range(0, 24, 2):
        i = slice(h * 3600, (h + 1) * 3600)
        p99 = np.quantile(np.convolve(arr[i], np.ones(30) / 30, "valid"), 0.99)
        print(f"   {h:02d}:00 | {lam[i].mean():5.1f} | {p99:5.1f} | {res[i].mean():5.1f}")


def misses(site, tr, wl) -> None:  # type: ignore[no-untyped-def]
    twin = Twin(site, wl)
    crit = sp.classes_of(twin)[:1]  # the first pool's class: critical-1
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    step = sp.step_serving

    def spy(tab, pending, arr, t0, *a):  # type: ignore[no-untyped-def]
        res, p = step(tab, pending, arr, t0, *a)
        if t0 >= 40:
            rq = res.requests
            seen.append((rq.pool.copy(), rq.prompt_tokens.copy(), rq.ttft_s.copy()))
        return res, p

    sp.step_serving = spy
    dbg: dict[str, np.ndarray] = {}
    try:
        sp.measure_profile(crit, trace=tr, slo=twin.pools[0].slo, debug=dbg, freq_rel=(1.0,))
    finally:
        sp.step_serving = step
    pool, prompt, ttft = (np.concatenate([s[j] for s in seen]) for j in range(3))
    rates, n = dbg["rate"], dbg["rate"].size // 2
    print("2. misses of the relative TTFT SLO, one critical instance at max clock (replicas pooled):")
    for ti, (tp, want) in enumerate(((8, 5.7), (16, 12.4))):
        k = instance_constants(crit[0].model, crit[0].gpu, tp, twin.cfg.serving)
        slo = ttft_slo_s(twin.pools[0].slo, np.full(prompt.size, 0.4),
                         isolated_ttft_s(prompt, k.c_tok_s, k.mem_w_s, k.overhead_s, 2048.0))
        row = ti * n + int(np.argmin(np.abs(rates[ti * n:(ti + 1) * n] - want)))
        sel = pool // 4 == row
        miss = sel & (ttft > slo)
        print(f"   TP{tp} at {rates[row]:.1f} req/s: {miss.sum() / max(sel.sum(), 1):.2%} miss; of the misses "
              f"{np.mean(prompt[miss] <= 1024):.0%} have prompts <= 1k tokens, {np.mean(slo[miss] <= 0.2501):.0%} "
              f"the 0.25 s floor as SLO; median TTFT {np.median(ttft[miss]):.2f} s against "
              f"{np.median(slo[miss]):.2f} s")
        for lo, hi in ((0, 512), (512, 2048), (2048, 8192)):
            b = sel & (prompt > lo) & (prompt <= hi)
            share = float(np.mean(ttft[b] > slo[b])) if b.any() else 0.0
            print(f"     prompt ({lo}, {hi}]: {b.sum()} requests, {share:.2%} miss")


def bound(site, wl, rates: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    twin = Twin(site, wl)
    prof, _ = sp.profile_for(twin)
    tot = {"baseline": 0.0, "planned": 0.0, "oracle": 0.0, "oracle+clocks": 0.0}
    print("3. modelled inference energy over the day (kWh): pool | baseline | planned | oracle | oracle with "
          "clocks | planned hours at all 6 TP16 instances")
    for p, pool in zip(wl.pools, twin.pools, strict=True):
        if p.name not in rates:
            continue
        k = prof.class_index(class_key(p.model, pool.gpu.model, p.ttft_slo_s, p.tbt_slo_s, p.max_batch,
                                       p.chunk_tokens))
        lam = rates[p.name]
        gpus = pool.gpus.size

        def power(t: int, n: np.ndarray | float, k: int = k, lam: np.ndarray = lam, gpus: int = gpus,
                  f: int = 0) -> np.ndarray:
            cap = n * prof.cap_rps[k, t, f]
            frac = np.minimum(lam / np.maximum(cap, 1e-9), 1.0)
            at = prof.power_at(np.full(lam.size, k), np.full(lam.size, t), np.full(lam.size, f), frac)
            return np.asarray(n * at + (gpus - n * int(prof.tp[t])) * prof.bare_w[k])

        def oracle_clocks(t: int, k: int = k, lam: np.ndarray = lam, gpus: int = gpus) -> np.ndarray:
            # Each second the cheapest of the profile's clocks, each with exactly the instances it needs
            # (a clock whose whole pool cannot carry the rate is out for that second).
            best = np.full(lam.size, np.inf)
            for f in range(prof.freq_mhz.shape[1]):
                if prof.cap_rps[k, t, f] <= 0:
                    continue
                n = np.ceil(lam / prof.cap_rps[k, t, f])
                ok = n <= gpus // int(prof.tp[t])
                best = np.where(ok, np.minimum(best, power(t, n, f=f)), best)
            return np.where(np.isfinite(best), best, power(t, float(gpus // int(prof.tp[t]))))

        t8, t16 = list(prof.tp).index(8), list(prof.tp).index(16)
        n_max = gpus // 16
        hour_max = np.array([lam[max(0, i - 3600):i + 1].max() for i in range(0, DAY, 60)]).repeat(60)
        need = 1.15 * hour_max * (1.0 if p.priority == "inference-critical" else 1.1)
        n_plan = np.minimum(np.ceil(need / prof.cap_rps[k, t16, 0]), n_max)
        n_oracle = np.minimum(np.ceil(lam / prof.cap_rps[k, t16, 0]), n_max)
        e = {"baseline": power(t8, float(gpus // 8)), "planned": power(t16, n_plan), "oracle": power(t16, n_oracle),
             "oracle+clocks": oracle_clocks(t16)}
        for name, v in e.items():
            tot[name] += float(v.sum()) / 3.6e6
        print(f"   {p.name} | " + " | ".join(f"{float(v.sum()) / 3.6e6:.0f}" for v in e.values())
              + f" | {(n_plan >= n_max).sum() / 3600:.1f}")
    print("   all | " + " | ".join(f"{v:.0f}" for v in tot.values()) + f" | saving planned "
          f"{1 - tot['planned'] / tot['baseline']:.1%}, oracle {1 - tot['oracle'] / tot['baseline']:.1%}, oracle "
          f"with clocks {1 - tot['oracle+clocks'] / tot['baseline']:.1%}")
    k0 = 0
    for t in range(prof.tp.size):
        w = [float(prof.power_at(np.array([k0]), np.array([t]), np.array([0]), np.array([x]))[0])
             for x in (0.0, 0.1, 0.5, 1.0)]
        print(f"   TP{prof.tp[t]} {prof.classes[k0]} at max clock: power at 0 / 10 / 50 / 100 % of its "
              f"capacity ({prof.cap_rps[k0, t, 0]:.2f} req/s): " + " / ".join(f"{x:.0f} W" for x in w))


def main() -> int:
    site, tr, wl, rates = _setup()
    reserve(rates)
    misses(site, tr, wl)
    bound(site, wl, rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
