"""Measure serving profiles (``powerplane.serving_profile``) on the twin's serving model.

DynamoLLM profiles every (model, GPU, TP, frequency) by running it at a range of request rates. We do the
same on the twin: one instance table holds an instance for every (class, TP, clock, rate) of the grid, each
fed its own Poisson stream of trace requests (token counts drawn from the whole trace), and the twin's
own per-step code runs them: the power limiter's clock solve (``solve_phi`` at the step's representative
phases, quantized to supported clocks) and ``step_serving``. That is what ``Twin.step`` does per instance,
without the site around it (one instance's serving does not depend on its neighbours), so a 1,500-instance
grid runs in seconds instead of one twin per point.

For each point: TTFT attainment = first tokens within the SLO / arrivals (a request never served counts as
a miss), TBT attainment = decode tokens within the SLO / decode tokens, mean instance power. ``cap_rps`` is
the rate where the worse of the two crosses ``target`` (0.99, "p99"), interpolated between the last grid rate
that meets it and the first that does not (every lower rate must meet it too).

Regenerate the packaged profile with ``python -m sim.profiling`` (< 1 min).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from powerplane.refsite import reference_site
from powerplane.serving_profile import PACKAGED_PROFILE, ServingProfile, class_key
from powerplane.site import FloatArray, Site
from powerplane.site_file import load_site
from sim.batching import PhasePower, representative_phases, step_serving
from sim.engine import Twin, TwinConfig
from sim.frames import BoolArray
from sim.physics import GpuSpec, quantize_phi, solve_phi
from sim.serving import (
    SERVING,
    Arrivals,
    InstanceTable,
    ModelSpec,
    Pending,
    estimate_capacity_rps,
    instance_constants,
)
from sim.slo import SloSpec, isolated_tbt_s, isolated_ttft_s, tbt_slo_s, ttft_slo_s
from sim.workload import PACKAGED_TRACE, Trace, default_trace, default_workload

log = logging.getLogger(__name__)

FREQ_REL = (1.0, 1800 / 1980, 1600 / 1980, 1410 / 1980, 1200 / 1980, 1000 / 1980)  # 1980 ... 1000 MHz on H100
LOAD_FRAC = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))
RATE_REL = tuple(float(x) for x in np.geomspace(0.05, 2.0, 22))  # x estimate_capacity_rps at max clock


@dataclass(frozen=True)
class ProfileClass:
    """What the measurement needs to know about one class of pools."""

    key: str
    model: ModelSpec
    gpu: GpuSpec
    tps: tuple[int, ...]
    fmax_mhz: float
    fmin_mhz: float
    bare_w: float
    ctx_w: float
    limit_w: float
    ttft_slo_s: float
    tbt_slo_s: float
    max_batch: int
    chunk_tokens: int


def classes_of(twin: Twin, max_tp: int = 16) -> list[ProfileClass]:
    """The distinct classes of a twin's pools, each with the TP degrees its pools allow (up to max_tp)."""
    out: dict[str, ProfileClass] = {}
    for i, p in enumerate(twin.pools):
        st = twin.site.server_types[twin.hw.type_ids[int(twin.gpu_type[p.gpus[0]])]]
        s = p.spec
        key = class_key(s.model, p.gpu.model, s.ttft_slo_s, s.tbt_slo_s, s.max_batch, s.chunk_tokens)
        tps = tuple(t for t in twin.allowed_tp(i) if t <= max_tp)
        if key in out:  # pools of one class may own different GPU counts: allow what any of them allows
            tps = tuple(sorted(set(tps) | set(out[key].tps)))
        out[key] = ProfileClass(key, p.model, p.gpu, tps, st.gpu_max_sm_mhz, st.gpu_min_sm_mhz, st.gpu_idle_w,
                                max(p.gpu.idle_ctx_w, st.gpu_idle_w), st.gpu_max_w, s.ttft_slo_s, s.tbt_slo_s,
                                s.max_batch, s.chunk_tokens)
    return list(out.values())


