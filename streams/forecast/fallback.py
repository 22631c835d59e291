"""The product forecaster's fallback: its own p99 and three candidate p99s are blended, per series and horizon,
with weights set by their recent p99 pinball losses, and the blend is published.

Why: the product's p99 (expert point + c x the expert's recent RMS error) is the best one where a level's
power is a smooth sum (racks and up), but on one GPU's idle/peak series the RMS error collapses during idle
stretches and the next burst lands far above p99 (issue 14: 1.23-1.55x the best baseline on a real GPU
series). The candidates, each with its own online p99 of raw errors (the baselines' tracker,
OnlineForecast._track_raw):
  1. EWMA level (= the Ewma baseline), 2. last value (= Persistence), 3. a burst peak held with a half-life
  of `peak_halflife_s` towards the level: after a burst it keeps p99 near the burst's height for a while
  (the "p99 floored at the recent burst peak" of the issue) and the tracked offset moves it up or down to
  the series' own p99.
Candidates 1-2 reproduce the baselines' p99 (the same tracker on the same errors; float32). Their losses are
EWMAs with a half-life of `select_halflife_s` (a p99's loss is made of rare misses: a short memory would chase
luck). Published p99 = sum_c w_c p99_c with w_c proportional to (best loss / loss_c) ** blend_power, re-weighted
every `select_every` windows: a clearly better candidate takes all the weight (a candidate 1.2x as bad gets
2.5 % of it at the default power 16), candidates about equally good share it. Averaging quantiles is itself a
quantile forecast, and the pinball loss is convex, so where candidates tie the blend beats the one picked by
the noisy losses (an argmin flipped between them and lost 1-4 % to the best baseline; bench/bench_forecast.py,
docs/decisions.md). SeasonalNaive is not a candidate: at 60 s (its season) it is Persistence, and at shorter
horizons it was never the best baseline in bench/bench_forecast.py; leaving it out keeps the cost in budget.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from streams.forecast.online import DEFAULT_SETTINGS, F32, FloatArray, ForecastSettings, OnlineForecast, ewma_alpha

N_BASE = 3  # candidates besides the product's own p99: ewma, last, peak
_PEAK = 2


class Fallback(OnlineForecast):
    """Candidate p99s and their losses; Forecaster supplies its own p99 as candidate 0."""

    _cand_arrays: ClassVar[tuple[str, ...]] = ("cof", "cmae", "cne", "closs", "cnl", "pk", "pk_ring", "bw")

    def _init_fallback(self, n: int, s: ForecastSettings = DEFAULT_SETTINGS) -> None:
        H = self.h.size
        # Laid out (candidate, horizon, series): every operation runs on contiguous rows of n.
        self.cof = np.zeros((N_BASE, H, n), dtype=F32)  # tracked raw p99 offsets of the candidates
        self.cmae = np.zeros((N_BASE, H, n), dtype=F32)
        self.cne = np.zeros((N_BASE, H, n), dtype=np.int32)
        self.closs = np.zeros((N_BASE + 1, H, n), dtype=F32)  # EWMA p99 pinball loss; row 0 = the product's
        self.cnl = np.zeros((N_BASE + 1, H, n), dtype=np.int32)
        self.pk = np.full(n, np.nan)  # held burst peak
        self.pk_ring = np.full((int(self.h.max()), n), np.nan, dtype=F32)
        self.bw = np.zeros((N_BASE + 1, H, n), dtype=F32)  # blend weights; row 0 = the product's own p99
        self.bw[0] = 1.0
        self.rho = 1.0 - ewma_alpha(s.peak_halflife_s, s.step_s)
        self.bsel = ewma_alpha(s.select_halflife_s, s.step_s)
        self.bscore = ewma_alpha(s.score_halflife_s, s.step_s)

    def _cand_errors(self, y: FloatArray, e_lvl: FloatArray, e_lag: npt.NDArray[np.float32]
                     ) -> npt.NDArray[np.float32]:
        """(N_BASE, H, n) errors now of the candidates' points issued h windows ago (NaN where none)."""
        out = np.full((N_BASE, self.h.size, self.n), np.nan, dtype=F32)
        out[0] = e_lvl.T
        L = self.pk_ring.shape[0]
        y32 = y.astype(F32)
        for i, h in enumerate(self.h):
            if self.k < h:
                continue
            out[1, i] = e_lag[int(h) - 1]
            np.subtract(y32, self.pk_ring[(self.k - int(h)) % L], out=out[_PEAK, i])
        return out

    def _cand_track(self, e: npt.NDArray[np.float32]) -> None:
        """OnlineForecast._track_raw on the candidates' errors, in float32 in place (the same rule)."""
        ok = np.isfinite(e)
        self.cne += ok
        w = np.reciprocal(np.maximum(self.cne, 1), dtype=F32)
        np.maximum(w, F32(self.bscore), out=w)
        d = np.abs(e)
        np.subtract(d, self.cmae, out=d)
        np.multiply(d, w, out=d)
        np.add(self.cmae, d, out=self.cmae, where=ok)
        step = np.greater(e, self.cof).astype(F32)
        np.subtract(step, F32(1.0 - self.q), out=step)
        np.multiply(step, self.cmae, out=step)
        np.multiply(step, F32(self.settings.aci_rate), out=step)
        np.add(step, self.cof, out=step)
        np.copyto(step, F32(2.9) * self.cmae, where=self.cne < self.settings.warm_errors)
        np.copyto(self.cof, step, where=ok)

    def _cand_offsets(self) -> npt.NDArray[np.float32]:
        # The baselines publish point + max(offset, 0); the peak may sit above its series' p99.
        off = np.maximum(self.cof, F32(0.0))
        off[_PEAK] = self.cof[_PEAK]
        return off

    def _score(self, r: npt.NDArray[np.float32]) -> None:
        """Move the pinball losses with residuals r = y - issued p99 (NaN: no forecast), in float32 in place:
        this runs on every window for 4 candidates x n series x H horizons."""
        ok = np.isfinite(r)
        q = F32(self.q)
        loss = np.maximum(q * r, (q - F32(1.0)) * r)
        self.cnl += ok
        w = np.reciprocal(np.maximum(self.cnl, 1), dtype=F32)
        np.maximum(w, F32(self.bsel), out=w)
        np.subtract(loss, self.closs, out=loss)
        np.multiply(loss, w, out=loss)
        np.add(self.closs, loss, out=self.closs, where=ok)

    def _fallback_track(self, e0: FloatArray, off0: FloatArray, ce: npt.NDArray[np.float32]) -> None:
        """e0: the product's issued errors, off0: its p99 offsets (now); ce: the candidates' errors."""
        r = np.empty(self.closs.shape, dtype=F32)
        np.subtract(e0.T, off0.T, out=r[0], casting="unsafe")
        np.subtract(ce, self._cand_offsets(), out=r[1:], casting="unsafe")
        self._score(r)
        self._cand_track(ce)
        # Re-weighted once per epoch of select_every windows (the losses move slowly).
        if self.k % self.settings.select_every == 0:
            self._weigh()

    def _weigh(self) -> None:
        """Blend weights from the losses. A candidate takes part once scored on warm_errors errors; none
        warm: the product's own p99 alone. Ratios to the best loss, so no overflow and a 0 loss is fine."""
        warm = self.cnl >= self.settings.warm_errors
        loss = np.where(warm, self.closs, F32(np.inf))
        best = loss.min(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(loss > 0, best / loss, F32(1.0))
        w = np.where(warm, ratio, F32(0.0)) ** F32(self.settings.blend_power)
        tot = w.sum(axis=0)
        none = ~(tot > 0)
        w[0] = np.where(none, F32(1.0), w[0])
        tot = np.where(none, F32(1.0), tot)
        self.bw = (w / tot).astype(F32)

    def _fallback_observe(self, y: FloatArray, ok: npt.NDArray[np.bool_], lvl: FloatArray) -> None:
        held = lvl + self.rho * (self.pk - lvl)
        pk = np.where(np.isfinite(self.pk), np.maximum(y, held), y)
        self.pk = np.where(ok, pk, self.pk)
        self.pk_ring[self.k % self.pk_ring.shape[0]] = self.pk.astype(F32)

    def _fallback_skip(self, slot_k: int) -> None:
        self.pk_ring[slot_k % self.pk_ring.shape[0]] = self.pk.astype(F32)

    def _fallback_p99(self, p50: FloatArray, p99_own: FloatArray, lvl: FloatArray) -> FloatArray:
        """The published p99 (n, H): the blend of the candidates' p99s with a value (weights renormalized
        over them), never below p50."""
        cand = np.empty(self.bw.shape)
        cand[0] = p99_own.T
        np.add(np.stack((lvl, self.last, self.pk))[:, None, :], self._cand_offsets(), out=cand[1:])
        ok = np.isfinite(cand)
        if ok.all():  # the usual case: one weighted sum
            out: FloatArray = np.einsum("chn,chn->hn", self.bw, cand)
        else:
            w = np.where(ok, self.bw, F32(0.0))
            tot = w.sum(axis=0)
            num = np.einsum("chn,chn->hn", w, np.where(ok, cand, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(tot > 0, num / tot, p99_own.T)
        return np.fmax(out.T, p50)
