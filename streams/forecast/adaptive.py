"""The product's forecast method, `Forecaster` ("adaptive").

Per series and horizon, the point forecast is the expert with the lowest recent squared error among an EWMA
level and every seasonal lag d in [h, max_lag] (seasonal-naive with the season picked online: training steps
repeat every few seconds, so a rack of a 7 s job is best forecast from 7, 14, ... s ago, an inference rack by
its smoothed level). p99 = p50 + c x sigma, where sigma is the chosen expert's recent RMS error (it widens in
bursty periods and tightens in calm ones) and c is an online quantile tracker of the normalized error
(adaptive conformal inference: after each realized error, c rises by rate x (1 - q) on a miss and falls by
rate x q otherwise, so misses settle at 1 - q). Planning: a slow EWMA level, p99 from the spread around it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from streams.forecast.fallback import N_BASE, Fallback
from streams.forecast.online import DEFAULT_SETTINGS, F32, FloatArray, ForecastSettings, ewma_alpha


class Forecaster(Fallback):
    """Per series and horizon: the best of an EWMA level and every seasonal lag, p99 by adaptive conformal
    tracking of the chosen expert's normalized error. See the module docstring."""

    name: ClassVar[str] = "adaptive"
    _arrays: ClassVar[tuple[str, ...]] = ("lvl", "lvl_ring", "sq", "sq_lvl", "sel", "sig", "mean", "var",
                                          *Fallback._cand_arrays)

    def __init__(self, n: int, settings: ForecastSettings = DEFAULT_SETTINGS) -> None:
        super().__init__(n, settings)
        s = settings
        H = self.h.size
        self.a = ewma_alpha(s.ewma_halflife_s, s.step_s)
        self.b = ewma_alpha(s.score_halflife_s, s.step_s)
        self.ap = ewma_alpha(s.plan_halflife_s, s.step_s)
        self.lvl = np.full(n, np.nan)
        self.lvl_ring = np.full((int(self.h.max()), n), np.nan, dtype=F32)
        self.sq = np.full((self.R, n), np.inf, dtype=F32)  # EWMA squared error of seasonal lag d (row d - 1)
        self.sq_lvl = np.full((n, H), np.inf, dtype=F32)  # EWMA squared error of the level at each horizon
        # Chosen expert (0 = level, d = seasonal lag d) and its RMS error, fixed for an epoch of select_every
        # windows and kept for the epochs whose forecasts are still pending, so that each error is scored
        # against the forecast that was actually issued.
        self.E = -(-int(self.h.max()) // s.select_every) + 1
        self.sel = np.zeros((self.E, n, H), dtype=np.int16)
        self.sig = np.full((self.E, n, H), np.nan, dtype=F32)
        self.mean = np.full(n, np.nan)  # planning level
        self.var = np.full(n, np.nan)  # spread around it
        self.off[:] = 2.5  # normalized p99 multiple before any error is seen
        self.offp[:] = 2.5
        self._lags = np.arange(1, self.R + 1)
        self._init_fallback(n, s)
        self._derive()

    def _derive(self) -> None:
        """Flags that follow from the state (recomputed after from_state, never stored)."""
        # Series with a lag score not started yet.
        self._fresh: npt.NDArray[np.bool_] = np.asarray(np.isinf(self.sq).any(axis=0))
        self._nan_in_ring = bool(np.isnan(self.y).any())

    def _ring_len(self) -> int:
        return max(int(self.h.max()), round(self.settings.max_lag_s / self.settings.step_s))

    def _epoch(self, k: int) -> int:
        return (k // self.settings.select_every) % self.E

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        """Errors, now, of the experts chosen for each horizon; also moves every expert's error score.
        A seasonal expert's forecast for now, issued h windows ago, is the value d windows ago."""
        H = self.h.size
        if self.k < 1:
            self._e0 = self._sig0 = np.full((self.n, H), np.nan)
            self._ce = np.full((N_BASE, H, self.n), np.nan, dtype=F32)
            return np.full((self.n, H), np.nan)
        # Seasonal experts: this window against each lag (before this window enters the ring), in float32
        # and without a gather: lags 1..R are the ring's slots k-1 down to 0, then R-1 down to k.
        k, R = self.k, self.R
        s0 = k % R
        y32 = y.astype(F32)
        e_lag = np.empty((R, self.n), dtype=F32)
        if s0 > 0:
            np.subtract(y32, self.y[s0 - 1::-1], out=e_lag[:s0])
        np.subtract(y32, self.y[:s0 - 1 if s0 > 0 else None:-1][:R - s0], out=e_lag[s0:])
        lvl_past = np.stack([self.lvl_ring[(self.k - int(h)) % self.lvl_ring.shape[0]] for h in self.h],
                            axis=1).astype(np.float64)
        e_lvl = y[:, None] - lvl_past
        for i, h in enumerate(self.h):
            if self.k < h:
                e_lvl[:, i] = np.nan
        # Error of the forecast issued h windows ago, normalized by the scale it was issued with.
        z = np.full((self.n, H), np.nan)
        self._e0, self._sig0 = np.full((self.n, H), np.nan), np.full((self.n, H), np.nan)
        for i, h in enumerate(self.h):
            if self.k < h:
                continue
            ep = self._epoch(self.k - int(h))
            sel = self.sel[ep, :, i]
            e = np.where(sel == 0, e_lvl[:, i], e_lag[np.maximum(sel, 1) - 1, self._cols].astype(np.float64))
            self._e0[:, i] = e
            self._sig0[:, i] = np.maximum(self.sig[ep, :, i].astype(np.float64), self._floor())
            z[:, i] = e / self._sig0[:, i]
        self._ce = self._cand_errors(y, e_lvl, e_lag)  # before e_lag is squared in place below
        # Move the scores (NaN errors leave a score as it was; the first error sets it). Full-array
        # float32 arithmetic in place for the lag scores; the few series with a missing value in reach or
        # a score not yet started are redone carefully.
        w = self._w()
        careful = np.flatnonzero(~np.isfinite(y32) | self._fresh | (np.isnan(self.y).any(axis=0)
                                                                    if self._nan_in_ring else False))
        old = self.sq[:, careful]
        e_c = e_lag[:, careful]
        np.multiply(e_lag, e_lag, out=e_lag)
        np.subtract(e_lag, self.sq, out=e_lag)
        np.multiply(e_lag, w[None, :], out=e_lag)
        with np.errstate(invalid="ignore"):
            np.add(self.sq, e_lag, out=self.sq)
        if careful.size:
            self.sq[:, careful] = self._ewm(old, e_c.astype(np.float64), w[careful][None, :])
            self._fresh[careful] = np.isinf(self.sq[:, careful]).any(axis=0)
        self.sq_lvl = self._ewm(self.sq_lvl, e_lvl, w[:, None])
        if self.k % self.settings.select_every == 0:
            self._select()
        return z

    def _w(self) -> npt.NDArray[np.float32]:
        # Plain mean over a series' first windows, then the EWMA: a score from 3 errors is too noisy to
        # scale a p99 with.
        return np.maximum(F32(self.b), (1.0 / (self.nobs + 1.0)).astype(F32))

    def _ewm(self, acc: npt.NDArray[np.float32], e: FloatArray, w: npt.NDArray[np.float32]
             ) -> npt.NDArray[np.float32]:
        e2 = (e * e).astype(F32)
        fresh = np.isinf(acc)
        with np.errstate(invalid="ignore"):
            moved = np.where(fresh, e2, acc + w * (e2 - acc))
        return np.where(np.isfinite(e2), moved, acc)

    def _floor(self) -> FloatArray:
        # A perfectly predicted (constant) series still gets a sliver of p99 width, and no division by 0.
        return np.where(np.isfinite(self.lvl), 1e-4 * np.abs(self.lvl), 0.0) + 1e-9

    def _select(self) -> None:
        ep = self._epoch(self.k)
        # A lag scored on a few errors only would win by luck: it competes once it has warm_errors.
        young = self._lags[:, None] > self.nobs[None, :] - self.settings.warm_errors
        sq = np.where(young, np.inf, self.sq)
        for i, h in enumerate(self.h):
            cand = sq[int(h) - 1:]  # lags d >= h
            j = np.argmin(cand, axis=0)
            best = cand[j, self._cols]
            use_lvl = ~(best < self.sq_lvl[:, i])  # ties and no data: the level
            self.sel[ep, :, i] = np.where(use_lvl, 0, j + int(h)).astype(np.int16)
            self.sig[ep, :, i] = np.sqrt(np.where(use_lvl, self.sq_lvl[:, i], best))

    def _track(self, z: FloatArray) -> None:
        self._fallback_track(self._e0, self.off * self._sig0, self._ce)
        ok = np.isfinite(z)
        self.ne += ok
        # The first errors are scored against scales estimated from a handful of windows: they would
        # push c up, and it comes down only at rate x (1 - q) per window. Track once warm.
        ok &= self.ne > self.settings.warm_errors
        miss = (z > self.off).astype(np.float64)
        self.off = np.where(ok, np.maximum(self.off + self.settings.aci_rate * (miss - (1.0 - self.q)), 0.0),
                            self.off)

    def _offset(self) -> FloatArray:
        sigma = self.sig[self._epoch(self.k)].astype(np.float64)
        return np.where(np.isfinite(sigma), self.off * np.maximum(sigma, self._floor()[:, None]), np.nan)

    def _observe(self, y: FloatArray, ok: npt.NDArray[np.bool_]) -> None:
        first = ok & ~np.isfinite(self.lvl)
        self.lvl = np.where(first, y, np.where(ok, self.lvl + self.a * (y - self.lvl), self.lvl))
        self.lvl_ring[self.k % self.lvl_ring.shape[0]] = self.lvl.astype(F32)
        self._fallback_observe(y, ok, self.lvl)
        firstm = ok & ~np.isfinite(self.mean)
        d = np.where(ok, y - self.mean, 0.0)
        self.mean = np.where(firstm, y, self.mean + self.ap * d)
        self.var = np.where(firstm, 0.0, np.where(ok, (1 - self.ap) * (self.var + self.ap * d * d), self.var))

    def _skip(self, slot_k: int) -> None:
        self.lvl_ring[slot_k % self.lvl_ring.shape[0]] = self.lvl.astype(F32)
        self._fallback_skip(slot_k)
        self._nan_in_ring = True

    def _after_write(self, ok: npt.NDArray[np.bool_]) -> None:
        # A missing value stays in reach of the lag scores for R windows; check the ring only then.
        if not ok.all():
            self._nan_in_ring = True
        elif self._nan_in_ring and self.k % self.R == 0:
            self._nan_in_ring = bool(np.isnan(self.y).any())

    def _point(self) -> FloatArray:
        out = np.repeat(self.lvl[:, None], self.h.size, axis=1)
        for i, h in enumerate(self.h):
            d = self.sel[self._epoch(self.k), :, i].astype(np.int64)
            v = self._lag(np.maximum(d - int(h), 0))
            out[:, i] = np.where((d > 0) & np.isfinite(v), v, out[:, i])
        return out

    def predict(self) -> tuple[FloatArray, FloatArray]:
        """(p50, p99), each (n, len(horizons_s)): p50 from the chosen expert, p99 the loss-weighted blend of its
        own and the candidates' p99s (streams.forecast.fallback); NaN until a series has enough data."""
        p50, p99 = super().predict()
        if self.k < 0:
            return p50, p99
        out = self._fallback_p99(p50, p99, self.lvl)
        out[np.isnan(p50)] = np.nan
        return p50, out

    # Planning: slow level, p99 = level + c x spread, c tracked on the errors at each planning horizon.
    def _plan_point(self) -> FloatArray:
        return self.mean.copy()

    def _track_plan(self, e: FloatArray) -> None:
        z = e / np.maximum(np.sqrt(self.var), self._floor())[:, None]
        ok = np.isfinite(z)
        self.nep += ok
        miss = (z > self.offp).astype(np.float64)
        self.offp = np.where(ok, np.maximum(self.offp + self.settings.aci_rate * (miss - (1.0 - self.q)), 0.0),
                             self.offp)

    def _plan_offset(self) -> FloatArray:
        out: FloatArray = self.offp * np.maximum(np.sqrt(self.var), self._floor())[:, None]
        return out