def default_classes(sites: Sequence[Site] | None = None, cfg: TwinConfig | None = None) -> list[ProfileClass]:
    """Classes of the default workload on the lab site and on the reference site."""
    if sites is None:
        lab = Path(__file__).resolve().parents[1] / "examples" / "lab.toml"
        sites = [load_site(lab), reference_site()] if lab.is_file() else [reference_site()]
    seen: dict[str, ProfileClass] = {}
    for site in sites:
        twin = Twin(site, default_workload(site), config=cfg)
        for c in classes_of(twin):
            seen.setdefault(c.key, c)
    return list(seen.values())


def measure_profile(classes: Sequence[ProfileClass], *, cfg: TwinConfig | None = None, trace: Trace | None = None,
                    freq_rel: Sequence[float] = FREQ_REL, rate_rel: Sequence[float] = RATE_REL,
                    load_frac: Sequence[float] = LOAD_FRAC, seconds: float = 240.0, warmup_s: float = 40.0,
                    target: float = 0.99, replicas: int = 4, seed: int = 0, slo: SloSpec | None = None,
                    debug: dict[str, FloatArray] | None = None) -> ServingProfile:
    """Run every (class, TP, clock, rate) point as one instance for `seconds`; see the module docstring.
    `slo`: the SLO definition attainment is judged by (sim.slo); None: each class's absolute TTFT and TBT,
    what the packaged profile was measured with. A run that judges relative SLOs must be sized from a
    profile measured against them: the absolute 0.4 s TTFT of a 405B pool rates it at a third of what it
    serves within 5 x its isolated TTFT (docs/performance.md, issue 14)."""
    cfg = cfg or TwinConfig()
    slo = slo or SloSpec(kind="absolute")
    tr = trace if trace is not None else default_trace()
    tps = sorted({t for c in classes for t in c.tps})
    n_k, n_t, n_f, n_r = len(classes), len(tps), len(freq_rel), len(rate_rel) + 1  # rate 0: idle
    mean_p, mean_o = float(tr.prompt.mean()), float(tr.output.mean())
    rows, valid, freq = _grid(classes, tps, freq_rel, rate_rel, cfg, mean_p, mean_o)
    a = {name: np.repeat(np.asarray(v, dtype=np.float64), replicas) for name, v in rows.items()}
    t = _simulate(a, tr, cfg, seconds, warmup_s, seed, slo)
    span = seconds - warmup_s

    def pooled(x: FloatArray) -> FloatArray:  # sum over a grid point's replicas
        return np.asarray(x.reshape(-1, replicas).sum(axis=1), dtype=np.float64)

    arrived, ttft_ok, tbt_ok, dec, tokens, firsts = (pooled(t[k]) for k in ("arrived", "ttft_ok", "tbt_ok", "dec",
                                                                          "tokens", "firsts"))
    energy = pooled(t["energy"]) / replicas
    a = {k: v[::replicas] for k, v in a.items()}
    att_ttft = np.where(arrived > 0, ttft_ok / np.maximum(arrived, 1.0), 1.0)
    att_tbt = np.where(dec > 0, tbt_ok / np.maximum(dec, 1e-9), 1.0)
    if debug is not None:
        debug.update(att_ttft=att_ttft, att_tbt=att_tbt, rate=a["rate"], power=energy / span)
    att = np.minimum(att_ttft, att_tbt)
    shape = (n_k, n_t, n_f, n_r)
    lf = np.asarray(load_frac, dtype=np.float64)
    cap, power = _capacity(att.reshape(shape), a["rate"].reshape(shape), (energy / span).reshape(shape), valid,
                           target, lf)
    tpr = np.array([float(tokens.reshape(shape)[k].sum() / max(firsts.reshape(shape)[k].sum(), 1.0))
                    for k in range(n_k)])
    meta = {"source": "sim.profiling.measure_profile", "seconds": seconds, "warmup_s": warmup_s,
            "target": target, "seed": seed, "trace": tr.source.rsplit("/", 1)[-1], "slo": slo.describe(),
            "mix": f"{tr.name}, mean prompt {mean_p:.0f}, mean output {mean_o:.0f} tokens"}
    return ServingProfile(classes=tuple(c.key for c in classes), tp=np.asarray(tps, dtype=np.int64),
                          freq_mhz=freq, load_frac=lf, valid=valid, cap_rps=cap, power_w=power,
                          tokens_per_req=tpr, bare_w=np.array([c.bare_w for c in classes]), meta=meta)


