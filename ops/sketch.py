"""Quantiles over every sample of a run, in bounded memory: DDSketch (the `ddsketch` package).

The evaluation used to keep the first 400,000 latency samples per priority class and take exact quantiles
of those: on the 100 MW site that is the first ~54 s, so a feed loss at 60 s never reached the TTFT p99.
A DDSketch keeps every sample (weighted where a sample stands for many, as a pool-second of decode tokens
does) with a relative error bound on every quantile: 0.5 % here, far below what the reports print. Why
DDSketch rather than HdrHistogram: docs/decisions.md ("Latency quantiles over every sample").
"""

from __future__ import annotations

import numpy as np
from ddsketch import DDSketch

from powerplane.site import FloatArray

RELATIVE_ACCURACY = 0.005


class Quantiles:
    """Every sample added (weight 1 unless given), and any quantile of them within 0.5 % of its value."""

    def __init__(self, relative_accuracy: float = RELATIVE_ACCURACY) -> None:
        self.sketch = DDSketch(relative_accuracy)

    def add(self, values: FloatArray, weights: FloatArray | None = None) -> None:
        if weights is None:
            for v in np.asarray(values, dtype=np.float64).tolist():  # ~0.5 us a sample
                self.sketch.add(v)
            return
        for v, w in zip(np.asarray(values, dtype=np.float64).tolist(),
                        np.asarray(weights, dtype=np.float64).tolist(), strict=True):
            if w > 0:
                self.sketch.add(v, w)

    @property
    def count(self) -> float:
        """The samples' total weight."""
        return float(self.sketch.count)

    def quantile(self, q: float) -> float:
        """The q-quantile (NaN with no sample)."""
        if self.sketch.count <= 0:
            return float("nan")
        v = self.sketch.get_quantile_value(q)
        return float("nan") if v is None else float(v)
