"""Online power forecasts for every level of a site: p50 and p99 at short (controller) and planning
horizons. Pure numpy, no I/O; one object forecasts n series at once, one observation per series per
window (`update`), so the streams worker and the in-process engine run the same code.

Methods share one interface (streams.forecast.online.OnlineForecast; `name` tells them apart): the product's
`Forecaster` ("adaptive": the best of an EWMA level and every seasonal lag, p99 by adaptive conformal tracking;
streams.forecast.adaptive) and the baselines `Persistence`, `SeasonalNaive` and `Ewma`
(streams.forecast.baselines).

Missing values (NaN) are skipped: the series' state does not move, no error is scored, and a NaN is
never taken as 0. Predictions are NaN until a series has enough data. `state()`/`from_state()` give
an exact resume in a msgpack-friendly dict (arrays as bytes + dtype + shape); the per-series size is
bounded by the ring lengths (`state_bytes_per_series`).
"""

from __future__ import annotations

from streams.forecast.adaptive import Forecaster
from streams.forecast.baselines import Ewma, Persistence, SeasonalNaive
from streams.forecast.online import ForecastSettings, OnlineForecast

__all__ = ["METHODS", "Ewma", "ForecastSettings", "Forecaster", "OnlineForecast", "Persistence", "SeasonalNaive"]

METHODS: dict[str, type[OnlineForecast]] = {m.name: m for m in (Forecaster, Persistence, SeasonalNaive, Ewma)}
