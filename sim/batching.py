"""One step of continuous batching over every inference instance (the model: ``sim/serving.py``).

``step_serving`` runs in named parts: the queue (timeouts, this step's arrivals), the step's constants per
instance, the substeps (admission, mixed and decode-only iterations, completions, prefill progress), each
request's first token, and the queue for the next step. Vectorized over instances; pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray, IntArray
from sim.physics import PowerConfig, dyn_rel, mem_power_w, static_w
from sim.serving import (
    OFF,
    SERVING,
    Arrivals,
    InstanceTable,
    Pending,
    Requests,
    ServingConfig,
    merge_pending,
    segments,
)

BoolArray = npt.NDArray[np.bool_]


@dataclass
class PhasePower:
    """Per-instance power inputs for one step: clocks per phase (already capped) and GPU power figures."""

    phi_mix: FloatArray
    phi_dec: FloatArray
    phi_idle: FloatArray
    bare_w: FloatArray
    ctx_w: FloatArray
    kd_w: FloatArray
    km_w: FloatArray
    limit_w: FloatArray  # the lowest enforced limit among the instance's GPUs


@dataclass
class ServeResult:
    """One step of serving, per instance (power figures are per GPU of the instance)."""

    avg_power_w: FloatArray
    busy_frac: FloatArray
    avg_phi: FloatArray  # time-weighted clock while busy (phi_idle when idle)
    # The last substep, for measurement: fractions of time in the mixed (prefill) and decode phases and
    # the power of each phase (and of idle).
    last_f_mix: FloatArray
    last_f_dec: FloatArray
    last_p_mix: FloatArray
    last_p_dec: FloatArray
    last_p_idle: FloatArray
    tokens: FloatArray  # output tokens generated (including first tokens)
    tokens_tbt_ok: FloatArray  # decode tokens whose gap from the previous token met the TBT SLO
    tbt_weighted_s: FloatArray  # sum over decode tokens of their gap (mean TBT = this / decode tokens)
    decode_tokens: FloatArray
    completed: FloatArray  # sequences that finished (fluid)
    prefill_tokens: FloatArray
    dropped: FloatArray  # requests that timed out waiting
    requests: Requests


def step_serving(tab: InstanceTable, pending: Pending, arrivals: Arrivals, t0: float, dt: float, n_sub: int,
                 pp: PhasePower, power_cfg: PowerConfig, serving_cfg: ServingConfig,
                 ) -> tuple[ServeResult, Pending]:
    """Advance every instance by dt (n_sub substeps); returns per-instance results and the new queue."""
    h = dt / n_sub
    q, dropped = _enqueue(tab, pending, arrivals, t0, h, n_sub, serving_cfg)
    c = _step_constants(tab, pp, power_cfg)
    r = _substeps(tab, q, c, pp, h, n_sub)
    f_m = r.t_m / h  # the last substep's phase shares, for the sensors
    f_d = r.t_d / h
    tiny = r.B < 1e-3  # the fluid's tail: nothing is running any more
    tab.B = np.where(tiny, 0.0, r.B)
    tab.R = np.where(tiny, 0.0, r.R)
    tab.ctx = np.where(tiny, 0.0, r.ctx)
    busy = r.t_mix + r.t_dec
    energy = r.e_busy + (dt - busy) * c.p_idle
    phi_t = r.t_mix * pp.phi_mix + r.t_dec * pp.phi_dec + (dt - busy) * pp.phi_idle
    first = (r.ptr - q.pend.seg[:-1]).astype(np.float64)
    tokens = r.dec_tok + first
    pre_total = r.S - tab.head_done
    reqs, done_mask = _first_tokens(tab, q, r, pp, t0, h, n_sub)
    new_pend = _next_queue(tab, q, r, done_mask)
    avg_power = energy / dt
    res = ServeResult(
        avg_power_w=avg_power, busy_frac=busy / dt, avg_phi=phi_t / dt,
        last_f_mix=f_m, last_f_dec=f_d, last_p_mix=r.p_m, last_p_dec=r.p_d, last_p_idle=c.p_idle,
        tokens=tokens, tokens_tbt_ok=r.tok_ok, tbt_weighted_s=r.tbt_w, decode_tokens=r.dec_tok,
        completed=r.completed, prefill_tokens=pre_total, dropped=dropped, requests=reqs,
    )
    return res, new_pend


@dataclass
class _Queue:
    """The step's waiting requests (kept old ones, then this step's arrivals, per instance), laid out for the
    substeps."""

    pend: Pending
    x_end: FloatArray  # cumulative prompt tokens within the instance's queue up to and including each request
    x_ext: FloatArray  # x_end, then +inf
    cum_out: FloatArray  # (len + 1,) cumulative output tokens over the whole queue
    cum_prompt: FloatArray  # ... and prompt tokens
    arr_n: FloatArray  # (n_sub, n) arrivals per substep and instance: only arrived prompts can be prefilled
    arr_tok: FloatArray  # ... their prompt tokens
    qn: FloatArray  # requests waiting (old ones at the start; the substeps add arrivals, remove prefilled)
    avail: FloatArray  # prompt tokens that can be prefilled (ditto)


def _enqueue(tab: InstanceTable, pending: Pending, arrivals: Arrivals, t0: float, h: float, n_sub: int,
             cfg: ServingConfig) -> tuple[_Queue, FloatArray]:
    """Drop timed-out waiting requests (returns how many per instance), append this step's arrivals."""
    n = tab.n
    timed_out = pending.t_arr < t0 - cfg.queue_timeout_s
    dropped = np.bincount(pending.inst[timed_out], minlength=n).astype(np.float64)
    if timed_out.any():
        heads = pending.seg[:-1][pending.seg[:-1] < pending.seg[1:]]
        lost_head = np.zeros(n, dtype=bool)
        lost_head[pending.inst[heads]] = timed_out[heads]
        tab.head_done[lost_head] = 0.0
    pend, is_new = merge_pending(pending, ~timed_out, arrivals, t0, n)
    seg_lo = pend.seg[:-1]
    cs = np.cumsum(pend.prompt)
    base = np.zeros(n)
    nz = seg_lo > 0
    base[nz] = cs[seg_lo[nz] - 1]
    x_end = cs - base[pend.inst] if len(pend) else cs
    sub = np.minimum((arrivals.offset_s / h).astype(np.int64), n_sub - 1)
    key = sub * n + arrivals.inst  # rows of (substep, instance) are contiguous
    old = 1.0 - is_new
    return _Queue(
        pend=pend, x_end=x_end, x_ext=np.append(x_end, np.inf),
        cum_out=np.concatenate(([0.0], np.cumsum(pend.output))), cum_prompt=np.concatenate(([0.0], cs)),
        arr_n=np.bincount(key, minlength=n * n_sub).reshape(n_sub, n).astype(np.float64),
        arr_tok=np.asarray(np.bincount(key, weights=arrivals.prompt, minlength=n * n_sub), dtype=np.float64
                           ).reshape(n_sub, n),
        qn=np.bincount(pend.inst, weights=old, minlength=n).astype(np.float64),
        avail=np.bincount(pend.inst, weights=pend.prompt * old, minlength=n) - tab.head_done,
    ), dropped


