"""LLM inference serving per instance: continuous batching with chunked prefill, vectorized over instances.

An *instance* is one model replica on ``tp`` GPUs (tensor parallelism). Each scheduler iteration is one
forward pass over the running decodes (one token each) plus, while prompts wait, a chunk of up to
``chunk_tokens`` prompt tokens (chunked prefill, as in vLLM and Sarathi-Serve). Its duration follows a
roofline: compute time (2 x params FLOPs per token, split over ``tp`` GPUs, stretched by 1/clock) against
memory time (weights + KV cache read once per iteration, clock-independent), plus a fixed overhead. So
prefill is compute-bound and slows with the clock; decode is memory-bound and barely does.

State per instance is a fluid (running sequences B, their remaining output tokens R, their KV context),
advanced in substeps; prompts wait in a FIFO of *individual requests*, so every request gets its own
time to first token (TTFT). Decode completions are memoryless given R/B (tokens are conserved exactly;
which sequence finishes when is approximated), so time between tokens (TBT) is tracked per generated
token and instance, not per request. Pure numpy, no I/O; ``docs/twin.md`` gives the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from powerplane.site import FloatArray, IntArray
from sim.physics import GpuSpec, PowerConfig, dyn_rel, roofline, static_w

# Instance states.
OFF, STARTING, SERVING = 0, 1, 2


@dataclass(frozen=True)
class ModelSpec:
    """An LLM as the roofline sees it."""

    name: str
    params: float  # parameter count
    layers: int
    kv_bytes_per_token: float  # K and V, all layers, BF16
    bytes_per_param: float = 2.0  # BF16 weights


def _kv(layers: int, kv_heads: int, head_dim: int) -> float:
    return float(2 * layers * kv_heads * head_dim * 2)


MODELS: dict[str, ModelSpec] = {
    # Public architecture figures (grouped-query attention with 8 KV heads of 128 dims).
    "llama3-8b": ModelSpec("llama3-8b", 8.0e9, 32, _kv(32, 8, 128)),
    "llama2-70b": ModelSpec("llama2-70b", 70.0e9, 80, _kv(80, 8, 128)),  # the model of Towards Greener LLMs
    "llama3-70b": ModelSpec("llama3-70b", 70.6e9, 80, _kv(80, 8, 128)),
    "llama3-405b": ModelSpec("llama3-405b", 405.0e9, 126, _kv(126, 8, 128)),
}


@dataclass(frozen=True)
class ServingConfig:
    """Serving-engine constants shared by every pool (per-pool settings live in PoolSpec)."""

    mfu: float = 0.6  # fraction of peak tensor throughput a prefill chunk achieves (assumption)
    mbu: float = 0.8  # fraction of HBM bandwidth an iteration achieves (assumption)
    iter_overhead_s: float = 0.003  # scheduler, sampling and kernel-launch time per iteration (assumption)
    allreduce_s: float = 8e-6  # latency of one tensor-parallel all-reduce; 2 per layer (assumption)
    kv_mem_frac: float = 0.9  # share of HBM left after weights usable for KV cache (vLLM's default 0.9)
    substep_s: float = 0.1  # serving substep; a step of dt runs ceil(dt / substep_s) substeps
    queue_timeout_s: float = 60.0  # a request waiting longer than this is dropped (assumption)
    start_delay_s: float = 30.0  # a new instance loads weights before serving (assumption; DynamoLLM
    #   models reconfiguration cost, BRIEF.md)
    reconfig_delay_s: float = 30.0  # a tensor-parallel change re-shards weights: serves nothing meanwhile
    #   (assumption, same source)


@dataclass(frozen=True)
class InstanceConstants:
    c_tok_s: float  # compute seconds per token at max clock
    mem_w_s: float  # seconds to read this GPU's weight shard
    mem_kv_s: float  # seconds per context token of KV read
    overhead_s: float
    kv_cap_tokens: float  # KV-cache capacity of the instance


def instance_constants(model: ModelSpec, gpu: GpuSpec, tp: int, cfg: ServingConfig) -> InstanceConstants:
    flops = gpu.peak_tflops * 1e12 * cfg.mfu
    bw = gpu.hbm_tb_s * 1e12 * cfg.mbu
    weights = model.params * model.bytes_per_param
    free = max(gpu.hbm_gb * 1e9 * tp * cfg.kv_mem_frac - weights, 0.0)
    over = cfg.iter_overhead_s + (2 * model.layers * cfg.allreduce_s if tp > 1 else 0.0)
    return InstanceConstants(
        c_tok_s=2.0 * model.params / (tp * flops),
        mem_w_s=weights / (tp * bw),
        mem_kv_s=model.kv_bytes_per_token / (tp * bw),
        overhead_s=over,
        kv_cap_tokens=free / model.kv_bytes_per_token,
    )


def min_tp(model: ModelSpec, gpu: GpuSpec, cfg: ServingConfig, headroom_tokens: float = 65536.0) -> int:
    """Smallest power-of-two TP degree whose HBM holds the weights plus some KV cache."""
    tp = 1
    while tp < 1024:
        if gpu.hbm_gb * 1e9 * tp * cfg.kv_mem_frac >= model.params * model.bytes_per_param + \
                headroom_tokens * model.kv_bytes_per_token:
            return tp
        tp *= 2
    return tp


def estimate_capacity_rps(model: ModelSpec, gpu: GpuSpec, tp: int, chunk_tokens: int, max_batch: int,
                          mean_prompt: float, mean_output: float, cfg: ServingConfig,
                          batch_frac: float = 0.5) -> float:
    """Requests/s one instance sustains at max clock with a batch of batch_frac * max_batch running.

    Used to choose default rate scales (docs/twin.md "Workload scaling"); the simulation itself never
    uses it.
    """
    k = instance_constants(model, gpu, tp, cfg)
    b = max(1.0, batch_frac * max_batch)
    ctx = b * (mean_prompt + mean_output / 2.0)
    one = np.ones(1)
    tau_m, _, _ = roofline(one * k.c_tok_s * (chunk_tokens + b), one * (k.mem_w_s + k.mem_kv_s * ctx),
                           one * k.overhead_s, one)
    tau_d, _, _ = roofline(one * k.c_tok_s * b, one * (k.mem_w_s + k.mem_kv_s * ctx), one * k.overhead_s, one)
    per_req = mean_prompt / chunk_tokens * float(tau_m[0]) + mean_output * float(tau_d[0]) / b
    return 1.0 / per_req


# ======================================================================================
# Instance table and request queues
# ======================================================================================


@dataclass
class Arrivals:
    """Requests arriving in one step, grouped by instance, in arrival order within each instance."""

    inst: IntArray
    offset_s: FloatArray  # since the step's start
    prompt: FloatArray
    output: FloatArray

    @staticmethod
    def empty() -> Arrivals:
        z = np.zeros(0)
        return Arrivals(np.zeros(0, dtype=np.int64), z, z.copy(), z.copy())


@dataclass
class Requests:
    """Requests that got their first token in a step (ground truth, one entry per request)."""

    pool: IntArray
    t_arrival_s: FloatArray
    ttft_s: FloatArray
    prompt_tokens: FloatArray
    output_tokens: FloatArray


@dataclass
class Pending:
    """Waiting requests, grouped by instance (CSR offsets ``seg``), FIFO within an instance."""

    inst: IntArray
    t_arr: FloatArray
    prompt: FloatArray
    output: FloatArray
    seg: IntArray  # (n_inst + 1,) offsets

    @staticmethod
    def empty(n_inst: int) -> Pending:
        z = np.zeros(0)
        return Pending(np.zeros(0, dtype=np.int64), z, z.copy(), z.copy(), np.zeros(n_inst + 1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.inst.size)


def segments(inst: IntArray, n_inst: int) -> IntArray:
    seg = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(np.bincount(inst, minlength=n_inst), out=seg[1:])
    return seg


def merge_pending(old: Pending, keep: np.ndarray, new: Arrivals, t0: float, n_inst: int) -> tuple[Pending, IntArray]:
    """Kept old requests, then the step's arrivals, per instance. Returns (pending, old-first rank flag).

    Both inputs are grouped by instance, so the merge is a scatter by computed destinations, not a sort.
    The second result is 1 for new arrivals, 0 for old requests (in the merged order).
    """
    o_inst = old.inst[keep]
    o_cnt = np.bincount(o_inst, minlength=n_inst)
    n_cnt = np.bincount(new.inst, minlength=n_inst)
    seg = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(o_cnt + n_cnt, out=seg[1:])
    o_start = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(o_cnt, out=o_start[1:])
    n_start = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(n_cnt, out=n_start[1:])
    total = int(seg[-1])
    dest_o = seg[o_inst] + (np.arange(o_inst.size) - o_start[o_inst])
    dest_n = seg[new.inst] + o_cnt[new.inst] + (np.arange(new.inst.size) - n_start[new.inst])
    inst = np.empty(total, dtype=np.int64)
    t_arr = np.empty(total)
    prompt = np.empty(total)
    output = np.empty(total)
    is_new = np.empty(total, dtype=np.int64)
    inst[dest_o] = o_inst
    inst[dest_n] = new.inst
    t_arr[dest_o] = old.t_arr[keep]
    t_arr[dest_n] = t0 + new.offset_s
    prompt[dest_o] = old.prompt[keep]
    prompt[dest_n] = new.prompt
    output[dest_o] = old.output[keep]
    output[dest_n] = new.output
    is_new[dest_o] = 0
    is_new[dest_n] = 1
    return Pending(inst, t_arr, prompt, output, seg), is_new


@dataclass
class InstanceTable:
    """Structure-of-arrays over all instances of all pools (pools are contiguous slices)."""

    pool: IntArray
    state: IntArray
    ready_at: FloatArray
    weight: FloatArray  # routing weight (applied, >= 0)
    c_tok: FloatArray
    mem_w: FloatArray
    mem_kv: FloatArray
    overhead: FloatArray
    kv_cap: FloatArray
    chunk: FloatArray
    max_batch: FloatArray
    seq_tokens: FloatArray  # typical context of one sequence, for KV admission
    ttft_slo: FloatArray
    tbt_slo: FloatArray
    # Fluid decode state.
    B: FloatArray = field(default_factory=lambda: np.zeros(0))
    R: FloatArray = field(default_factory=lambda: np.zeros(0))
    ctx: FloatArray = field(default_factory=lambda: np.zeros(0))
    head_done: FloatArray = field(default_factory=lambda: np.zeros(0))  # prompt tokens of the head already done

    def __post_init__(self) -> None:
        n = self.pool.size
        for name in ("B", "R", "ctx", "head_done"):
            if getattr(self, name).size != n:
                setattr(self, name, np.zeros(n))

    @property
    def n(self) -> int:
        return int(self.pool.size)


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
    n = tab.n
    h = dt / n_sub
    # ---- queue: drop timed-out waiting requests, append this step's arrivals ------------------
    timed_out = pending.t_arr < t0 - serving_cfg.queue_timeout_s
    dropped = np.bincount(pending.inst[timed_out], minlength=n).astype(np.float64)
    if timed_out.any():
        heads = pending.seg[:-1][pending.seg[:-1] < pending.seg[1:]]
        lost_head = np.zeros(n, dtype=bool)
        lost_head[pending.inst[heads]] = timed_out[heads]
        tab.head_done[lost_head] = 0.0
    pend, is_new = merge_pending(pending, ~timed_out, arrivals, t0, n)
    seg = pend.seg
    seg_lo, seg_hi = seg[:-1], seg[1:]
    # x_end: cumulative prompt tokens within the instance's queue up to and including each request.
    cs = np.cumsum(pend.prompt)
    base = np.zeros(n)
    nz = seg_lo > 0
    base[nz] = cs[seg_lo[nz] - 1]
    x_end = cs - base[pend.inst] if len(pend) else cs
    x_ext = np.append(x_end, np.inf)
    cum_out = np.concatenate(([0.0], np.cumsum(pend.output)))
    cum_prompt = np.concatenate(([0.0], cs))
    # Arrivals per (substep, instance): only arrived prompts can be prefilled. Rows are contiguous.
    sub = np.minimum((arrivals.offset_s / h).astype(np.int64), n_sub - 1)
    key = sub * n + arrivals.inst
    arr_n = np.bincount(key, minlength=n * n_sub).reshape(n_sub, n).astype(np.float64)
    arr_tok = np.bincount(key, weights=arrivals.prompt, minlength=n * n_sub).reshape(n_sub, n)
    old = 1.0 - is_new
    qn = np.bincount(pend.inst, weights=old, minlength=n).astype(np.float64)
    avail = np.bincount(pend.inst, weights=pend.prompt * old, minlength=n) - tab.head_done
    S = tab.head_done.copy()
    ptr = seg_lo.copy()

    srv = (tab.state == SERVING).astype(np.float64)
    B, R, ctx = tab.B, tab.R, tab.ctx
    c_tok, mem_w, mem_kv, over = tab.c_tok, tab.mem_w, tab.mem_kv, tab.overhead
    chunk = tab.chunk
    tbt_slo = tab.tbt_slo
    # Step constants: clocks and limits change only between steps.
    c_chunk = c_tok * chunk
    srv_chunk = srv / chunk
    inv_m = 1.0 / pp.phi_mix
    inv_d = 1.0 / pp.phi_dec
    kv_room = tab.kv_cap / tab.seq_tokens
    inv_seq = 1.0 / tab.seq_tokens
    st_m = static_w(pp.phi_mix, pp.bare_w, pp.ctx_w, power_cfg)
    st_d = static_w(pp.phi_dec, pp.bare_w, pp.ctx_w, power_cfg)
    kdd_m = pp.kd_w * dyn_rel(pp.phi_mix, power_cfg)
    kdd_d = pp.kd_w * dyn_rel(pp.phi_dec, power_cfg)
    km = pp.km_w
    p_idle = np.where(tab.state == OFF, pp.bare_w, static_w(pp.phi_idle, pp.bare_w, pp.ctx_w, power_cfg))
    lim = pp.limit_w
    phi_idle = pp.phi_idle

    # Accumulated over substeps: time in the mixed and decode phases (and their power- and clock-weighted
    # sums), tokens, and the TBT bookkeeping.
    e_busy = np.zeros(n)
    t_mix = np.zeros(n)
    t_dec = np.zeros(n)
    tok_ok = np.zeros(n)
    tbt_w = np.zeros(n)
    dec_tok = np.zeros(n)
    completed = np.zeros(n)
    s_traj = np.empty((n_sub + 1, n))
    s_traj[0] = S
    p_traj = np.empty((n_sub, n), dtype=np.int64)
    t_m = t_d = p_m = p_d = np.zeros(n)
    eps = 1e-6
    n_pend = x_end.size
    for k in range(n_sub):
        qn += arr_n[k]
        avail += arr_tok[k]
        # Admission: a free batch slot and KV room for each prompt that starts prefilling.
        slots = np.minimum(tab.max_batch - B, kv_room - ctx * inv_seq)
        n_adm = np.minimum(np.floor(np.maximum(slots, 0.0)), qn)
        idx = np.minimum(np.maximum(ptr + n_adm.astype(np.int64) - 1, 0), n_pend)
        adm = np.where(n_adm >= 1.0, np.minimum(x_ext[idx] - S, avail), 0.0)
        # Mixed iterations (decodes + a prompt chunk) while admitted prompt tokens remain, then decode-only.
        mem = mem_w + mem_kv * ctx
        cb = c_tok * B
        tc_m = (c_chunk + cb) * inv_m
        tau_m = np.maximum(tc_m, mem) + over
        t_m = np.minimum(h, np.maximum(adm, 0.0) * srv_chunk * tau_m)
        it_m = t_m / tau_m
        pre = it_m * chunk
        tc_d = cb * inv_d
        tau_d = np.maximum(tc_d, mem) + over
        # Decode-only iterations fill the rest of the substep while sequences run. Below one sequence the
        # fluid B is the chance that one runs: it iterates at full speed, but busy time (power) is B-weighted.
        rest = (h - t_m) * srv
        t_d = rest * np.minimum(B, 1.0)
        it_d = rest * (eps < B) / tau_d
        n_it = it_m + it_d
        # Decode: memoryless completions given the mean remaining length R/B; tokens conserved.
        decay = np.exp(-n_it / np.maximum(R / np.maximum(B, eps), 1.0))
        b_new = B * decay
        r_new = R * decay
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
        act = np.flatnonzero((ptr < seg_hi) & (x_ext[ptr] <= S + eps))
        while act.size:  # later rounds only touch the instances that are still advancing
            ptr[act] += 1
            pa = ptr[act]
            act = act[(pa < seg_hi[act]) & (x_ext[pa] <= S[act] + eps)]
        done = (ptr - old_ptr).astype(np.float64)
        qn -= done
        # Each finished prompt joins the decode batch with its context and its remaining output tokens
        # (at least one: the first token came from the prefill).
        completed += B - b_new
        B = b_new + done
        R = r_new + np.maximum(cum_out[ptr] - cum_out[old_ptr] - done, done)
        ctx = ctx * decay + b_new * n_it + (cum_prompt[ptr] - cum_prompt[old_ptr]) + done
        s_traj[k + 1] = S
        p_traj[k] = ptr
        # Power of each phase at its clock; the limiter holds each phase at or below the enforced limit.
        p_m = np.minimum(st_m + (kdd_m * tc_m + km * mem) / tau_m, lim)
        p_d = np.minimum(st_d + (kdd_d * tc_d + km * mem) / tau_d, lim)
        e_busy += t_m * p_m + t_d * p_d
        t_mix += t_m
        t_dec += t_d
    f_m = t_m / h  # the last substep's phase shares, for the sensors
    f_d = t_d / h
    tiny = B < 1e-3  # the fluid's tail: nothing is running any more
    tab.B = np.where(tiny, 0.0, B)
    tab.R = np.where(tiny, 0.0, R)
    tab.ctx = np.where(tiny, 0.0, ctx)
    busy = t_mix + t_dec
    energy = e_busy + (dt - busy) * p_idle
    phi_t = t_mix * pp.phi_mix + t_dec * pp.phi_dec + (dt - busy) * phi_idle
    first = (ptr - seg_lo).astype(np.float64)
    tokens = dec_tok + first
    pre_total = S - tab.head_done

    # ---- per-request first tokens ---------------------------------------------------------------
    j = np.arange(len(pend))
    done_mask = j < ptr[pend.inst] if len(pend) else np.zeros(0, dtype=bool)
    dj = np.flatnonzero(done_mask)
    di = pend.inst[dj]
    # The substep in which request j (of instance i) got its first token is the number of instance i's
    # after-substep pointers <= j. Every pointer of an earlier instance is <= j and every pointer of a later
    # one is > j, so counting all pointers <= j (one bincount + cumsum) and subtracting i * n_sub gives it.
    le = np.cumsum(np.bincount(p_traj.ravel(), minlength=len(pend) + 1))
    ksub = np.minimum(np.maximum(le[dj] - di * n_sub, 0), n_sub - 1)
    s0 = s_traj[ksub, di]
    s1 = s_traj[ksub + 1, di]
    frac = np.minimum(np.maximum((x_end[dj] - s0) / np.maximum(s1 - s0, 1e-9), 0.0), 1.0)
    t_first = t0 + (ksub + frac) * h
    t_arr = pend.t_arr[dj]
    # A prompt cannot finish before it arrived plus its own compute time.
    t_first = np.maximum(t_first, t_arr + pend.prompt[dj] * c_tok[di] / pp.phi_mix[di])
    reqs = Requests(pool=tab.pool[di], t_arrival_s=t_arr, ttft_s=t_first - t_arr,
                    prompt_tokens=pend.prompt[dj], output_tokens=pend.output[dj])
    # ---- the queue for the next step: unfinished requests; the head keeps its partial progress ----
    last_done = np.where(ptr > seg_lo, x_ext[np.maximum(ptr - 1, 0)], 0.0)
    tab.head_done = np.maximum(S - last_done, 0.0) * (ptr < seg_hi)
    keep = ~done_mask
    k_inst = pend.inst[keep]
    new_pend = Pending(k_inst, pend.t_arr[keep], pend.prompt[keep], pend.output[keep], segments(k_inst, n))

    avg_power = energy / dt
    res = ServeResult(
        avg_power_w=avg_power, busy_frac=busy / dt, avg_phi=phi_t / dt,
        last_f_mix=f_m, last_f_dec=f_d, last_p_mix=p_m, last_p_dec=p_d, last_p_idle=p_idle,
        tokens=tokens, tokens_tbt_ok=tok_ok, tbt_weighted_s=tbt_w, decode_tokens=dec_tok,
        completed=completed, prefill_tokens=pre_total, dropped=dropped, requests=reqs,
    )
    return res, new_pend


def representative_phases(tab: InstanceTable) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(compute s, memory s) of a mixed and of a decode iteration in the instance's current state at max
    clock, for the cap solver: (c_mix, c_dec, mem, overhead)."""
    mem = tab.mem_w + tab.mem_kv * tab.ctx
    return tab.c_tok * (tab.chunk + tab.B), tab.c_tok * np.maximum(tab.B, 1.0), mem, tab.overhead