def _grid(classes: Sequence[ProfileClass], tps: list[int], freq_rel: Sequence[float], rate_rel: Sequence[float],
          cfg: TwinConfig, mean_p: float, mean_o: float) -> tuple[dict[str, list[float]], BoolArray, FloatArray]:
    """One row per grid point, in (class, TP, clock, rate) order: the instance's figures, its clock and
    request rate. Invalid (class, TP) rows are simulated at rate 0 and ignored. Returns (rows, valid, MHz)."""
    sc, pc = cfg.serving, cfg.power
    n_k, n_t, n_f, n_r = len(classes), len(tps), len(freq_rel), len(rate_rel) + 1
    rows: dict[str, list[float]] = {name: [] for name in ("c_tok", "mem_w", "mem_kv", "over", "kv", "chunk", "batch",
                                                   "ttft", "tbt", "rate", "phi", "fmax", "fmin", "bare", "ctx",
                                                   "kd", "km", "lim", "tp")}
    valid = np.zeros((n_k, n_t), dtype=bool)
    freq = np.zeros((n_k, n_f))
    for k, c in enumerate(classes):
        fmax = np.full(n_f, c.fmax_mhz)
        phis = quantize_phi(np.asarray(freq_rel, dtype=np.float64), fmax, np.full(n_f, c.fmin_mhz),
                            pc.clock_step_mhz)
        freq[k] = phis * c.fmax_mhz
        for t, tp in enumerate(tps):
            valid[k, t] = tp in c.tps
            kc = instance_constants(c.model, c.gpu, tp, sc)
            est = estimate_capacity_rps(c.model, c.gpu, tp, c.chunk_tokens, c.max_batch, mean_p, mean_o, sc)
            for f in range(n_f):
                for r in range(n_r):
                    rate = 0.0 if r == 0 or not valid[k, t] else est * rate_rel[r - 1]
                    for name, v in (("c_tok", kc.c_tok_s), ("mem_w", kc.mem_w_s), ("mem_kv", kc.mem_kv_s),
                                 ("over", kc.overhead_s), ("kv", kc.kv_cap_tokens), ("chunk", c.chunk_tokens),
                                 ("batch", c.max_batch), ("ttft", c.ttft_slo_s), ("tbt", c.tbt_slo_s),
                                 ("rate", rate), ("phi", float(phis[f])), ("fmax", c.fmax_mhz),
                                 ("fmin", c.fmin_mhz), ("bare", c.bare_w), ("ctx", c.ctx_w), ("kd", c.gpu.dyn_w),
                                 ("km", c.gpu.mem_w), ("lim", c.limit_w), ("tp", tp)):
                        rows[name].append(float(v))
    return rows, valid, freq