@dataclass
class _StepConstants:
    """Per instance, fixed for the step: clocks and limits change only between steps."""

    srv: FloatArray  # 1.0 where serving
    c_chunk: FloatArray  # compute seconds of a prompt chunk at max clock
    srv_chunk: FloatArray  # srv / chunk
    inv_m: FloatArray  # 1 / clock of mixed iterations
    inv_d: FloatArray  # 1 / clock of decode iterations
    kv_room: FloatArray  # sequences the KV cache holds
    inv_seq: FloatArray
    st_m: FloatArray  # static power in the mixed phase
    st_d: FloatArray
    kdd_m: FloatArray  # dynamic power at the mixed clock
    kdd_d: FloatArray
    km_m: FloatArray  # memory power at the mixed clock
    km_d: FloatArray
    p_idle: FloatArray  # idle power (bare when off)


def _step_constants(tab: InstanceTable, pp: PhasePower, power_cfg: PowerConfig) -> _StepConstants:
    srv = (tab.state == SERVING).astype(np.float64)
    d_m, d_d = dyn_rel(pp.phi_mix, power_cfg), dyn_rel(pp.phi_dec, power_cfg)
    return _StepConstants(
        srv=srv, c_chunk=tab.c_tok * tab.chunk, srv_chunk=srv / tab.chunk, inv_m=1.0 / pp.phi_mix,
        inv_d=1.0 / pp.phi_dec, kv_room=tab.kv_cap / tab.seq_tokens, inv_seq=1.0 / tab.seq_tokens,
        st_m=static_w(pp.phi_mix, pp.bare_w, pp.ctx_w, power_cfg),
        st_d=static_w(pp.phi_dec, pp.bare_w, pp.ctx_w, power_cfg),
        kdd_m=pp.kd_w * d_m, kdd_d=pp.kd_w * d_d, km_m=mem_power_w(pp.km_w, d_m, power_cfg),
        km_d=mem_power_w(pp.km_w, d_d, power_cfg),
        p_idle=np.where(tab.state == OFF, pp.bare_w, static_w(pp.phi_idle, pp.bare_w, pp.ctx_w, power_cfg)),
    )


