"""A day of requests: a trace's request mix replayed under a diurnal envelope.

Why: the policies were measured on 5-10 busy minutes, while DynamoLLM's 53 % energy saving (Stojkovic et
al., "DynamoLLM: Designing LLM Inference Clusters for Performance and Energy Efficiency", HPCA 2025,
arXiv:2408.00741) is over days of production load with troughs, against static pools sized for the peak.
Its traces (the Azure LLM inference trace 2024, a week of May 2024, conversation and coding services) show
the request rate swinging with the time of day and lower at weekends; the 2023 trace that ships with the
twin is one hour (Patel et al., Splitwise, ISCA 2024), so it holds no day/night swing at all.

The envelope's shape is therefore an assumption, documented as such: a raised cosine over 24 h with its
peak at 14:00 and its trough at 02:00, the trough at 1 / ``peak_to_trough`` of the peak (default 3:
night-time load a third of the afternoon's; DynamoLLM's figures show deep night troughs in both services
but we did not take a ratio from them, so it is a parameter of the run, reported with it).

``diurnal_trace`` resamples the trace: the rate at time t of the day is the trace's own 30 s-smoothed rate
at (t mod its period) times the envelope at t (1.0 at the peak), so the peak hour looks like the trace and
the trough keeps its burst shape, scaled down; each request's prompt and output token counts are drawn, as
a pair, from the trace's requests in that window (the mix is the trace's). A compressed day (``day_s``
under 86,400) squeezes the same envelope into less time, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from powerplane.site import FloatArray
from sim.trace import Trace, rate_table

DAY_S = 86_400.0


@dataclass(frozen=True)
class Envelope:
    """Relative arrival rate over a day: 1.0 at `peak_hour`, 1 / `peak_to_trough` twelve hours away."""

    peak_to_trough: float = 3.0  # assumption (see the module docstring)
    peak_hour: float = 14.0  # local time of the daily peak (assumption: business-hours-led load)
    day_s: float = DAY_S  # length of the (possibly compressed) day in simulated seconds

    def __post_init__(self) -> None:
        problems = []
        if not self.peak_to_trough >= 1.0:
            problems.append(f"peak_to_trough must be >= 1, got {self.peak_to_trough!r}")
        if not 0.0 <= self.peak_hour < 24.0:
            problems.append(f"peak_hour must be in [0, 24), got {self.peak_hour!r}")
        if not self.day_s >= 60.0:
            problems.append(f"day_s must be >= 60, got {self.day_s!r}")
        if problems:
            raise ValueError("invalid diurnal envelope: " + "; ".join(problems))

    def rel(self, t_s: FloatArray) -> FloatArray:
        """The relative rate at simulated times t_s (seconds since midnight of the compressed day)."""
        hour = np.asarray(t_s, dtype=np.float64) / self.day_s * 24.0
        c = 0.5 * (1.0 + np.cos(2.0 * math.pi * (hour - self.peak_hour) / 24.0))
        lo = 1.0 / self.peak_to_trough
        return np.asarray(lo + (1.0 - lo) * c, dtype=np.float64)

    def mean_rel(self) -> float:
        """The day's mean relative rate: (1 + trough) / 2 for a raised cosine."""
        return 0.5 * (1.0 + 1.0 / self.peak_to_trough)

    def describe(self) -> str:
        return (f"diurnal envelope (raised cosine, assumption): peak at {self.peak_hour:g}:00, peak/trough "
                f"{self.peak_to_trough:g}, day of {self.day_s:g} s simulated")


def diurnal_trace(base: Trace, env: Envelope, seed: int = 0, window_s: float = 30.0) -> Trace:
    """`base`'s request mix over one (possibly compressed) day under `env` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    table = rate_table(base, window_s)
    n_sec = math.ceil(env.day_s)
    sec = np.arange(n_sec, dtype=np.float64)
    base_sec = np.minimum(np.mod(sec, table.period_s).astype(np.int64), table.rate.size - 1)
    lam = table.rate[base_sec] * env.rel(sec + 0.5)
    counts = rng.poisson(lam)
    which = np.repeat(np.arange(n_sec), counts)
    t = which + rng.random(which.size)
    t = np.minimum(t, env.day_s * (1.0 - 1e-12))
    lo = table.lo[base_sec[which]]
    span = table.hi[base_sec[which]] - lo
    tok = lo + (rng.random(which.size) * span).astype(np.int64)
    return Trace.of(t, table.prompt3[tok], table.output3[tok], source=f"{base.source} (diurnal)",
                    name=f"{base.name}, {env.describe()}", fmt="diurnal",
                    attribution=base.attribution + " Diurnal envelope: an assumption of this evaluation "
                    "(sim/diurnal.py), after the day/week swings DynamoLLM (HPCA 2025) reports.",
                    period_s=env.day_s)
