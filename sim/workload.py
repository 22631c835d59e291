"""Workload of the digital twin: inference pools replaying the Azure LLM trace, and training jobs.

Trace: one hour of real LLM request arrivals with token counts, the Azure LLM inference trace 2023
(conversation service), CC-BY 4.0, Patel et al., "Splitwise: Efficient generative LLM inference using
phase splitting", ISCA 2024. A gzip copy ships in ``powerplane/resources`` with that attribution.

Site scale: many inference *pools*, each replaying the trace shifted by ``shift_s`` (so pools peak at
different times) and scaled by ``rate_scale``. In ``mode = "rate"`` (the default) a pool's arrivals are a
Poisson process whose rate is ``rate_scale`` times the trace's own request rate smoothed over
``rate_window_s`` at the shifted time; every request draws its prompt and output lengths from the trace
requests in that window. In ``mode = "exact"`` the trace's own arrivals are replayed, each one
``rate_scale`` times on average. docs/twin.md ("Workload scaling") explains the choice.

Training jobs: synchronous steps alternating a compute phase (power at the limit) and a communication
phase (far lower), periodic checkpoint pauses, start and stop times. Every pool and job has a priority
class from ``powerplane.site.PRIORITIES``. Loading the trace is the only I/O here; generation is numpy.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from powerplane.config import TomlFileError, read_toml
from powerplane.site import PRIORITIES, FloatArray, IntArray, Site
from sim.physics import gpu_spec_for
from sim.serving import MODELS, Arrivals, ServingConfig, estimate_capacity_rps, min_tp

TRACE_ATTRIBUTION = ("Azure LLM inference trace 2023 (conversation service), CC-BY 4.0. Patel et al., "
                     "\"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024.")
PACKAGED_TRACE = Path(__file__).resolve().parent / "resources" / "azure_llm_conv_2023.csv.gz"
SHARED_TRACE = Path("/work/shared/data/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv")


class WorkloadError(ValueError):
    """All problems found in a workload description, each a line `path: what is wrong`."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(self.errors))


# ======================================================================================
# The trace
# ======================================================================================


@dataclass(frozen=True, eq=False)
class Trace:
    """Request arrivals (seconds since the first one) with prompt and output token counts."""

    t_s: FloatArray
    prompt: FloatArray
    output: FloatArray
    period_s: float  # a replay wraps around after this long: the span plus one mean gap
    source: str
    attribution: str = TRACE_ATTRIBUTION

    @property
    def n(self) -> int:
        return int(self.t_s.size)

    @property
    def mean_rate(self) -> float:
        return self.n / self.period_s