@dataclass
class _Run:
    """The substeps' outcome: the fluid state and queue pointers at the end, sums over the substeps (time in
    the mixed and decode phases, energy, tokens, TBT bookkeeping), trajectories for the first tokens, and
    the last substep's phase times and powers (for the sensors)."""

    B: FloatArray
    R: FloatArray
    ctx: FloatArray
    S: FloatArray  # prompt tokens prefilled in the instance's queue
    ptr: IntArray  # first request of the instance's queue not yet prefilled
    e_busy: FloatArray
    t_mix: FloatArray
    t_dec: FloatArray
    tok_ok: FloatArray
    tbt_w: FloatArray
    dec_tok: FloatArray
    completed: FloatArray
    s_traj: FloatArray  # (n_sub + 1, n) S before and after every substep
    p_traj: IntArray  # (n_sub, n) ptr after every substep
    t_m: FloatArray
    t_d: FloatArray
    p_m: FloatArray
    p_d: FloatArray


def _substeps(tab: InstanceTable, q: _Queue, c: _StepConstants, pp: PhasePower, h: float, n_sub: int) -> _Run:
    """Continuous batching, substep by substep: admit waiting prompts, run mixed (decodes + a prompt chunk)
    then decode-only iterations, complete sequences, move finished prompts into the decode batch."""
    n = tab.n
    B, R, ctx = tab.B, tab.R, tab.ctx
    mem_w, mem_kv, over, c_tok, chunk, tbt_slo = tab.mem_w, tab.mem_kv, tab.overhead, tab.c_tok, tab.chunk, tab.tbt_slo
    S = tab.head_done.copy()
    seg_hi = q.pend.seg[1:]
    ptr = q.pend.seg[:-1].copy()
    qn, avail, x_ext = q.qn, q.avail, q.x_ext
    e_busy, t_mix, t_dec, tok_ok, tbt_w, dec_tok, completed = (np.zeros(n) for _ in range(7))
    s_traj = np.empty((n_sub + 1, n))
    s_traj[0] = S
    p_traj = np.empty((n_sub, n), dtype=np.int64)
    t_m = t_d = p_m = p_d = np.zeros(n)
    eps = 1e-6
    n_pend = q.x_end.size
    for k in range(n_sub):
        qn += q.arr_n[k]
        avail += q.arr_tok[k]
        # Admission: a free batch slot and KV room for each prompt that starts prefilling.
        slots = np.minimum(tab.max_batch - B, c.kv_room - ctx * c.inv_seq)
        n_adm = np.minimum(np.floor(np.maximum(slots, 0.0)), qn)
        idx = np.minimum(np.maximum(ptr + n_adm.astype(np.int64) - 1, 0), n_pend)
        adm = np.where(n_adm >= 1.0, np.minimum(x_ext[idx] - S, avail), 0.0)
        # Mixed iterations (decodes + a prompt chunk) while admitted prompt tokens remain, then decode-only.
        mem = mem_w + mem_kv * ctx
        cb = c_tok * B
        tc_m = (c.c_chunk + cb) * c.inv_m
        tau_m = np.maximum(tc_m, mem) + over
        t_m = np.minimum(h, np.maximum(adm, 0.0) * c.srv_chunk * tau_m)
        it_m = t_m / tau_m
        pre = it_m * chunk
        tc_d = cb * c.inv_d
        tau_d = np.maximum(tc_d, mem) + over
        # Decode-only iterations fill the rest of the substep while sequences run. Below one sequence the
        # fluid B is the chance that one runs: it iterates at full speed, but busy time (power) is B-weighted.
        rest = (h - t_m) * c.srv
        t_d = rest * np.minimum(B, 1.0)
        it_d = rest * (eps < B) / tau_d
        n_it = it_m + it_d
        # Decode: memoryless completions given the mean remaining length R/B; tokens conserved. At most one
        # sequence's worth (B <= 1) runs to its end and stops: a lone request holds its power to the last
        # token, as real GPUs do, instead of fading out over several of its lengths.
        decay = np.exp(-n_it / np.maximum(R / np.maximum(B, eps), 1.0))
        lone = B <= 1.0
        r_lone = np.maximum(R - B * n_it, 0.0)
        decay = np.where(lone, r_lone > 0.0, decay)
        b_new = B * decay
        r_new = np.where(lone, r_lone, R * decay)
        gen = R - r_new
        tok_m = gen * (it_m / np.maximum(n_it, 1e-12))
        tok_d = gen - tok_m
        tok_ok += tok_m * (tau_m <= tbt_slo) + tok_d * (tau_d <= tbt_slo)
        tbt_w += tok_m * tau_m + tok_d * tau_d
        dec_tok += gen
        # Prefill progress and first tokens: advance each instance's FIFO pointer past finished prompts.
        S = S + pre
        avail -= pre
        old_ptr = ptr.copy()
        _advance_fifo(ptr, seg_hi, x_ext, S, eps)
        done = (ptr - old_ptr).astype(np.float64)
        qn -= done
        # Each finished prompt joins the decode batch with its context and its remaining output tokens
        # (at least one: the first token came from the prefill).
        completed += B - b_new
        B = b_new + done
        R = r_new + np.maximum(q.cum_out[ptr] - q.cum_out[old_ptr] - done, done)
        ctx = ctx * decay + b_new * n_it + (q.cum_prompt[ptr] - q.cum_prompt[old_ptr]) + done
        s_traj[k + 1] = S
        p_traj[k] = ptr
        # Power of each phase at its clock; the limiter holds each phase at or below the enforced limit.
        p_m = np.minimum(c.st_m + (c.kdd_m * tc_m + c.km_m * mem) / tau_m, pp.limit_w)
        p_d = np.minimum(c.st_d + (c.kdd_d * tc_d + c.km_d * mem) / tau_d, pp.limit_w)
        e_busy += t_m * p_m + t_d * p_d
        t_mix += t_m
        t_dec += t_d
    return _Run(B, R, ctx, S, ptr, e_busy, t_mix, t_dec, tok_ok, tbt_w, dec_tok, completed, s_traj, p_traj,
                t_m, t_d, p_m, p_d)


