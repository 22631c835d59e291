"""The twin's inference pools: their instance slots, the instance table over all of them, routing, and the
reconciliation of instance states with what is wanted (pool sizes) and possible (power, temperature)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from powerplane.site import FloatArray, IntArray, Site
from sim.frames import BoolArray
from sim.physics import GpuSpec
from sim.serving import (
    MODELS,
    OFF,
    SERVING,
    STARTING,
    InstanceTable,
    ModelSpec,
    Pending,
    ServingConfig,
    instance_constants,
    min_tp,
    segments,
)
from sim.slo import SloSpec, isolated_tbt_s, tbt_slo_s
from sim.state import Hardware, TwinState, Units
from sim.workload import Placement, PoolSpec, WorkloadSpec, carve

TABLE_FIELDS = ("pool", "state", "ready_at", "weight", "c_tok", "mem_w", "mem_kv", "overhead", "kv_cap", "chunk",
                "max_batch", "seq_tokens", "ttft_slo", "tbt_slo", "B", "R", "ctx", "head_done")


@dataclass
class Pool:
    spec: PoolSpec
    model: ModelSpec
    gpu: GpuSpec
    gpus: IntArray
    tp: int
    slots: IntArray  # (n_slots, tp) GPU indices
    n_active: int
    lo: int = 0  # slice of the instance table
    hi: int = 0
    surge: float = 1.0
    slo: SloSpec = field(default_factory=SloSpec)  # the workload's SLO definition (sim.slo)


def wsum(idx: IntArray, weights: FloatArray, n: int) -> FloatArray:
    """Weighted counts (np.bincount with weights, typed as floats)."""
    return np.asarray(np.bincount(idx, weights=weights, minlength=n), dtype=np.float64)


def build_pools(site: Site, wl: WorkloadSpec, pl: Placement, hw: Hardware, cfg: ServingConfig
                ) -> tuple[list[Pool], list[str]]:
    """The pools of a placed workload, and what is wrong with the ones that cannot run."""
    pools: list[Pool] = []
    errs: list[str] = []
    for spec, gpus in zip(wl.pools, pl.pool_gpus, strict=True):
        types = np.unique(hw.gpu_type[gpus]) if gpus.size else np.zeros(0, dtype=np.int64)
        if types.size != 1:
            errs.append(f"{spec.name}: needs GPUs of exactly one server type, got {types.size}")
            continue
        st = site.server_types[hw.type_ids[int(types[0])]]
        gspec = hw.specs[int(types[0])]
        model = MODELS[spec.model]
        tp = spec.tp
        if tp < min_tp(model, gspec, cfg):
            errs.append(f"{spec.name}: {spec.model} does not fit in {tp} x {st.gpu_model} "
                        f"(needs TP >= {min_tp(model, gspec, cfg)})")
            continue
        slots = carve(site, gpus, tp)
        if slots.shape[0] == 0:
            errs.append(f"{spec.name}: no instance of {tp} GPUs fits in its {gpus.size} GPUs")
            continue
        n_act = slots.shape[0] if spec.instances is None else max(0, min(spec.instances, slots.shape[0]))
        pools.append(Pool(spec, model, gspec, gpus, tp, slots, n_act, slo=wl.slo))
    return pools, errs


def _pool_table(pi: int, p: Pool, serving: bool, t_s: float, seq_tok: float, cfg: ServingConfig
                ) -> dict[str, FloatArray | IntArray]:
    k = instance_constants(p.model, p.gpu, p.tp, cfg)
    n = p.slots.shape[0]
    one = np.ones(n)
    state = np.where(np.arange(n) < p.n_active, SERVING if serving else STARTING, OFF)
    # A lone sequence of typical context at max clock: the isolated TBT a relative SLO scales.
    iso_tbt = isolated_tbt_s(one * k.c_tok_s, one * k.mem_w_s, one * k.mem_kv_s, one * k.overhead_s, one * seq_tok)
    return {
        "pool": np.full(n, pi, dtype=np.int64), "state": state.astype(np.int64),
        "ready_at": np.where(state == STARTING, t_s + cfg.reconfig_delay_s, 0.0),
        "weight": one.copy(), "c_tok": one * k.c_tok_s, "mem_w": one * k.mem_w_s,
        "mem_kv": one * k.mem_kv_s, "overhead": one * k.overhead_s, "kv_cap": one * k.kv_cap_tokens,
        "chunk": one * p.spec.chunk_tokens, "max_batch": one * p.spec.max_batch, "seq_tokens": one * seq_tok,
        "ttft_slo": one * p.spec.ttft_slo_s, "tbt_slo": tbt_slo_s(p.slo, one * p.spec.tbt_slo_s, iso_tbt),
        "B": np.zeros(n), "R": np.zeros(n), "ctx": np.zeros(n), "head_done": np.zeros(n),
    }


def new_table(pools: list[Pool], t_s: float, seq_tok: float, cfg: ServingConfig, fresh: int | None = None,
              old: InstanceTable | None = None) -> InstanceTable:
    """Instance table over all pools; pool `fresh` gets new (reconfiguring) instances, others keep theirs.

    Sets every pool's slice (lo, hi) of the table. seq_tok: the typical context of one sequence.
    """
    parts: list[dict[str, FloatArray | IntArray]] = []
    lo = 0
    for pi, p in enumerate(pools):
        if old is None or pi == fresh:
            part = _pool_table(pi, p, old is None, t_s, seq_tok, cfg)
        else:
            part = {name: getattr(old, name)[p.lo:p.hi].copy() for name in TABLE_FIELDS}
            part["pool"] = np.full(p.hi - p.lo, pi, dtype=np.int64)
        parts.append(part)
        n = p.slots.shape[0]
        p.lo, p.hi = lo, lo + n
        lo += n
    cols = {name: np.concatenate([pt[name] for pt in parts]) if parts else np.zeros(0) for name in TABLE_FIELDS}
    cols["pool"] = cols["pool"].astype(np.int64)
    cols["state"] = cols["state"].astype(np.int64)
    return InstanceTable(**cols)  # type: ignore[arg-type]


def routing_probs(tab: InstanceTable, n_pools: int) -> FloatArray:
    """Probability that a request of an instance's pool goes to it: routing weights over the instances that
    serve (or, in a pool where none serves yet, that are starting); uniform where the weights are all 0."""
    serving = tab.state == SERVING
    starting = tab.state == STARTING
    has_serving = wsum(tab.pool, serving, n_pools) > 0
    elig = serving | (starting & ~has_serving[tab.pool])
    we = np.where(elig, tab.weight, 0.0)
    tot = wsum(tab.pool, we, n_pools)
    cnt = wsum(tab.pool, elig, n_pools)
    uniform = (tot[tab.pool] <= 0) & elig
    prob = np.where(uniform, 1.0 / np.maximum(cnt[tab.pool], 1.0), we / np.maximum(tot[tab.pool], 1e-300))
    return np.asarray(prob, dtype=np.float64)


def requeue(st: TwinState, pools: list[Pool], moved: BoolArray, pool_of: IntArray, rng: np.random.Generator
            ) -> None:
    """Send the marked waiting requests to other instances of their pool (to the back of the queue).

    pool_of: the pool of every pending request. Requests of a pool with nowhere to go are dropped.
    """
    pend = st.pending
    new_inst = pend.inst.copy()
    keep = np.ones(len(pend), dtype=bool)
    if moved.any():
        prob = routing_probs(st.tab, len(pools))
        for pi, p in enumerate(pools):
            sel = np.flatnonzero(moved & (pool_of == pi))
            if sel.size == 0:
                continue
            pr = prob[p.lo:p.hi]
            if pr.sum() <= 0:
                keep[sel] = False
                st.dropped[pi] += sel.size
                continue
            cdf = np.cumsum(pr) / pr.sum()
            pick = np.searchsorted(cdf, rng.random(sel.size), side="right")
            new_inst[sel] = p.lo + np.minimum(pick, pr.size - 1)
    order = np.lexsort((np.arange(len(pend)), moved, new_inst))
    order = order[keep[order]]
    inst = new_inst[order]
    st.pending = Pending(inst, pend.t_arr[order], pend.prompt[order], pend.output[order],
                         segments(inst, st.tab.n))


def take_down(st: TwinState, pools: list[Pool], mask: BoolArray, rng: np.random.Generator) -> None:
    """Stop instances: running sequences are lost, waiting requests move to the pool's others."""
    tab = st.tab
    if not mask.any():
        return
    st.aborted += np.bincount(tab.pool[mask], weights=tab.B[mask], minlength=len(pools))
    tab.B[mask] = 0.0
    tab.R[mask] = 0.0
    tab.ctx[mask] = 0.0
    tab.head_done[mask] = 0.0
    tab.state[mask] = OFF
    pend = st.pending
    requeue(st, pools, mask[pend.inst], tab.pool[pend.inst], rng)


def apply_availability(site: Site, st: TwinState, pools: list[Pool], units: Units, start_delay_s: float,
                       rng: np.random.Generator) -> None:
    """Reconcile instance states with what is wanted (pool sizes) and possible (power, temperature)."""
    ok_gpu = ~(st.rack_dark[site.gpu_rack] | st.gpu_shutdown)
    ok = units.unit_min(ok_gpu.astype(np.float64)) > 0.5
    inst_ok = ok[:units.n_inst]
    st.job_avail = ok[units.n_inst:]
    tab = st.tab
    n_active = np.array([p.n_active for p in pools], dtype=np.int64)
    desired = units.inst_slot < n_active[tab.pool] if tab.n else np.zeros(0, dtype=bool)
    down = (tab.state != OFF) & ~(desired & inst_ok)
    up = (tab.state == OFF) & desired & inst_ok
    take_down(st, pools, down, rng)
    tab.state[up] = STARTING
    tab.ready_at[up] = st.t_s + start_delay_s
    st.avail_dirty = False
