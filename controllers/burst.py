"""A burst reserve for the reconfiguration forecast of critical inference pools (controllers.reconfig).

The reconfiguration used to plan every pool for the busiest second of the last 2 minutes x 1.1. On a bursty
trace (30 s peak/mean 7-18, minutes-long gaps) that shrinks a critical pool to one instance during a gap,
and the next burst meets 30 s instance starts and 60 s queue timeouts: 10% of critical requests within SLO
against 92% with no control (docs/performance.md). A critical pool is therefore planned for a rate it has
*recently needed*, not the one it sees now:

- the ``quantile`` (p99) of its ``smooth_s``-smoothed arrival rate over the last ``memory_s`` (an hour);
- the highest smoothed rate it has seen, held with a slow decay (halving every ``peak_half_life_s``, hours);

whichever is larger. A burst comes back before the hold has decayed, so the pool has its instances warm
when it does: an instance start (30 s) is as long as a burst's ramp, so capacity that is not warm at the
burst's start is of no use to it. Scale-down is slow as well: at most one instance fewer per
``step_down_s`` (the caller enforces it through ``plan_pools``' ``min_gpus``); scale-up is immediate.

Batch pools keep the old, aggressive forecast: they are what is shed when capacity runs short.

Pure numpy; one ``add`` per second of arrivals, ``seed`` with history where the caller has it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from powerplane.site import FloatArray


@dataclass(frozen=True)
class BurstSettings:
    smooth_s: int = 30  # the arrival rate is smoothed over this long (the pools' sizing window)
    memory_s: int = 3600  # the quantile is over this much history
    quantile: float = 0.99  # of the smoothed rate over the memory
    peak_half_life_s: float = 7200.0  # a held burst peak halves in this long (hours: bursts return sooner)
    step_down_s: float = 300.0  # a critical pool loses at most one instance per this long

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v > 0):
                raise ValueError(f"BurstSettings.{f.name}: must be a finite number > 0, got {v!r}")
        if self.quantile > 1.0:
            raise ValueError(f"BurstSettings.quantile: must be in (0, 1], got {self.quantile}")
        if int(self.smooth_s) != self.smooth_s or int(self.memory_s) != self.memory_s:
            raise ValueError("BurstSettings.smooth_s and memory_s: whole seconds")


class BurstMemory:
    """Per pool: the last ``smooth_s`` seconds of arrivals, the smoothed rate of every second of the last
    ``memory_s`` (a ring; NaN where nothing was seen yet) and the decaying held peak."""

    def __init__(self, n_pools: int, settings: BurstSettings | None = None) -> None:
        self.s = settings or BurstSettings()
        self.recent = np.zeros((n_pools, int(self.s.smooth_s)))
        self.smoothed = np.full((n_pools, int(self.s.memory_s)), np.nan)
        self.peak_rps = np.zeros(n_pools)
        self.k = 0  # seconds added
        self._decay_1s = 0.5 ** (1.0 / self.s.peak_half_life_s)

    def seed(self, history_rps: FloatArray) -> None:
        """Smoothed rates (pools x seconds, oldest first) of the seconds before now: what a deployment's
        telemetry holds about its pools' past. The ring and the held peak start from them."""
        h = np.asarray(history_rps, dtype=np.float64)
        if h.ndim != 2 or h.shape[0] != self.smoothed.shape[0]:
            raise ValueError(f"BurstMemory.seed: history has shape {h.shape}, expected ({self.smoothed.shape[0]}, "
                             "seconds)")
        m = self.smoothed.shape[1]
        h = np.nan_to_num(h[:, -m:], nan=0.0)
        self.smoothed[:] = np.nan
        self.smoothed[:, m - h.shape[1]:] = h
        self.k = 0  # the next second overwrites the oldest entry of the ring
        if h.shape[1]:
            age_s = np.arange(h.shape[1], 0, -1, dtype=np.float64)
            self.peak_rps = np.maximum(self.peak_rps, np.max(h * self._decay_1s ** age_s, axis=1))

    def add(self, arrivals: FloatArray) -> None:
        """One second's arrivals per pool."""
        self.recent[:, self.k % self.recent.shape[1]] = np.asarray(arrivals, dtype=np.float64)
        rate = self.recent.sum(axis=1) / self.recent.shape[1]
        self.smoothed[:, self.k % self.smoothed.shape[1]] = rate
        self.peak_rps = np.maximum(self.peak_rps * self._decay_1s, rate)
        self.k += 1

    def reserve_rps(self) -> FloatArray:
        """The rate each pool keeps capacity for: max(p99 of the smoothed rate over the memory, held peak)."""
        seen = np.isfinite(self.smoothed).any(axis=1)
        q = np.zeros(self.smoothed.shape[0])
        if seen.any():
            q[seen] = np.nanquantile(self.smoothed[seen], self.s.quantile, axis=1)
        return np.maximum(q, self.peak_rps)
