"""The product forecast per level on series with the shape of measured H100 serving power (bench/forecast_data.py):
a controller reading the product's p99 at any level never gets a worse p99 than the best baseline would give
it, and that p99 covers 98-99.7 % of what comes, on idle/peak GPUs as on busy ones."""

from __future__ import annotations

import numpy as np
import pytest

from bench.forecast_data import LEVELS, generated
from streams.forecast import Ewma, Forecaster, ForecastSettings, Persistence, SeasonalNaive

SECONDS, WARM = 2400, 600
HORIZONS = (10, 60)
# The product's p99 blends its candidates (streams.forecast.fallback), so it does not lose the few % that
# switching between them cost. Bound 1.00 where a level has 16 or more series here (GPU to RPP; UPS has 8 and
# holds 1.00 too). Feed (4 series) and site (2) are scored on a few hundred independent minutes of two to four
# series, where the product and the EWMA baseline are nearly the same forecast: their ratio moves by +-1.5 %
# from seed to seed (0.99-1.015 on busy, seeds 1, 2, 7; docs/performance.md), so 1.02 there.
BOUND = {"feed": 1.02, "site": 1.02}


def scores(method: type, y: np.ndarray, settings: ForecastSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per series and scored horizon: summed p99 pinball loss and hits (value <= p99 issued h s before)."""
    hs = [round(h) for h in settings.horizons_s]
    cols = [hs.index(h) for h in HORIZONS]
    f = method(y.shape[1], settings)
    ring = np.full((max(HORIZONS) + 1, y.shape[1], len(HORIZONS)), np.nan)
    pin = np.zeros((y.shape[1], len(HORIZONS)))
    hit = np.zeros_like(pin)
    for t in range(y.shape[0]):
        for j, h in enumerate(HORIZONS):
            if t - h >= WARM:
                d = y[t] - ring[(t - h) % ring.shape[0], :, j]
                pin[:, j] += np.maximum(0.99 * d, -0.01 * d)
                hit[:, j] += d <= 0
        f.update(float(t), y[t])
        ring[t % ring.shape[0]] = f.predict()[1][:, cols]
    return pin, hit


@pytest.mark.parametrize("shape", ["bimodal", "busy"])
def test_product_p99_never_loses_to_the_best_baseline_at_any_level(shape: str) -> None:
    series = generated(shape, SECONDS, seed=7, sites=2)
    y = np.concatenate([series[lv] for lv in LEVELS], axis=1)
    kind = np.concatenate([np.full(series[lv].shape[1], i) for i, lv in enumerate(LEVELS)])
    settings = ForecastSettings()
    res = {m.name: scores(m, y, settings) for m in (Forecaster, Persistence, SeasonalNaive, Ewma)}
    n_scored = SECONDS - WARM - np.array(HORIZONS)
    bad = []
    for i, lv in enumerate(LEVELS):
        sel = kind == i
        pin = {name: p[sel].sum(axis=0) for name, (p, _) in res.items()}
        best = np.min([pin[m] for m in pin if m != "adaptive"], axis=0)
        cov = 100 * res["adaptive"][1][sel].sum(axis=0) / (sel.sum() * n_scored)
        for j, h in enumerate(HORIZONS):
            ratio = pin["adaptive"][j] / best[j]
            if ratio > BOUND.get(lv, 1.0) or not 98.0 <= cov[j] <= 99.7:
                bad.append(f"{lv} {h} s: pinball {ratio:.3f}x the best baseline, coverage {cov[j]:.2f} %")
    assert not bad, f"{shape}: " + "; ".join(bad)