def parse_trace_csv(text: str, source: str = "<trace>") -> Trace:
    """Parse `TIMESTAMP,ContextTokens,GeneratedTokens` rows (the Azure LLM trace format)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TIMESTAMP"):
        raise ValueError(f"{source}: expected a header 'TIMESTAMP,ContextTokens,GeneratedTokens'")
    ts: list[float] = []
    pr: list[float] = []
    out: list[float] = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            stamp, p, o = line.split(",")
            day, clock = stamp.split(" ")
            whole, _, frac = clock.partition(".")
            t = dt.datetime.fromisoformat(f"{day}T{whole}").replace(tzinfo=dt.UTC).timestamp()
            ts.append(t + (float("0." + frac) if frac else 0.0))
            pr.append(float(int(p)))
            out.append(float(int(o)))
        except ValueError as e:
            raise ValueError(f"{source}:{no}: cannot parse {line!r} ({e})") from None
    t_arr = np.asarray(ts)
    order = np.argsort(t_arr, kind="stable")
    t_arr = t_arr[order] - t_arr.min()
    span = float(t_arr[-1]) if t_arr.size else 0.0
    period = span + (span / max(t_arr.size - 1, 1))
    return Trace(t_arr, np.asarray(pr)[order], np.maximum(np.asarray(out)[order], 1.0), period, source)


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Trace:
    p = Path(path)
    raw = p.read_bytes()
    text = gzip.decompress(raw).decode() if p.suffix == ".gz" else raw.decode()
    return parse_trace_csv(text, source=str(p))


def load_azure_conv(path: str | Path | None = None) -> Trace:
    """The Azure conversation trace, parsed once per process.

    Looked up in this order: ``path``, ``$PP_TRACE``, the packaged gzip copy, the shared data directory.
    """
    for cand in (path, os.environ.get("PP_TRACE"), PACKAGED_TRACE, SHARED_TRACE):
        if cand and Path(cand).is_file():
            return _load(str(Path(cand).resolve()))
    raise FileNotFoundError("the Azure LLM trace was not found: pass a path or set PP_TRACE")


@dataclass(frozen=True, eq=False)
class RateTable:
    """The trace's request rate smoothed over a window, and where to draw token counts, per second.

    Arrays are the trace three times over (shifted by -period, 0, +period) so that windows and replays
    wrap around the period without special cases.
    """

    rate: FloatArray  # requests/s, one entry per whole second of the period
    lo: IntArray  # token draws for second s come from requests [lo[s], hi[s]) of the tripled trace
    hi: IntArray
    t3: FloatArray
    prompt3: FloatArray
    output3: FloatArray
    period_s: float


def rate_table(trace: Trace, window_s: float) -> RateTable:
    period = trace.period_s
    n_sec = max(1, math.ceil(period))
    t3 = np.concatenate([trace.t_s - period, trace.t_s, trace.t_s + period])
    centers = np.arange(n_sec, dtype=np.float64) + 0.5
    half = min(max(window_s, 1.0), period) / 2.0
    lo = np.searchsorted(t3, centers - half, side="left")
    hi = np.searchsorted(t3, centers + half, side="left")
    rate = (hi - lo) / (2.0 * half)
    hi = np.maximum(hi, lo + 1)
    return RateTable(rate.astype(np.float64), lo.astype(np.int64), hi.astype(np.int64), t3,
                     np.tile(trace.prompt, 3), np.tile(trace.output, 3), period)


# ======================================================================================
# Pools and jobs
# ======================================================================================


@dataclass(frozen=True)
class PoolSpec:
    """An inference pool: instances of one model serving one priority class from a shifted, scaled trace."""

    name: str
    priority: str = "inference-critical"
    model: str = "llama3-70b"
    tp: int = 8  # GPUs per instance (tensor parallelism)
    gpus: int | None = None  # GPUs taken from its priority class, in site order
    share: float | None = None  # or this fraction of its class's GPUs (None, None: an equal split)
    racks: tuple[str, ...] = ()  # or exactly these racks
    instances: int | None = None  # instances active at start (None: all that fit)
    shift_s: float = 0.0  # replay starts this far into the trace
    rate_scale: float = 1.0  # arrivals per trace arrival
    mode: str = "rate"  # "rate" (smoothed-rate Poisson) or "exact" (the trace's own arrivals)
    copy_spread_s: float = 1.0  # exact mode: copies of one trace request spread over this long
    max_batch: int = 256  # running sequences per instance (vLLM's max_num_seqs default)
    chunk_tokens: int = 2048  # prompt tokens per iteration (chunked prefill budget; assumption)
    ttft_slo_s: float = 0.4  # DynamoLLM's TTFT SLO (BRIEF.md, unconfirmed)
    tbt_slo_s: float = 0.1  # DynamoLLM's TBT SLO (BRIEF.md, unconfirmed)


@dataclass(frozen=True)
class JobSpec:
    """A synchronous training job."""

    name: str
    priority: str = "training"
    gpus: int | None = None
    share: float | None = None
    racks: tuple[str, ...] = ()
    start_s: float = 0.0
    stop_s: float = math.inf
    iter_s: float = 5.0  # one step at max clock (assumption: large-model steps take seconds)
    compute_frac: float = 0.8  # share of a step in the compute phase at max clock (assumption)
    phase_s: float = 0.0  # offset into the first step
    ckpt_every_s: float = 1800.0  # checkpoint period (assumption)
    ckpt_s: float = 60.0  # checkpoint pause (assumption)
    ckpt_offset_s: float = 0.0  # first checkpoint this long after the start (0: one period)


@dataclass(frozen=True, eq=False)
class WorkloadSpec:
    pools: tuple[PoolSpec, ...] = ()
    jobs: tuple[JobSpec, ...] = ()
    rate_window_s: float = 30.0  # smoothing window of the trace's rate in "rate" mode (assumption)
    trace: Trace | None = None  # None: load_azure_conv()

    def resolved_trace(self) -> Trace:
        return self.trace if self.trace is not None else load_azure_conv()


_POOL_FIELDS = {f.name for f in fields(PoolSpec)}
_JOB_FIELDS = {f.name for f in fields(JobSpec)}


def _check_spec(errs: list[str], path: str, spec: PoolSpec | JobSpec, site: Site | None) -> None:
    if spec.priority not in PRIORITIES:
        errs.append(f"{path}.priority: unknown priority class '{spec.priority}' (known: {', '.join(PRIORITIES)})")
    if spec.gpus is not None and spec.gpus < 1:
        errs.append(f"{path}.gpus: must be >= 1, got {spec.gpus}")
    if spec.share is not None and not 0.0 < spec.share <= 1.0:
        errs.append(f"{path}.share: must be in (0, 1], got {spec.share}")
    if site is not None:
        for r in spec.racks:
            try:
                site.rack_index(r)
            except KeyError:
                errs.append(f"{path}.racks: unknown rack '{r}'")
    if isinstance(spec, PoolSpec):
        if spec.model not in MODELS:
            errs.append(f"{path}.model: unknown model '{spec.model}' (known: {', '.join(MODELS)})")
        if spec.tp < 1 or spec.tp & (spec.tp - 1):
            errs.append(f"{path}.tp: must be a power of two >= 1, got {spec.tp}")
        if spec.mode not in ("rate", "exact"):
            errs.append(f"{path}.mode: must be 'rate' or 'exact', got '{spec.mode}'")
        if not spec.rate_scale >= 0:
            errs.append(f"{path}.rate_scale: must be >= 0, got {spec.rate_scale}")
        for f in ("max_batch", "chunk_tokens"):
            if getattr(spec, f) < 1:
                errs.append(f"{path}.{f}: must be >= 1")
        for f in ("ttft_slo_s", "tbt_slo_s"):
            if not getattr(spec, f) > 0:
                errs.append(f"{path}.{f}: must be > 0")
    else:
        if not spec.iter_s > 0:
            errs.append(f"{path}.iter_s: must be > 0, got {spec.iter_s}")
        if not 0.0 < spec.compute_frac <= 1.0:
            errs.append(f"{path}.compute_frac: must be in (0, 1], got {spec.compute_frac}")
        if spec.stop_s <= spec.start_s:
            errs.append(f"{path}.stop_s: must be after start_s")
        if spec.ckpt_s < 0 or not spec.ckpt_every_s > spec.ckpt_s:
            errs.append(f"{path}: need 0 <= ckpt_s < ckpt_every_s")


def validate_workload(spec: WorkloadSpec, site: Site | None = None, source: str = "<workload>") -> None:
    errs: list[str] = []
    names: set[str] = set()
    specs: list[tuple[str, int, PoolSpec | JobSpec]] = [
        *(("pools", i, p) for i, p in enumerate(spec.pools)), *(("jobs", i, j) for i, j in enumerate(spec.jobs))]
    for kind, i, s in specs:
        path = f"{kind}[{i}]"
        if s.name in names:
            errs.append(f"{path}.name: '{s.name}' is used twice")
        names.add(s.name)
        _check_spec(errs, path, s, site)
    if not spec.rate_window_s > 0:
        errs.append(f"rate_window_s: must be > 0, got {spec.rate_window_s}")
    if errs:
        raise WorkloadError(source, errs)


def workload_from_dict(d: Mapping[str, Any], source: str = "<workload>", trace: Trace | None = None) -> WorkloadSpec:
    """Build a workload from the dict a workload TOML file loads to; every error is reported at once."""
    errs: list[str] = []
    for k in d:
        if k not in ("pools", "jobs", "rate_window_s"):
            errs.append(f"{k}: unknown field")

    def build(kind: str, cls: type[Any], allowed: set[str]) -> list[Any]:
        out: list[Any] = []
        raw = d.get(kind, [])
        if not isinstance(raw, list):
            errs.append(f"{kind}: expected a list of tables")
            return out
        for i, item in enumerate(raw):
            path = f"{kind}[{i}]"
            if not isinstance(item, dict):
                errs.append(f"{path}: expected a table")
                continue
            bad = [k for k in item if k not in allowed]
            for k in bad:
                errs.append(f"{path}.{k}: unknown field")
            if "name" not in item:
                errs.append(f"{path}.name: missing")
                continue
            kw = {k: (tuple(v) if k == "racks" else v) for k, v in item.items() if k in allowed}
            try:
                out.append(cls(**kw))
            except TypeError as e:
                errs.append(f"{path}: {e}")
        return out

    pools = build("pools", PoolSpec, _POOL_FIELDS)
    jobs = build("jobs", JobSpec, _JOB_FIELDS)
    if errs:
        raise WorkloadError(source, errs)
    spec = WorkloadSpec(tuple(pools), tuple(jobs), float(d.get("rate_window_s", 30.0)), trace)
    validate_workload(spec, None, source)
    return spec


def load_workload(path: str | Path, trace: Trace | None = None) -> WorkloadSpec:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise WorkloadError(str(path), [str(e)]) from None
    return workload_from_dict(data, source=str(path), trace=trace)


def workload_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """The TOML-ready dict of a workload (fields at their defaults are left out)."""
    def one(s: PoolSpec | JobSpec) -> dict[str, Any]:
        default = type(s)(name=s.name)
        out: dict[str, Any] = {}
        for f in fields(s):
            v = getattr(s, f.name)
            if f.name == "name" or v != getattr(default, f.name):
                if isinstance(v, float) and math.isinf(v):
                    continue
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    return {"rate_window_s": spec.rate_window_s, "pools": [one(p) for p in spec.pools],
            "jobs": [one(j) for j in spec.jobs]}


# ======================================================================================
# Placement: which GPUs every pool and job owns
# ======================================================================================


@dataclass(frozen=True, eq=False)
class Placement:
    pool_gpus: list[IntArray]
    job_gpus: list[IntArray]


def place(site: Site, spec: WorkloadSpec) -> Placement:
    """Give every pool and job its GPUs: explicit racks first, then per priority class in site order."""
    taken = np.zeros(site.n_gpus, dtype=bool)
    items: list[PoolSpec | JobSpec] = [*spec.pools, *spec.jobs]
    out: list[IntArray | None] = [None] * len(items)
    errs: list[str] = []
    for i, s in enumerate(items):
        if s.racks:
            g = np.concatenate([np.arange(site.rack_gpu_start[r], site.rack_gpu_start[r + 1])
                                for r in (site.rack_index(x) for x in s.racks)])
            if taken[g].any():
                errs.append(f"{s.name}: racks overlap another pool or job")
            taken[g] = True
            out[i] = np.sort(g)
    for cls, _ in enumerate(PRIORITIES):
        members = [i for i, s in enumerate(items) if out[i] is None and s.priority == PRIORITIES[cls]]
        if not members:
            continue
        free = np.flatnonzero((site.gpu_priority == cls) & ~taken)
        total = free.size
        want: dict[int, int] = {}
        for i in members:
            s = items[i]
            if s.gpus is not None:
                want[i] = s.gpus
            elif s.share is not None:
                want[i] = math.floor(s.share * total + 1e-9)
        rest = [i for i in members if i not in want]
        shared = [i for i in members if items[i].share is not None and items[i].gpus is None]
        if not rest and shared and sum(items[i].share or 0.0 for i in shared) > 1.0 - 1e-6:
            for j in range(max(total - sum(want.values()), 0)):  # floor() left a few GPUs: hand them out
                want[shared[j % len(shared)]] += 1
        left = max(total - sum(want.values()), 0)
        for j, i in enumerate(rest):
            want[i] = left // len(rest) + (1 if j < left % len(rest) else 0)
        pos = 0
        for i in members:
            n = want[i]
            if pos + n > total:
                errs.append(f"{items[i].name}: wants {n} GPUs of class '{PRIORITIES[cls]}', "
                            f"only {max(total - pos, 0)} left")
                n = max(total - pos, 0)
            out[i] = free[pos:pos + n]
            pos += n
    if errs:
        raise WorkloadError("<placement>", errs)
    res = [o if o is not None else np.zeros(0, dtype=np.int64) for o in out]
    return Placement(res[:len(spec.pools)], res[len(spec.pools):])


def carve(site: Site, gpus: IntArray, tp: int) -> IntArray:
    """Instance slots of tp GPUs each, (n_slots, tp): within one server when tp fits, else within one rack."""
    if gpus.size == 0 or tp < 1:
        return np.zeros((0, max(tp, 1)), dtype=np.int64)
    per_server = np.bincount(site.gpu_server)[site.gpu_server[gpus]]
    dom = site.gpu_server[gpus] if tp <= int(per_server.min()) else site.gpu_rack[gpus]
    brk = np.flatnonzero((np.diff(dom) != 0) | (np.diff(gpus) != 1)) + 1
    starts = np.concatenate(([0], brk))
    lens = np.diff(np.concatenate((starts, [gpus.size])))
    pos = np.arange(gpus.size) - np.repeat(starts, lens)
    usable = pos < np.repeat((lens // tp) * tp, lens)
    return np.asarray(gpus[usable].reshape(-1, tp), dtype=np.int64)


# ======================================================================================
# Arrivals
# ======================================================================================


def generate_arrivals(table: RateTable, pools: Sequence[PoolSpec], pool_mult: FloatArray, inst_pool: IntArray,
                      inst_prob: FloatArray, t0: float, dt_s: float, rng: np.random.Generator) -> Arrivals:
    """Requests arriving in [t0, t0 + dt) at every instance, grouped by instance, time-ordered within.

    inst_prob: the probability that a request of the instance's pool goes to it (routing; sums to 1 over
    the pool's eligible instances, 0 elsewhere). pool_mult: load surges (1.0 = none).
    """
    n_inst = inst_pool.size
    period = table.period_s
    n_sec = table.rate.size
    shift = np.array([p.shift_s for p in pools], dtype=np.float64)
    scale = np.array([p.rate_scale for p in pools], dtype=np.float64) * pool_mult
    exact = np.array([p.mode == "exact" for p in pools], dtype=bool)
    tm = np.mod(t0 + shift, period)
    # Rate at the middle of the step, linear between whole seconds.
    tmid = np.mod(tm + dt_s / 2.0, period)
    s0 = np.minimum(tmid.astype(np.int64), n_sec - 1)
    s1 = (s0 + 1) % n_sec
    w = tmid - s0
    lam_pool = np.where(exact, 0.0, scale * ((1 - w) * table.rate[s0] + w * table.rate[s1]))
    lam = lam_pool[inst_pool] * inst_prob * dt_s if n_inst else np.zeros(0)
    counts = rng.poisson(lam) if n_inst else np.zeros(0, dtype=np.int64)
    inst = np.repeat(np.arange(n_inst), counts)
    n = inst.size
    # Token counts: uniformly from the trace requests in the rate window around the shifted time.
    sec = np.minimum(tm.astype(np.int64), n_sec - 1)
    lo = table.lo[sec]
    span = table.hi[sec] - lo
    pi = inst_pool[inst]
    tok = lo[pi] + (rng.random(n) * span[pi]).astype(np.int64)
    # Arrival instants: sorted uniforms per instance from exponential spacings.
    e = rng.exponential(size=n + n_inst)
    ends = np.cumsum(counts)
    starts = ends - counts
    # Spacing k of instance i is e[i + k]: each instance owns counts[i] + 1 spacings.
    own = np.repeat(np.arange(n_inst) + starts, counts) + (np.arange(n) - np.repeat(starts, counts))
    cs = np.cumsum(e)
    first = np.arange(n_inst) + starts  # index of the instance's first spacing
    base = np.where(first > 0, cs[np.maximum(first - 1, 0)], 0.0)
    total = cs[first + counts] - base
    offset = (cs[own] - np.repeat(base, counts)) / np.repeat(total, counts) * dt_s
    arr = Arrivals(inst.astype(np.int64), offset, table.prompt3[tok], table.output3[tok])
    if exact.any():
        arr = _merge_exact(arr, table, pools, exact, scale, tm, inst_pool, inst_prob, dt_s, rng)
    return arr


def _merge_exact(arr: Arrivals, table: RateTable, pools: Sequence[PoolSpec], exact: np.ndarray,
                 scale: FloatArray, tm: FloatArray, inst_pool: IntArray, inst_prob: FloatArray, dt_s: float,
                 rng: np.random.Generator) -> Arrivals:
    insts: list[IntArray] = [arr.inst]
    offs: list[FloatArray] = [arr.offset_s]
    prs: list[FloatArray] = [arr.prompt]
    outs: list[FloatArray] = [arr.output]
    for p in (int(x) for x in np.flatnonzero(exact)):
        a = int(np.searchsorted(table.t3, tm[p], side="left"))
        b = int(np.searchsorted(table.t3, tm[p] + dt_s, side="left"))
        if b <= a:
            continue
        k = scale[p]
        copies = np.floor(k) + (rng.random(b - a) < (k - np.floor(k)))
        idx = np.repeat(np.arange(a, b), copies.astype(np.int64))
        if idx.size == 0:
            continue
        off = table.t3[idx] - tm[p] + rng.random(idx.size) * pools[p].copy_spread_s
        off = np.clip(off, 0.0, dt_s * (1.0 - 1e-9))
        members = np.flatnonzero(inst_pool == p)
        cdf = np.cumsum(inst_prob[members])
        if members.size == 0 or cdf[-1] <= 0:
            continue
        pick = members[np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(idx.size), side="right"),
                                  members.size - 1)]
        insts.append(pick)
        offs.append(off)
        prs.append(table.prompt3[idx])
        outs.append(table.output3[idx])
    inst = np.concatenate(insts)
    off_all = np.concatenate(offs)
    order = np.lexsort((off_all, inst))
    return Arrivals(inst[order], off_all[order], np.concatenate(prs)[order], np.concatenate(outs)[order])


# ======================================================================================
# Training jobs
# ======================================================================================


@dataclass
class TrainingState:
    """Phase and progress of every job (arrays over jobs)."""

    start_s: FloatArray
    stop_s: FloatArray
    iter_s: FloatArray
    compute_frac: FloatArray
    ckpt_every_s: FloatArray
    ckpt_s: FloatArray
    pos: FloatArray  # position in the current step, in units of step work: compute is [0, compute_frac)
    next_ckpt: FloatArray
    iterations: FloatArray = field(default_factory=lambda: np.zeros(0))

    @staticmethod
    def from_specs(jobs: Sequence[JobSpec]) -> TrainingState:
        def arr(name: str) -> FloatArray:
            return np.array([float(getattr(j, name)) for j in jobs], dtype=np.float64)

        start = arr("start_s")
        every = arr("ckpt_every_s")
        off = arr("ckpt_offset_s")
        pos = np.mod(arr("phase_s") / np.maximum(arr("iter_s"), 1e-9), 1.0)
        return TrainingState(start, arr("stop_s"), arr("iter_s"), arr("compute_frac"), every, arr("ckpt_s"),
                             pos, start + np.where(off > 0, off, every), np.zeros(len(jobs)))

    def advance(self, t: float, h: float, stretch: FloatArray, avail: np.ndarray
                ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Advance every job by h seconds from t; stretch >= 1 slows the compute phase (lower clock).

        avail: False where a job cannot run (its GPUs lost power or shut down). Returns per job the
        fractions of [t, t + h) spent (computing, communicating, checkpointing, switched on at all).
        """
        on = (self.start_s <= t) & (t < self.stop_s) & avail
        past = on & (t >= self.next_ckpt + self.ckpt_s)
        self.next_ckpt = np.where(past, self.next_ckpt + self.ckpt_every_s, self.next_ckpt)
        ckpt = on & (t >= self.next_ckpt) & (t < self.next_ckpt + self.ckpt_s)
        run = on & ~ckpt
        cf = self.compute_frac
        it = self.iter_s
        in_comp = self.pos < cf
        rate_c = 1.0 / (it * stretch)
        rate_m = 1.0 / it
        rate = np.where(in_comp, rate_c, rate_m)
        t_rem = np.where(in_comp, (cf - self.pos) / rate_c, (1.0 - self.pos) / rate_m)
        first = np.minimum(t_rem, h)
        second = h - first
        nxt_rate = np.where(in_comp, rate_m, rate_c)
        dpos = (first * rate + second * nxt_rate) * run
        f_comp = np.where(in_comp, first, second) / h * run
        f_comm = run - f_comp
        newpos = self.pos + dpos
        wrap = newpos >= 1.0
        self.iterations = self.iterations + dpos
        self.pos = np.where(wrap, newpos - 1.0, newpos)
        return f_comp, f_comm, ckpt.astype(np.float64), on.astype(np.float64)

    def phase_now(self) -> FloatArray:
        """1.0 where a job is in its compute phase right now."""
        return (self.pos < self.compute_frac).astype(np.float64)