def _simulate(a: dict[str, FloatArray], tr: Trace, cfg: TwinConfig, seconds: float, warmup_s: float, seed: int,
              slo: SloSpec) -> dict[str, FloatArray]:
    """Run one instance per row of `a` for `seconds` in 1 s steps, each fed its own Poisson stream of trace
    requests; tally (per instance, after the warm-up) arrivals, first tokens within the TTFT SLO, decode
    tokens within the TBT SLO, decode tokens, GPU energy (all GPUs of the instance), tokens, first tokens."""
    sc, pc = cfg.serving, cfg.power
    n = a["rate"].size
    idx = np.arange(n, dtype=np.int64)
    seq_tok = float(tr.prompt.mean()) + float(tr.output.mean())
    # The TBT SLO as the twin's pools set it (sim.pools): a lone sequence of typical context at max clock.
    tbt = tbt_slo_s(slo, a["tbt"], isolated_tbt_s(a["c_tok"], a["mem_w"], a["mem_kv"], a["over"], np.full(n, seq_tok)))
    tab = InstanceTable(pool=idx, state=np.full(n, SERVING, dtype=np.int64), ready_at=np.zeros(n),
                        weight=np.ones(n), c_tok=a["c_tok"], mem_w=a["mem_w"], mem_kv=a["mem_kv"],
                        overhead=a["over"], kv_cap=a["kv"], chunk=a["chunk"], max_batch=a["batch"],
                        seq_tokens=np.full(n, seq_tok), ttft_slo=a["ttft"], tbt_slo=tbt)
    pending = Pending.empty(n)
    rng = np.random.default_rng(seed)
    n_sub = max(1, math.ceil(1.0 / sc.substep_s - 1e-9))
    phimin = a["fmin"] / a["fmax"]
    t = {k: np.zeros(n) for k in ("arrived", "ttft_ok", "tbt_ok", "dec", "energy", "tokens", "firsts")}
    last_arrival_s = seconds - 15.0  # later arrivals may still be waiting when the run ends: not counted
    for step in range(int(seconds)):
        t0 = float(step)
        # The engine's clock solve: the limiter at the step's representative phases, under the lock.
        c_mix, c_dec, mem, over = representative_phases(tab)
        two = np.concatenate
        phi_all, _ = solve_phi(two([a["lim"], a["lim"]]), two([c_mix, c_dec]), two([mem, mem]), two([over, over]),
                               two([a["phi"], a["phi"]]), two([phimin, phimin]), two([a["bare"], a["bare"]]),
                               two([a["ctx"], a["ctx"]]), two([a["kd"], a["kd"]]), two([a["km"], a["km"]]), pc)
        phi_all = quantize_phi(phi_all, two([a["fmax"], a["fmax"]]), two([a["fmin"], a["fmin"]]), pc.clock_step_mhz)
        pp = PhasePower(phi_all[:n], phi_all[n:], a["phi"], a["bare"], a["ctx"], a["kd"], a["km"], a["lim"])
        counts = rng.poisson(a["rate"])
        inst = np.repeat(idx, counts)
        off = rng.random(inst.size)
        order = np.lexsort((off, inst))
        pick = rng.integers(0, tr.n, inst.size)
        arr = Arrivals(inst, off[order], tr.prompt[pick], tr.output[pick])
        res, pending = step_serving(tab, pending, arr, t0, 1.0, n_sub, pp, pc, sc)
        if t0 < warmup_s:
            continue
        if t0 < last_arrival_s:
            t["arrived"] += counts
        rq = res.requests
        sel = (rq.t_arrival_s >= warmup_s) & (rq.t_arrival_s < last_arrival_s)
        p = rq.pool
        iso = isolated_ttft_s(rq.prompt_tokens, a["c_tok"][p], a["mem_w"][p], a["over"][p], a["chunk"][p])
        t["ttft_ok"] += np.bincount(p[sel & (rq.ttft_s <= ttft_slo_s(slo, a["ttft"][p], iso))], minlength=n)
        t["tbt_ok"] += res.tokens_tbt_ok
        t["dec"] += res.decode_tokens
        t["energy"] += res.avg_power_w * a["tp"]
        t["tokens"] += res.tokens
        t["firsts"] += np.bincount(rq.pool, minlength=n)
    return t


