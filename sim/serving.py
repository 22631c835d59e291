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

This module holds the model figures, the constants and the state (instance table, request queues); one
step of it over every instance is ``sim.batching.step_serving``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from powerplane.site import FloatArray, IntArray
from sim.physics import GpuSpec, roofline

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
