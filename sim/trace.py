"""The request trace the twin's inference pools replay, and the arrivals generated from it.

The default trace: one hour of real LLM request arrivals with token counts, the Azure LLM inference trace
2023 (conversation service), CC-BY 4.0, Patel et al., "Splitwise: Efficient generative LLM inference using
phase splitting", ISCA 2024. A gzip copy ships in ``sim/resources`` with that attribution. Any other trace
(Azure 2023 or 2024 files, a generic CSV, a generated bursty trace) is read by ``sim.trace_files`` and
made by ``sim.trace_gen``; every ``Trace`` carries its name and attribution for the reports.

In ``mode = "rate"`` (the default) a pool's arrivals are a Poisson process whose rate is ``rate_scale``
times the trace's own request rate smoothed over ``rate_window_s`` at the pool's shifted time; every
request draws its prompt and output lengths from the trace requests in that window. In ``mode = "exact"``
the trace's own arrivals are replayed, each one ``rate_scale`` times on average. docs/twin.md ("Workload
scaling") explains the choice. No I/O here; generation is numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from powerplane.site import FloatArray, IntArray
from sim.serving import Arrivals

if TYPE_CHECKING:
    from sim.workload_config import PoolSpec

TRACE_ATTRIBUTION = ("Azure LLM inference trace 2023 (conversation service), CC-BY 4.0. Patel et al., "
                     "\"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024.")
PACKAGED_TRACE = Path(__file__).resolve().parent / "resources" / "azure_llm_conv_2023.csv.gz"
SHARED_TRACE = Path("/work/shared/data/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv")


@dataclass(frozen=True, eq=False)
class Trace:
    """Request arrivals (seconds since the first one) with prompt and output token counts."""

    t_s: FloatArray
    prompt: FloatArray
    output: FloatArray
    period_s: float  # a replay wraps around after this long: the span plus one mean gap
    source: str
    attribution: str = TRACE_ATTRIBUTION
    name: str = "Azure LLM inference trace 2023 (conversation service)"  # what reports call it
    fmt: str = "azure-2023"  # the file's format (sim.trace_files), or how the trace was made

    @staticmethod
    def of(t_s: FloatArray, prompt: FloatArray, output: FloatArray, *, source: str, name: str, fmt: str,
           attribution: str, period_s: float | None = None) -> Trace:
        """A trace from requests in any order, sorted by arrival, at least one output token per request.
        Without `period_s` times start from the first arrival and the period is the span plus one mean gap;
        with it (a generated trace, whose quiet start and end are part of it) times are kept as given."""
        t = np.asarray(t_s, dtype=np.float64)
        order = np.argsort(t, kind="stable")
        t = t[order]
        if period_s is None:
            t = t - (t[0] if t.size else 0.0)
            span = float(t[-1]) if t.size else 0.0
            period_s = span + span / max(t.size - 1, 1)
        elif t.size and not (t[0] >= 0.0 and t[-1] < period_s):
            raise ValueError(f"{source}: arrivals must lie in [0, period_s = {period_s:g}) s")
        return Trace(t, np.asarray(prompt, dtype=np.float64)[order],
                     np.maximum(np.asarray(output, dtype=np.float64)[order], 1.0), float(period_s), source,
                     attribution, name, fmt)

    @property
    def n(self) -> int:
        return int(self.t_s.size)

    @property
    def mean_rate(self) -> float:
        return self.n / self.period_s

    def burstiness(self, window_s: float = 30.0) -> float:
        """Peak / mean of the arrival rate smoothed over `window_s` (a moving mean of whole seconds)."""
        per_s = np.bincount(self.t_s.astype(np.int64), minlength=max(1, math.ceil(self.period_s)))
        w = max(1, round(window_s))
        smooth = np.convolve(per_s, np.ones(w) / w, mode="valid") if per_s.size >= w else per_s.astype(float)
        mean = float(per_s.mean())
        return float(smooth.max() / mean) if mean > 0 else 0.0

    def longest_gap_s(self) -> float:
        """The longest time without an arrival."""
        return float(np.diff(self.t_s).max()) if self.n > 1 else 0.0

    def describe(self) -> str:
        """One line for reports: what the trace is, its size and its mix."""
        return (f"{self.name}: {self.n:,} requests over {self.period_s / 60:.0f} min ({self.mean_rate:.2f}/s, "
                f"30 s peak/mean {self.burstiness():.2f}, longest gap {self.longest_gap_s():.0f} s), mean "
                f"prompt {self.prompt.mean():.0f} and output {self.output.mean():.0f} tokens")


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

