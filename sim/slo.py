"""Latency SLOs as the serving literature defines them: per request, relative to its isolated latency.

A request's *isolated* TTFT is the time its prompt takes to prefill alone on an idle instance of its pool's
configuration (model, TP, GPU type) at the maximum clock: ``ceil(prompt / chunk_tokens)`` chunked-prefill
iterations of the twin's own roofline (``sim.serving``: compute ``c_tok_s`` per token against reading the
weights, plus the iteration overhead), with no queueing and no batch-mates. Its isolated TBT is one
decode iteration of a lone sequence (weights + its KV context read once, plus the overhead).

Relative SLOs (the default): TTFT <= max(ttft_floor_s, ttft_k x isolated TTFT) per request, and a decode
token is on time when its gap is <= max(tbt_floor_s, tbt_k x isolated TBT of the pool). The scale k = 5
follows the SLO-scaling convention of Splitwise (ISCA'24) and DynamoLLM (HPCA'25), which state their SLOs
as slowdowns over a request run in isolation (recalled from the papers; docs/twin.md "SLOs" says what was
and was not checked); the floors keep a short prompt's SLO from falling below what a user can notice
(0.25 s) and keep a TBT SLO at the pool's absolute 0.1 s (DynamoLLM's, BRIEF.md) where 5 x isolated is
tighter than a chunked-prefill iteration can ever be. ``kind = "absolute"`` keeps each pool's fixed
``ttft_slo_s`` / ``tbt_slo_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerplane.site import FloatArray

SLO_KINDS = ("relative", "absolute")


@dataclass(frozen=True)
class SloSpec:
    kind: str = "relative"  # "relative" (k x isolated latency, with a floor) or "absolute" (the pools' own)
    ttft_k: float = 5.0
    ttft_floor_s: float = 0.25
    tbt_k: float = 5.0
    tbt_floor_s: float = 0.1

    def describe(self) -> str:
        """One line for reports."""
        if self.kind == "absolute":
            return "absolute: each pool's fixed TTFT and TBT SLOs (ttft_slo_s, tbt_slo_s)"
        return (f"relative to isolated latency: TTFT <= max({self.ttft_floor_s:g} s, {self.ttft_k:g} x isolated "
                f"TTFT at the request's prompt length), TBT <= max({self.tbt_floor_s:g} s, {self.tbt_k:g} x "
                "isolated TBT), on the pool's model, TP and GPU at maximum clock")


def isolated_ttft_s(prompt: FloatArray, c_tok_s: FloatArray, mem_w_s: FloatArray, overhead_s: FloatArray,
                    chunk: FloatArray) -> FloatArray:
    """Prefill alone, at max clock: full chunks, then the remainder, each one roofline iteration."""
    p = np.maximum(np.asarray(prompt, dtype=np.float64), 1.0)
    full = np.floor(p / chunk)
    rest = p - full * chunk
    it_full = np.maximum(c_tok_s * chunk, mem_w_s) + overhead_s
    it_rest = np.where(rest > 0, np.maximum(c_tok_s * rest, mem_w_s) + overhead_s, 0.0)
    return np.asarray(full * it_full + it_rest, dtype=np.float64)


def isolated_tbt_s(c_tok_s: FloatArray, mem_w_s: FloatArray, mem_kv_s: FloatArray, overhead_s: FloatArray,
                   ctx_tokens: FloatArray) -> FloatArray:
    """One decode iteration of a lone sequence with ctx_tokens of context, at max clock."""
    return np.asarray(np.maximum(c_tok_s, mem_w_s + mem_kv_s * ctx_tokens) + overhead_s, dtype=np.float64)


def ttft_slo_s(spec: SloSpec, absolute_s: FloatArray, isolated_s: FloatArray) -> FloatArray:
    """Each request's TTFT SLO: its pool's fixed one, or k x its isolated TTFT with the floor."""
    if spec.kind == "absolute":
        return np.asarray(absolute_s, dtype=np.float64)
    return np.maximum(spec.ttft_floor_s, spec.ttft_k * np.asarray(isolated_s, dtype=np.float64))


def tbt_slo_s(spec: SloSpec, absolute_s: FloatArray, isolated_s: FloatArray) -> FloatArray:
    """Each pool's (instance's) TBT SLO, likewise."""
    if spec.kind == "absolute":
        return np.asarray(absolute_s, dtype=np.float64)
    return np.maximum(spec.tbt_floor_s, spec.tbt_k * np.asarray(isolated_s, dtype=np.float64))
