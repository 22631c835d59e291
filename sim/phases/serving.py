"""Serving phase: every inference instance's continuous batching over the step, and the pools' statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from powerplane.site import FloatArray, IntArray
from sim.batching import PhasePower, ServeResult, step_serving
from sim.frames import PoolStats
from sim.phases.power import Clocks
from sim.physics import PowerConfig
from sim.pools import Pool, wsum
from sim.serving import OFF, SERVING, STARTING, Arrivals, InstanceTable, ServingConfig
from sim.slo import isolated_ttft_s, ttft_slo_s
from sim.state import Hardware, TwinState, Units


def serve(pc: PowerConfig, sc: ServingConfig, units: Units, st: TwinState, clk: Clocks, arr: Arrivals, t0: float,
          dt_s: float, n_sub: int) -> ServeResult:
    """Run every instance for dt_s at this step's clocks; updates the instance table and the queue."""
    ni = units.n_inst
    pp = PhasePower(clk.phi_mix, clk.phi_dec, clk.phi_idle, units.u_bare[:ni], units.u_ctx[:ni], units.u_kd[:ni],
                    units.u_km[:ni], st.u_limit[:ni])
    res, st.pending = step_serving(st.tab, st.pending, arr, t0, dt_s, n_sub, pp, pc, sc)
    return res


def request_ttft_slo_s(pools: Sequence[Pool], tab: InstanceTable, pool: IntArray, prompt: FloatArray
                       ) -> FloatArray:
    """Each request's TTFT SLO under the workload's definition (sim.slo), on its pool's configuration now
    (a pool's instances share one; its first slot's constants stand for all)."""
    first = np.array([min(p.lo, max(tab.n - 1, 0)) for p in pools], dtype=np.int64)[pool]
    iso = isolated_ttft_s(prompt, tab.c_tok[first], tab.mem_w[first], tab.overhead[first], tab.chunk[first])
    absolute = np.array([p.spec.ttft_slo_s for p in pools])[pool]
    return ttft_slo_s(pools[0].slo, absolute, iso)


def pool_stats(pools: Sequence[Pool], priority: IntArray, hw: Hardware, units: Units, st: TwinState,
               res: ServeResult, arr_inst: IntArray, p_true: FloatArray, dt_s: float) -> PoolStats:
    """Per-pool statistics of the step; resets the aborted and dropped counts kept since the last frame."""
    tab = st.tab
    n_p = len(pools)

    def by_pool(x: FloatArray) -> FloatArray:
        return wsum(tab.pool, x, n_p)

    rq = res.requests
    ok = rq.ttft_s <= request_ttft_slo_s(pools, tab, rq.pool, rq.prompt_tokens) if rq.pool.size \
        else np.zeros(0, dtype=bool)
    inst_energy = wsum(units.gpu_unit, p_true, units.n_units)[:units.n_inst] * dt_s
    n_gpus_pool = np.array([p.gpus.size for p in pools], dtype=np.float64)
    pool_e = by_pool(inst_energy)
    # GPUs of a pool outside any instance slot idle at bare power.
    slot_gpus = np.array([p.slots.size for p in pools], dtype=np.float64)
    idle_w = np.array([hw.t_bare[int(hw.gpu_type[p.gpus[0]])] for p in pools])
    pool_e += (n_gpus_pool - slot_gpus) * idle_w * dt_s
    dec = by_pool(res.decode_tokens)
    queue = np.bincount(st.pending.inst, minlength=tab.n).astype(np.float64)
    state = tab.state
    stats = PoolStats(
        names=[p.spec.name for p in pools], priority=priority,
        arrivals=np.bincount(tab.pool[arr_inst], minlength=n_p).astype(np.float64),
        first_tokens=np.bincount(rq.pool, minlength=n_p).astype(np.float64),
        ttft_ok=np.bincount(rq.pool[ok], minlength=n_p).astype(np.float64),
        dropped=by_pool(res.dropped) + st.dropped, aborted=st.aborted.copy(),
        completed=by_pool(res.completed), tokens=by_pool(res.tokens), tbt_ok_tokens=by_pool(res.tokens_tbt_ok),
        decode_tokens=dec, tbt_mean_s=np.where(dec > 0, by_pool(res.tbt_weighted_s) / np.maximum(dec, 1e-12),
                                               np.nan),
        waiting=by_pool(queue), running=by_pool(tab.B),
        serving=np.bincount(tab.pool[state == SERVING], minlength=n_p),
        starting=np.bincount(tab.pool[state == STARTING], minlength=n_p),
        off=np.bincount(tab.pool[state == OFF], minlength=n_p),
        power_w=pool_e / dt_s / np.maximum(n_gpus_pool, 1.0), energy_j=pool_e,
    )
    st.aborted[:] = 0.0
    st.dropped[:] = 0.0
    return stats