def _capacity(att4: FloatArray, rate4: FloatArray, pow4: FloatArray, valid: BoolArray, target: float,
              lf: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per (class, TP, clock): the rate where attainment (made non-increasing in the rate) crosses target,
    and the mean power at each load fraction of that rate (idle power where there is no capacity)."""
    n_k, n_t, n_f, _ = att4.shape
    cap = np.zeros((n_k, n_t, n_f))
    power = np.zeros((n_k, n_t, n_f, lf.size))
    for k in range(n_k):
        for t in range(n_t):
            for f in range(n_f):
                power[k, t, f] = pow4[k, t, f, 0]
                if not valid[k, t]:
                    continue
                at, rt = _non_increasing(att4[k, t, f, 1:]), rate4[k, t, f, 1:]
                bad = np.flatnonzero(at < target)
                j = int(bad[0]) if bad.size else rt.size
                if j == 0:
                    continue  # even the lowest rate misses the SLO
                if j == rt.size:
                    cap[k, t, f] = rt[-1]
                else:  # interpolate where attainment crosses the target
                    w = (at[j - 1] - target) / max(at[j - 1] - at[j], 1e-12)
                    cap[k, t, f] = rt[j - 1] + w * (rt[j] - rt[j - 1])
                power[k, t, f] = np.interp(lf * cap[k, t, f], rate4[k, t, f], pow4[k, t, f])
    return cap, power


def _non_increasing(y: FloatArray) -> FloatArray:
    """Least-squares non-increasing fit (pool adjacent violators): attainment falls with the rate, so one
    noisy dip at a low rate must not cut the capacity, nor one lucky point past the knee raise it."""
    vals: list[float] = []
    sizes: list[int] = []
    for v in y.tolist():
        vals.append(v)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:
            v2, n2 = vals.pop(), sizes.pop()
            vals[-1] = (vals[-1] * sizes[-1] + v2 * n2) / (sizes[-1] + n2)
            sizes[-1] += n2
    return np.repeat(np.asarray(vals), sizes)


def profile_cache_dir() -> Path:
    """Where measured profiles are kept: $PP_CACHE_DIR/serving-profiles (default ~/.cache/powerplane/...)."""
    return Path(os.environ.get("PP_CACHE_DIR", Path.home() / ".cache" / "powerplane")) / "serving-profiles"


def profile_for(twin: Twin, cache_dir: Path | None = None) -> tuple[ServingProfile, str]:
    """The serving profile of the twin's pool classes for the token mix of the trace it replays, and where it
    came from. The packaged trace's, judged by absolute SLOs, is the packaged profile; any other is measured
    once (~15 s for the lab site's classes) and cached under a key of the token counts, the classes and the SLO
    definition, so the reconfiguration sizes pools for the prompts and outputs it will serve, as it is judged."""
    tr = twin.trace
    slo = twin.pools[0].slo if twin.pools else SloSpec()
    # The packaged profile was measured against each class's absolute SLOs: only a run judged by those may
    # use it; a run judged by relative SLOs (the default) has its own measured (issue 14).
    if Path(tr.source).resolve() == PACKAGED_TRACE.resolve() and slo.kind == "absolute":
        packaged = ServingProfile.load()
        return packaged, f"packaged ({packaged.meta.get('mix', 'the conversation trace mix')})"
    classes = classes_of(twin)
    # The twin's power and serving constants are part of the key: a profile measured before a calibration
    # change must not be reused after it; so is the SLO definition the run judges (relative or absolute).
    h = hashlib.sha256(tr.prompt.tobytes() + tr.output.tobytes() + repr(classes).encode()
                       + repr((twin.cfg.power, twin.cfg.serving, slo)).encode())
    path = (cache_dir or profile_cache_dir()) / f"{h.hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return ServingProfile.load(path), f"measured for {tr.name}'s token mix (cached: {path})"
        except ValueError:
            pass  # a damaged cache file: measure again
    log.info("measuring the serving profile of %d pool class(es) on %s's token mix (once; cached in %s)",
             len(classes), tr.name, path.parent)
    prof = measure_profile(classes, cfg=twin.cfg, trace=tr, slo=slo)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    prof.save(tmp)
    tmp.replace(path)  # whole or not at all, should two runs measure at once
    return prof, f"measured for {tr.name}'s token mix (cached: {path})"


def _measured_rows(profile: ServingProfile) -> list[str]:
    lines = []
    for k, key in enumerate(profile.classes):
        for t, tp in enumerate(profile.tp):
            if not profile.valid[k, t]:
                continue
            caps = " ".join(f"{profile.freq_mhz[k, f]:.0f}:{profile.cap_rps[k, t, f]:.2f}"
                            for f in range(profile.freq_mhz.shape[1]))
            lines.append(f"{key} tp{tp}: cap rps by MHz {caps}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.profiling",
                                 description="Measure the serving profile of the default workloads' pool classes")
    ap.add_argument("--out", default=str(PACKAGED_PROFILE), help="JSON file to write (default: the packaged one)")
    ap.add_argument("--seconds", type=float, default=240.0, help="simulated seconds per grid point")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    prof = measure_profile(default_classes(), seconds=args.seconds, seed=args.seed)
    prof.save(args.out)
    print("\n".join(_measured_rows(prof)))
    print(f"wrote {args.out} ({len(prof.classes)} classes) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
