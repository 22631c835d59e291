"""Power series per level with the shape of measured H100 serving power (BRIEF.md, "Real GPU power under LLM
serving"), for bench/bench_forecast.py and the forecast tests. Seeded; pure numpy.

Per GPU, generated at 250 ms and averaged to 1 s readings (NVML's power.draw is a ~1 s average on Hopper):
- "bimodal" (8B model, one GPU per instance, low request rate): idle 118-123 W; bursts whose time above
  250 W is log-normal with median 2 s and p90 5 s, at a per-burst level up to 440-454 W, ramping up in
  0.75-1 s and down in ~1 s; gaps exponential so that ~76 % of seconds stay below 150 W; ~1.2 % of 250 ms
  readings are glitches near 70 W. GPUs are independent instances, but their burst rate follows a slow
  shared pool rhythm (log-AR(1), 60 s) so that servers and racks move together somewhat, as a pool does.
- "busy" (70B, tensor parallel 4, 2 req/s): each group of 4 GPUs shares a level 444-475 W (median ~462 W)
  that wanders slowly and steps a few W per second (1 s change p99 ~10 W); each GPU adds a fixed offset
  (within ~2.5 % of its group) and 1 W of noise, so the group's GPUs correlate ~0.95.
Levels: 8 GPUs per server (server = GPUs + 1 kW of other load, through a 94 % PSU), 4 servers per rack,
then PDU (2 racks), RPP (2 PDUs), UPS (2 RPPs), feed (2 UPS), site (2 feeds): sums of the level below.
"""

from __future__ import annotations

import numpy as np

FANOUT = (("server", 8), ("rack", 4), ("pdu", 2), ("rpp", 2), ("ups", 2), ("feed", 2), ("site", 2))
LEVELS = ("gpu", *(name for name, _ in FANOUT))
SUB = 4  # 250 ms readings per second


def _smooth_ramp(x: np.ndarray) -> np.ndarray:
    # Up in 0.75-1 s, down in ~1 s: a 4-tap moving average over the 250 ms readings (per column).
    out = np.copy(x)
    for j in range(1, SUB):
        out[j:] += x[:-j]
        out[:j] += x[:1]
    return out / SUB


def bimodal_gpus(n_gpus: int, seconds: int, seed: int) -> np.ndarray:
    """(seconds, n_gpus) 1 s readings of idle-heavy single-GPU instances."""
    rng = np.random.default_rng(seed)
    T = seconds * SUB
    # Shared pool rhythm of the burst rate (per group of 32 GPUs = one rack's instances share a router).
    groups = max(1, n_gpus // 32)
    a = np.exp(-0.25 / 60.0)
    z = np.empty((T, groups))
    z[0] = rng.normal(0, 1, groups)
    eps = rng.normal(0, np.sqrt(1 - a * a), (T, groups))
    for t in range(1, T):
        z[t] = a * z[t - 1] + eps[t]
    rate_mult = np.exp(0.6 * z - 0.18)[:, np.minimum(np.arange(n_gpus) // 32, groups - 1)]
    busy = np.zeros((T, n_gpus))
    level = np.zeros((T, n_gpus))
    mean_gap_sub = 10.0 * SUB  # mean idle gap between bursts at the mean rate
    for g in range(n_gpus):
        t = int(rng.exponential(mean_gap_sub))
        while t < T:
            dur = max(1, round(SUB * rng.lognormal(np.log(2.0), 0.715)))
            busy[t:t + dur, g] = 1.0
            level[t:t + dur, g] = rng.uniform(330.0, 452.0)
            t += dur + 1 + int(rng.exponential(mean_gap_sub / max(rate_mult[min(t, T - 1), g], 1e-3)))
    idle = rng.uniform(118.0, 123.0, n_gpus)[None, :] + rng.normal(0, 0.8, (T, n_gpus))
    raw = idle + busy * (level - idle + rng.normal(0, 4.0, (T, n_gpus)))
    p = _smooth_ramp(raw)
    glitch = rng.random((T, n_gpus)) < 0.012
    p = np.where(glitch, rng.normal(70.0, 3.0, (T, n_gpus)), p)
    out: np.ndarray = np.minimum(p, 454.0).reshape(seconds, SUB, n_gpus).mean(axis=1)
    return out


def busy_gpus(n_gpus: int, seconds: int, seed: int) -> np.ndarray:
    """(seconds, n_gpus) 1 s readings of GPUs in tensor-parallel-4 groups serving a 70B model at a steady rate."""
    rng = np.random.default_rng(seed)
    groups = -(-n_gpus // 4)
    a = np.exp(-1.0 / 30.0)
    slow = np.empty((seconds, groups))
    slow[0] = rng.normal(0, 4.0, groups)
    eps = rng.normal(0, 4.0 * np.sqrt(1 - a * a), (seconds, groups))
    for t in range(1, seconds):
        slow[t] = a * slow[t - 1] + eps[t]
    step = rng.standard_t(4, (seconds, groups)) * 1.6
    grp = 461.0 + slow + step
    offs = rng.uniform(-0.0125, 0.0125, n_gpus) * 462.0
    p = grp[:, np.arange(n_gpus) // 4] + offs[None, :] + rng.normal(0, 1.0, (seconds, n_gpus))
    out: np.ndarray = np.clip(p, 440.0, 475.0)
    return out


def levels(gpus: np.ndarray) -> dict[str, np.ndarray]:
    """Per level name, (seconds, n) series: sums up the tree from (seconds, n_gpus) readings (GPU count a
    multiple of the fan-out product)."""
    out = {"gpu": gpus}
    cur = gpus
    for name, fan in FANOUT:
        T, n = cur.shape
        cur = cur.reshape(T, n // fan, fan).sum(axis=2)
        if name == "server":
            cur = (cur + 1000.0) / 0.94
        out[name] = cur
    return out


def gpus_per_site() -> int:
    return int(np.prod([fan for _, fan in FANOUT]))


def generated(shape: str, seconds: int, seed: int, sites: int = 1) -> dict[str, np.ndarray]:
    """Series per level for `sites` independent sites of one shape ("bimodal" or "busy")."""
    gen = {"bimodal": bimodal_gpus, "busy": busy_gpus}[shape]
    per = [levels(gen(gpus_per_site(), seconds, seed + 1000 * i)) for i in range(sites)]
    return {lv: np.concatenate([p[lv] for p in per], axis=1) for lv in LEVELS}
