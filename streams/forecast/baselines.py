"""Baseline forecasts, to measure the product's method against (bench/bench_forecast.py).

`Persistence` (last value), `SeasonalNaive` (value one season ago; season 60 s, the least common multiple of
the 2, 4, 5 and 6 s step times of the twin's training jobs and one minute of the trace's request-rate rhythm;
see ForecastSettings.season_s), `Ewma` (exponentially weighted mean). Their p99 = point + an online empirical
p99 of their own past errors at that horizon: a stochastic quantile tracker on the raw error whose step is
rate x the running mean absolute error (standard online quantile estimation; no volatility conditioning).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from streams.forecast.online import DEFAULT_SETTINGS, F32, FloatArray, ForecastSettings, OnlineForecast, ewma_alpha


class Persistence(OnlineForecast):
    """The last value, at every horizon."""

    name: ClassVar[str] = "persistence"

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        return np.stack([y - self._lag(int(h)) if self.k >= h else np.full(self.n, np.nan)
                         for h in self.h], axis=1)

    def _point(self) -> FloatArray:
        return np.repeat(self.last[:, None], self.h.size, axis=1)


class SeasonalNaive(OnlineForecast):
    """The value one season before the target time (the last value where that one is missing)."""

    name: ClassVar[str] = "seasonal-naive"

    def _ring_len(self) -> int:
        season = max(1, round(self.settings.season_s / self.settings.step_s))
        self.season = season
        # The forecast for h issued h windows ago came from season x ceil(h / season) windows ago.
        return int(max(season * math.ceil(int(h) / season) for h in self.h))

    def _back(self, h: int) -> int:
        return self.season * math.ceil(h / self.season)

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        return np.stack([y - self._lag(self._back(int(h))) if self.k >= self._back(int(h))
                         else np.full(self.n, np.nan) for h in self.h], axis=1)

    def _point(self) -> FloatArray:
        out = np.empty((self.n, self.h.size))
        for i, h in enumerate(self.h):
            v = self._lag(self._back(int(h)) - int(h))
            out[:, i] = np.where(np.isfinite(v), v, self.last)
        return out

    def _plan_point(self) -> FloatArray:
        # Planning horizons are whole seasons here (minutes): one season before the target is the
        # last value's phase; with the ring only one season long, that is the last value.
        return self.last.copy()


class Ewma(OnlineForecast):
    """Exponentially weighted mean (half-life ewma_halflife_s), at every horizon."""

    name: ClassVar[str] = "ewma"
    _arrays: ClassVar[tuple[str, ...]] = ("lvl", "lvl_ring")

    def __init__(self, n: int, settings: ForecastSettings = DEFAULT_SETTINGS) -> None:
        super().__init__(n, settings)
        self.a = ewma_alpha(settings.ewma_halflife_s, settings.step_s)
        self.lvl = np.full(n, np.nan)
        self.lvl_ring = np.full((self.R, n), np.nan, dtype=F32)

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        return np.stack([y - self.lvl_ring[(self.k - int(h)) % self.R].astype(np.float64) if self.k >= h
                         else np.full(self.n, np.nan) for h in self.h], axis=1)

    def _observe(self, y: FloatArray, ok: npt.NDArray[np.bool_]) -> None:
        first = ok & ~np.isfinite(self.lvl)
        self.lvl = np.where(first, y, np.where(ok, self.lvl + self.a * (y - self.lvl), self.lvl))
        self.lvl_ring[self.k % self.R] = self.lvl.astype(F32)

    def _skip(self, slot_k: int) -> None:
        self.lvl_ring[slot_k % self.R] = self.lvl.astype(F32)

    def _point(self) -> FloatArray:
        return np.repeat(self.lvl[:, None], self.h.size, axis=1)

    def _plan_point(self) -> FloatArray:
        return self.lvl.copy()
