"""Workload of the digital twin: inference pools replaying a request trace, and training jobs.

Site scale: many inference *pools*, each replaying the trace shifted by ``shift_s`` (so pools peak at
different times) and scaled by ``rate_scale`` (the trace and the arrivals: ``sim.trace``). Training jobs:
synchronous steps alternating a compute phase (power at the limit) and a communication phase (far
lower), periodic checkpoint pauses, start and stop times. Every pool and job has a priority class from
``powerplane.site.PRIORITIES``.

This module holds the training jobs' state and the default site-scale workload, and is the one import
for the rest: the specs and the workload file (``sim.workload_config``), the trace (``sim.trace``),
placement (``sim.placement``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from powerplane.site import PRIORITIES, FloatArray, Site
from sim.physics import gpu_spec_for
from sim.placement import Placement, carve, place
from sim.serving import MODELS, ServingConfig, estimate_capacity_rps, min_tp
from sim.trace import PACKAGED_TRACE, SHARED_TRACE, TRACE_ATTRIBUTION, RateTable, Trace, generate_arrivals, rate_table
from sim.trace_files import TraceColumns, default_trace, load_azure_conv, load_trace
from sim.workload_config import (
    JobConfig,
    JobSpec,
    PoolConfig,
    PoolSpec,
    WorkloadConfig,
    WorkloadSpec,
    check_workload,
    load_workload,
    validate_workload,
    with_pool,
    workload_from_dict,
    workload_to_dict,
)

__all__ = [
    "PACKAGED_TRACE", "SHARED_TRACE", "TRACE_ATTRIBUTION", "JobConfig", "JobSpec", "Placement", "PoolConfig",
    "PoolSpec", "RateTable", "Trace", "TraceColumns", "TrainingState", "WorkloadConfig", "WorkloadSpec", "carve",
    "check_workload", "default_trace", "default_workload", "generate_arrivals", "load_azure_conv", "load_trace",
    "load_workload", "place", "rate_table", "sizing_rate", "validate_workload", "with_pool", "workload_from_dict",
    "workload_to_dict",
]


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
    comm_uc: FloatArray = field(default_factory=lambda: np.zeros(0))  # NaN: the twin's PowerConfig default
    comm_um: FloatArray = field(default_factory=lambda: np.zeros(0))

    @staticmethod
    def from_specs(jobs: Sequence[JobSpec]) -> TrainingState:
        def arr(name: str) -> FloatArray:
            return np.array([float(getattr(j, name)) for j in jobs], dtype=np.float64)

        def opt(name: str) -> FloatArray:
            return np.array([math.nan if getattr(j, name) is None else float(getattr(j, name)) for j in jobs],
                            dtype=np.float64)

        start = arr("start_s")
        every = arr("ckpt_every_s")
        off = arr("ckpt_offset_s")
        pos = np.mod(arr("phase_s") / np.maximum(arr("iter_s"), 1e-9), 1.0)
        return TrainingState(start, arr("stop_s"), arr("iter_s"), arr("compute_frac"), every, arr("ckpt_s"),
                             pos, start + np.where(off > 0, off, every), np.zeros(len(jobs)), opt("comm_uc"),
                             opt("comm_um"))

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


def sizing_rate(trace: Trace, quantile: float = 0.95, window_s: float = 30.0) -> float:
    """The rate pools are sized for: a high quantile of the trace's arrival rate smoothed over `window_s` (the
    rate the twin replays in "rate" mode), not its mean: a bursty trace's 30 s peaks reach 7x its mean."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"sizing quantile must be in (0, 1], got {quantile}")
    rate = rate_table(trace, window_s).rate
    return max(float(np.quantile(rate, quantile)), trace.mean_rate, 1e-9)


def default_workload(site: Site, trace: Trace | None = None, critical_load: float = 0.6, batch_load: float = 0.85,
                     serving_cfg: ServingConfig | None = None, rate_quantile: float = 0.95,
                     rate_window_s: float = 30.0, critical_quantile: float = 0.99) -> WorkloadSpec:
    """A workload that fills a site by its priority classes.

    - inference-critical: 2-8 pools at TP8 of the largest model that fits 8 GPUs (llama3-405b on
      GB200-class GPUs, llama3-70b on H100s), TTFT/TBT SLOs 0.4 s/0.1 s, sized so that mean demand is
      the ``rate_quantile`` (p95) of the trace's ``rate_window_s``-smoothed rate is ``critical_load`` of the
      pool's estimated capacity (docs/twin.md "Workload scaling"), except that critical pools are sized on the
      higher of ``rate_quantile`` and ``critical_quantile`` (p99): their bursts must fit, batch is what is shed
      (issue 14; the reconfiguration's burst reserve, controllers.burst, plans them on the same p99);
    - inference-batch: 2-8 pools, same model, looser SLOs (2 s / 0.2 s), at ``batch_load``;
    - training: 1-8 jobs (about 64 NVL72 racks each at the reference site), steps of 4-7 s, staggered;
    - best-effort: 1-8 fine-tuning jobs that start and stop (job churn).
    Pool shifts spread the pools over the hour of the trace, so they do not peak together. Every figure
    lands in the returned spec, explicitly (``workload_to_dict`` writes it as TOML).
    """
    tr = trace if trace is not None else default_trace()
    cfg = serving_cfg or ServingConfig()
    counts = np.bincount(site.gpu_priority, minlength=len(PRIORITIES))
    pools: list[PoolSpec] = []
    jobs: list[JobSpec] = []
    sized_rps = {"critical": sizing_rate(tr, max(rate_quantile, critical_quantile), rate_window_s),
                 "batch": sizing_rate(tr, rate_quantile, rate_window_s)}
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
            scale = load * inst_est * cap / sized_rps[tier]
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
    return WorkloadSpec(tuple(pools), tuple(jobs), rate_window_s, tr)