# ======================================================================================
# The default site-scale workload
# ======================================================================================


def _n_for(gpus: int, per: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, gpus // per))


def default_workload(site: Site, trace: Trace | None = None, critical_load: float = 0.5, batch_load: float = 0.6,
                     serving_cfg: ServingConfig | None = None) -> WorkloadSpec:
    """A workload that fills a site by its priority classes.

    - inference-critical: 2-8 pools at TP8 of the largest model that fits 8 GPUs (llama3-405b on
      GB200-class GPUs, llama3-70b on H100s), TTFT/TBT SLOs 0.4 s/0.1 s, sized so that mean demand is
      ``critical_load`` of the pool's estimated capacity;
    - inference-batch: 2-8 pools, same model, looser SLOs (2 s / 0.2 s), at ``batch_load``;
    - training: 1-8 jobs (about 64 NVL72 racks each at the reference site), steps of 4-7 s, staggered;
    - best-effort: 1-8 fine-tuning jobs that start and stop (job churn).
    Pool shifts spread the pools over the hour of the trace, so they do not peak together. Every figure
    lands in the returned spec, explicitly (``workload_to_dict`` writes it as TOML).
    """
    tr = trace if trace is not None else load_azure_conv()
    cfg = serving_cfg or ServingConfig()
    counts = np.bincount(site.gpu_priority, minlength=len(PRIORITIES))
    pools: list[PoolSpec] = []
    jobs: list[JobSpec] = []
    mean_p = float(tr.prompt.mean())
    mean_o = float(tr.output.mean())
    for cls, tier, load, ttft, tbt, batch in (("inference-critical", "critical", critical_load, 0.4, 0.1, 256),
                                              ("inference-batch", "batch", batch_load, 2.0, 0.2, 512)):
        c = PRIORITIES.index(cls)
        n_gpus = int(counts[c])
        if n_gpus == 0:
            continue
        cls_gpus = np.flatnonzero(site.gpu_priority == c)
        t = site.server_type[int(site.gpu_server[cls_gpus[0]])]
        st = site.server_types[t]
        spec = gpu_spec_for(st.gpu_model, st.gpu_max_w)
        # The largest model that fits one 8-GPU instance: 405B on GB200-class GPUs, 70B on H100s.
        model = MODELS["llama3-405b"] if min_tp(MODELS["llama3-405b"], spec, cfg) <= 8 else MODELS["llama3-70b"]
        rack_gpus = int(np.bincount(site.gpu_rack)[site.gpu_rack[cls_gpus[0]]])
        tp = max(min_tp(model, spec, cfg), min(8, rack_gpus))
        n_pools = _n_for(n_gpus, 1024, 2, 8)
        cap = estimate_capacity_rps(model, spec, tp, 2048, batch, mean_p, mean_o, cfg)
        for i in range(n_pools):
            share = 1.0 / n_pools
            inst_est = int(n_gpus * share) // tp
            # Pools of a tier are spread evenly over the trace's period; the batch tier sits between them.
            offset = 0.0 if tier == "critical" else 0.5 / n_pools
            shift = round(((i + 0.5) / n_pools + offset) % 1.0 * tr.period_s, 1)
            scale = load * inst_est * cap / tr.mean_rate
            pools.append(PoolSpec(name=f"{tier}-{i + 1}", priority=cls, model=model.name, tp=tp, share=share,
                                  shift_s=shift, rate_scale=round(scale, 3), max_batch=batch, ttft_slo_s=ttft,
                                  tbt_slo_s=tbt))
    n_train = int(counts[PRIORITIES.index("training")])
    if n_train:
        n = _n_for(n_train, 4608, 1, 8)
        for i in range(n):
            jobs.append(JobSpec(name=f"train-{i + 1}", priority="training", share=1.0 / n, start_s=3.0 * i,
                                iter_s=4.0 + (i % 4), phase_s=0.37 * i, ckpt_offset_s=600.0 + 150.0 * i))
    n_be = int(counts[PRIORITIES.index("best-effort")])
    if n_be:
        n = _n_for(n_be, 1440, 1, 8)
        for i in range(n):
            jobs.append(JobSpec(name=f"finetune-{i + 1}", priority="best-effort", share=1.0 / n,
                                start_s=30.0 * i, stop_s=30.0 * i + 1800.0, iter_s=2.0, compute_frac=0.75,
                                ckpt_every_s=600.0, ckpt_s=20.0))
    return WorkloadSpec(tuple(pools), tuple(jobs), 30.0, tr)


def with_pool(spec: WorkloadSpec, name: str, **changes: Any) -> WorkloadSpec:
    """A copy of the workload with one pool's fields changed (tests, what-ifs)."""
    pools = tuple(replace(p, **changes) if p.name == name else p for p in spec.pools)
    return replace(spec, pools=pools)