def _advance_fifo(ptr: IntArray, seg_hi: IntArray, x_ext: FloatArray, S: FloatArray, eps: float) -> None:
    """Move each instance's FIFO pointer past the prompts its prefill has finished (in place)."""
    act = np.flatnonzero((ptr < seg_hi) & (x_ext[ptr] <= S + eps))
    while act.size:  # later rounds only touch the instances that are still advancing
        ptr[act] += 1
        pa = ptr[act]
        act = act[(pa < seg_hi[act]) & (x_ext[pa] <= S[act] + eps)]


def _first_tokens(tab: InstanceTable, q: _Queue, r: _Run, pp: PhasePower, t0: float, h: float, n_sub: int
                  ) -> tuple[Requests, BoolArray]:
    """Every request that got its first token this step, with its TTFT; and which queue entries those are."""
    pend = q.pend
    j = np.arange(len(pend))
    done_mask = j < r.ptr[pend.inst] if len(pend) else np.zeros(0, dtype=bool)
    dj = np.flatnonzero(done_mask)
    di = pend.inst[dj]
    # The substep in which request j (of instance i) got its first token is the number of instance i's
    # after-substep pointers <= j. Every pointer of an earlier instance is <= j and every pointer of a later
    # one is > j, so counting all pointers <= j (one bincount + cumsum) and subtracting i * n_sub gives it.
    le = np.cumsum(np.bincount(r.p_traj.ravel(), minlength=len(pend) + 1))
    ksub = np.minimum(np.maximum(le[dj] - di * n_sub, 0), n_sub - 1)
    s0 = r.s_traj[ksub, di]
    s1 = r.s_traj[ksub + 1, di]
    frac = np.minimum(np.maximum((q.x_end[dj] - s0) / np.maximum(s1 - s0, 1e-9), 0.0), 1.0)
    t_first = t0 + (ksub + frac) * h
    t_arr = pend.t_arr[dj]
    # A prompt cannot finish before it arrived plus its own compute time.
    t_first = np.maximum(t_first, t_arr + pend.prompt[dj] * tab.c_tok[di] / pp.phi_mix[di])
    reqs = Requests(pool=tab.pool[di], t_arrival_s=t_arr, ttft_s=t_first - t_arr,
                    prompt_tokens=pend.prompt[dj], output_tokens=pend.output[dj])
    return reqs, done_mask


def _next_queue(tab: InstanceTable, q: _Queue, r: _Run, done_mask: BoolArray) -> Pending:
    """The queue for the next step: unfinished requests; the head keeps its partial progress (head_done)."""
    pend = q.pend
    seg_lo, seg_hi = pend.seg[:-1], pend.seg[1:]
    last_done = np.where(r.ptr > seg_lo, q.x_ext[np.maximum(r.ptr - 1, 0)], 0.0)
    tab.head_done = np.maximum(r.S - last_done, 0.0) * (r.ptr < seg_hi)
    keep = ~done_mask
    k_inst = pend.inst[keep]
    return Pending(k_inst, pend.t_arr[keep], pend.prompt[keep], pend.output[keep], segments(k_inst, tab.n))


def representative_phases(tab: InstanceTable) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(compute s, memory s) of a mixed and of a decode iteration in the instance's current state at max
    clock, for the cap solver: (c_mix, c_dec, mem, overhead)."""
    mem = tab.mem_w + tab.mem_kv * tab.ctx
    return tab.c_tok * (tab.chunk + tab.B), tab.c_tok * np.maximum(tab.B, 1.0), mem, tab.overhead
