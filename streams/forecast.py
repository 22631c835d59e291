"""PROVISIONAL: replaced by the forecasting branch. Persistence + empirical residual quantiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from powerplane.site import FloatArray


@dataclass(frozen=True)
class ForecastSettings:
    step_s: float = 1.0
    horizons_s: tuple[float, ...] = (1.0, 10.0, 30.0, 60.0)
    plan_horizons_s: tuple[float, ...] = (300.0, 900.0, 3600.0)


class Forecaster:
    name = "provisional"

    def __init__(self, n: int, settings: ForecastSettings = ForecastSettings()) -> None:
        self.n = n
        self.settings = settings
        self.last = np.full(n, np.nan)

    def update(self, t_s: float, y: FloatArray) -> None:
        ok = np.isfinite(y)
        self.last[ok] = y[ok]

    def predict(self) -> tuple[FloatArray, FloatArray]:
        h = len(self.settings.horizons_s)
        p50 = np.repeat(self.last[:, None], h, axis=1)
        return p50, p50 * 1.05

    def predict_plan(self) -> tuple[FloatArray, FloatArray]:
        h = len(self.settings.plan_horizons_s)
        p50 = np.repeat(self.last[:, None], h, axis=1)
        return p50, p50 * 1.1

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "last": self.last.tobytes()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Forecaster:
        f = cls(int(state["n"]))
        f.last = np.frombuffer(state["last"], dtype=np.float64).copy()
        return f
