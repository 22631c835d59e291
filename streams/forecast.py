"""Online power forecasts for every level of a site: p50 and p99 at short (controller) and planning
horizons. Pure numpy, no I/O; one object forecasts n series at once, one observation per series per
window (`update`), so the streams worker and the in-process engine run the same code.

Methods (same interface; `name` tells them apart):

- `Forecaster` ("adaptive", the product's): per series and horizon, the point forecast is the expert
  with the lowest recent squared error among an EWMA level and every seasonal lag d in [h, max_lag]
  (seasonal-naive with the season picked online: training steps repeat every few seconds, so a rack of
  a 7 s job is best forecast from 7, 14, ... s ago, an inference rack by its smoothed level). p99 =
  p50 + c x sigma, where sigma is the chosen expert's recent RMS error (it widens in bursty periods and
  tightens in calm ones) and c is an online quantile tracker of the normalized error (adaptive conformal
  inference: after each realized error, c rises by rate x (1 - q) on a miss and falls by rate x q
  otherwise, so misses settle at 1 - q). Planning: a slow EWMA level, p99 from the spread around it.
- Baselines: `Persistence` (last value), `SeasonalNaive` (value one season ago; season 60 s, the
  least common multiple of the 2, 4, 5 and 6 s step times of the twin's training jobs and one minute of
  the trace's request-rate rhythm; see ForecastSettings.season_s), `Ewma` (exponentially weighted
  mean). Their p99 = point + an online empirical p99 of their own past errors at that horizon: a
  stochastic quantile tracker on the raw error whose step is rate x the running mean absolute error
  (standard online quantile estimation; no volatility conditioning).

Missing values (NaN) are skipped: the series' state does not move, no error is scored, and a NaN is
never taken as 0. Predictions are NaN until a series has enough data. `state()`/`from_state()` give
an exact resume in a msgpack-friendly dict (arrays as bytes + dtype + shape); the per-series size is
bounded by the ring lengths (`state_bytes_per_series`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
F32 = np.float32


@dataclass(frozen=True)
class ForecastSettings:
    step_s: float = 1.0  # one observation per series per window
    horizons_s: tuple[float, ...] = (1.0, 10.0, 30.0, 60.0)  # short horizons (controllers)
    plan_horizons_s: tuple[float, ...] = (300.0, 900.0, 3600.0)  # planning horizons
    quantile: float = 0.99  # the upper quantile published as "p99"
    min_obs: int = 10  # observations of a series before its forecasts are published
    max_lag_s: float = 120.0  # history kept per series: the longest seasonal lag the product may pick
    season_s: float = 60.0  # SeasonalNaive's season
    ewma_halflife_s: float = 3.0  # Ewma baseline, and the product's level expert
    score_halflife_s: float = 60.0  # product: memory of the error statistics that pick the expert and scale p99
    select_every: int = 10  # product: re-pick the expert every this many windows (the scores move slowly)
    aci_rate: float = 0.02  # step of the quantile trackers (normalized units)
    warm_errors: int = 30  # errors at a horizon before the trackers take over from a fixed multiple
    plan_stride_s: float = 60.0  # planning forecasts are remembered (for their errors) every this often
    plan_halflife_s: float = 300.0  # product: the planning level and spread

    def check(self) -> None:
        bad: list[str] = []
        if not (self.step_s > 0 and math.isfinite(self.step_s)):
            bad.append(f"step_s={self.step_s} must be > 0")
        for name in ("horizons_s", "plan_horizons_s"):
            hs = getattr(self, name)
            if not hs or any(not (h >= self.step_s and math.isfinite(h)) for h in hs):
                bad.append(f"{name}={hs} must be non-empty, each >= step_s")
        if not 0.5 < self.quantile < 1.0:
            bad.append(f"quantile={self.quantile} must be in (0.5, 1)")
        if self.max_lag_s < max(self.horizons_s, default=0.0):
            bad.append(f"max_lag_s={self.max_lag_s} must be >= the longest short horizon")
        if self.season_s < self.step_s:
            bad.append(f"season_s={self.season_s} must be >= step_s")
        for name in ("ewma_halflife_s", "score_halflife_s", "plan_halflife_s", "plan_stride_s", "aci_rate"):
            if not getattr(self, name) > 0:
                bad.append(f"{name}={getattr(self, name)} must be > 0")
        if self.min_obs < 1 or self.select_every < 1 or self.warm_errors < 1:
            bad.append("min_obs, select_every and warm_errors must be >= 1")
        if bad:
            raise ValueError("ForecastSettings: " + "; ".join(bad))


def _alpha(halflife_s: float, step_s: float) -> float:
    """EWMA weight of a new value for a half-life in seconds."""
    return float(1.0 - 0.5 ** (step_s / halflife_s))


def _pack(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


class _Online:
    """Shared machinery: windows and gaps, the history ring, planning snapshots, p99 trackers, state."""

    name: ClassVar[str] = "base"
    # Names of the arrays that make up the state (besides the base's).
    _arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n: int, settings: ForecastSettings = ForecastSettings()) -> None:
        if not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"{type(self).__name__}: n={n!r} must be a non-negative integer")
        settings.check()
        self.n = int(n)
        self.settings = s = settings
        self.h = np.array([max(1, round(h / s.step_s)) for h in s.horizons_s], dtype=np.int64)
        self.hp = np.array([max(1, round(h / s.step_s)) for h in s.plan_horizons_s], dtype=np.int64)
        self.stride = max(1, round(s.plan_stride_s / s.step_s))
        self.R = self._ring_len()
        self.P = int(self.hp.max()) // self.stride + 2
        self.q = s.quantile
        self.k = -1  # index of the last window seen; -1 before the first
        self.t0_s = math.nan  # time of window 0
        H, Hp = self.h.size, self.hp.size
        self.y = np.full((self.R, n), np.nan, dtype=F32)  # ring of observations; lag j at slot (k - j) % R
        self.last = np.full(n, np.nan)  # last observed value
        self.nobs = np.zeros(n, dtype=np.int32)
        self.plan = np.full((self.P, n), np.nan, dtype=F32)  # planning point forecasts every stride windows
        self.off = np.zeros((n, H))  # tracked p99 offsets (raw for baselines, normalized for the product)
        self.mae = np.zeros((n, H))  # running mean absolute error (scale of the baselines' tracker)
        self.ne = np.zeros((n, H), dtype=np.int32)
        self.offp = np.zeros((n, Hp))
        self.maep = np.zeros((n, Hp))
        self.nep = np.zeros((n, Hp), dtype=np.int32)
        self._base_arrays = ("y", "last", "nobs", "plan", "off", "mae", "ne", "offp", "maep", "nep")
        self._cols = np.arange(n)

    # ---- to be provided by each method ---------------------------------------------------
    def _ring_len(self) -> int:
        return int(max(self.h.max(), 1))

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        """(n, H): y minus the forecast issued h windows ago for now (NaN where there was none)."""
        raise NotImplementedError

    def _observe(self, y: FloatArray, ok: npt.NDArray[np.bool_]) -> None:
        """Move the method's own state with this window's values (ok: the finite ones)."""

    def _skip(self, slot_k: int) -> None:
        """A window with no data at all (a gap in time)."""

    def _after_write(self, ok: npt.NDArray[np.bool_]) -> None:
        """This window's values are in the ring."""

    def _derive(self) -> None:
        """Recompute what follows from the state (after from_state)."""

    def _point(self) -> FloatArray:
        raise NotImplementedError

    def _plan_point(self) -> FloatArray:
        return self.last.copy()

    # ---- ring helpers --------------------------------------------------------------------
    def _lag(self, j: npt.NDArray[np.int64] | int) -> FloatArray:
        """Value observed j windows before window k (per series when j is an array). During an update,
        k is already the new window, which enters the ring last: lags 1..R are the past ones."""
        if isinstance(j, int | np.integer):
            row: FloatArray = self.y[(self.k - int(j)) % self.R].astype(np.float64)
            return row
        per: FloatArray = self.y[(self.k - j) % self.R, self._cols].astype(np.float64)
        return per

    # ---- baselines' p99: online empirical quantile of their own errors -------------------
    def _track_raw(self, e: FloatArray, off: FloatArray, mae: FloatArray, ne: npt.NDArray[np.int32]) -> None:
        ok = np.isfinite(e)
        if not ok.any():
            return
        e0 = np.where(ok, e, 0.0)
        ne += ok
        w = np.maximum(1.0 / np.maximum(ne, 1), _alpha(self.settings.score_halflife_s, self.settings.step_s))
        mae += np.where(ok, w * (np.abs(e0) - mae), 0.0)
        miss = (e0 > off).astype(np.float64)
        step = self.settings.aci_rate * mae * (miss - (1.0 - self.q))
        warm = ne < self.settings.warm_errors
        # Until enough errors are seen the offset is a fixed multiple of the mean error (about a
        # normal's p99 over its mean absolute deviation), then the tracker takes over from there.
        off[...] = np.where(ok, np.where(warm, 2.9 * mae, off + step), off)

    def _track(self, e: FloatArray) -> None:
        self._track_raw(e, self.off, self.mae, self.ne)

    def _offset(self) -> FloatArray:
        return np.where(self.ne > 0, np.maximum(self.off, 0.0), np.nan)

    def _plan_errors(self, y: FloatArray) -> FloatArray:
        """(n, Hp): y minus the planning forecast remembered at least H windows ago (at most H + stride - 1)."""
        out = np.full((self.n, self.hp.size), np.nan)
        snap_now = self.k // self.stride
        for i, H in enumerate(self.hp):
            if self.k - H < 0:
                continue
            j = (self.k - int(H)) // self.stride
            if snap_now - j < self.P:
                out[:, i] = y - self.plan[j % self.P].astype(np.float64)
        return out

    def _track_plan(self, e: FloatArray) -> None:
        self._track_raw(e, self.offp, self.maep, self.nep)

    def _plan_offset(self) -> FloatArray:
        return np.where(self.nep > 0, np.maximum(self.offp, 0.0), np.nan)

    # ---- public interface ----------------------------------------------------------------
    def update(self, t_s: float, y: FloatArray) -> None:
        """One window of values (shape (n,), NaN = no value for that series now)."""
        arr = np.asarray(y, dtype=np.float64)
        if arr.shape != (self.n,):
            raise ValueError(f"{self.name} forecast update at t_s={t_s}: values have shape {arr.shape}, "
                             f"expected ({self.n},)")
        if not math.isfinite(t_s):
            raise ValueError(f"{self.name} forecast update: t_s={t_s} is not a finite time")
        if self.k < 0:
            self.t0_s, k = float(t_s), 0
        else:
            k = round((t_s - self.t0_s) / self.settings.step_s)
            if k <= self.k:
                raise ValueError(f"{self.name} forecast update at t_s={t_s}: not after the last window "
                                 f"(t_s={self.t0_s + self.k * self.settings.step_s})")
        # Windows with no data at all: empty history slots, nothing else moves.
        for j in range(max(self.k + 1, k - max(self.R, self.P * self.stride)), k):
            self.k = j
            self.y[j % self.R] = np.nan
            self._skip(j)
            if j % self.stride == 0:
                self.plan[(j // self.stride) % self.P] = np.nan
        self.k = k
        ok = np.isfinite(arr)
        arr = np.where(ok, arr, np.nan)  # +-inf is no value either
        self._track(self._issued_errors(arr))
        self._track_plan(self._plan_errors(arr))
        self._observe(arr, ok)
        self.y[k % self.R] = arr.astype(F32)
        self._after_write(ok)
        self.last = np.where(ok, arr, self.last)
        self.nobs += ok
        if k % self.stride == 0:
            self.plan[(k // self.stride) % self.P] = self._plan_point().astype(F32)

    def _ready(self) -> npt.NDArray[np.bool_]:
        return self.nobs >= self.settings.min_obs

    def predict(self) -> tuple[FloatArray, FloatArray]:
        """(p50, p99), each (n, len(horizons_s)); NaN until a series has enough data."""
        if self.k < 0:
            nan = np.full((self.n, self.h.size), np.nan)
            return nan, nan.copy()
        p50 = self._point()
        p99 = p50 + self._offset()
        bad = ~self._ready()
        p50[bad] = np.nan
        p99[bad] = np.nan
        return p50, p99

    def predict_plan(self) -> tuple[FloatArray, FloatArray]:
        """(p50, p99), each (n, len(plan_horizons_s))."""
        Hp = self.hp.size
        if self.k < 0:
            nan = np.full((self.n, Hp), np.nan)
            return nan, nan.copy()
        p50 = np.repeat(self._plan_point()[:, None], Hp, axis=1)
        p99 = p50 + self._plan_offset()
        bad = ~self._ready()
        p50[bad] = np.nan
        p99[bad] = np.nan
        return p50, p99

    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly; msgpack-serializable."""
        names = self._base_arrays + self._arrays
        return {"method": self.name, "n": self.n, "settings": asdict(self.settings), "k": self.k,
                "t0_s": self.t0_s, "arrays": {a: _pack(getattr(self, a)) for a in names}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("method") != cls.name:
            raise ValueError(f"{cls.name} forecast state: holds method {state.get('method')!r}")
        raw = dict(state["settings"])
        known = {f.name for f in fields(ForecastSettings)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{cls.name} forecast state: unknown settings {unknown}")
        for key in ("horizons_s", "plan_horizons_s"):
            if key in raw:
                raw[key] = tuple(float(x) for x in raw[key])
        obj = cls(int(state["n"]), ForecastSettings(**raw))
        obj.k = int(state["k"])
        obj.t0_s = float(state["t0_s"])
        for a in obj._base_arrays + obj._arrays:
            cur = getattr(obj, a)
            val = _unpack(state["arrays"][a])
            if val.shape != cur.shape or val.dtype != cur.dtype:
                raise ValueError(f"{cls.name} forecast state: array {a!r} is {val.dtype}{val.shape}, "
                                 f"expected {cur.dtype}{cur.shape}")
            setattr(obj, a, val)
        obj._derive()
        return obj

    def state_bytes_per_series(self) -> float:
        names = self._base_arrays + self._arrays
        return float(sum(getattr(self, a).nbytes for a in names)) / max(self.n, 1)


# ======================================================================================
# Baselines
# ======================================================================================


class Persistence(_Online):
    """The last value, at every horizon."""

    name: ClassVar[str] = "persistence"

    def _issued_errors(self, y: FloatArray) -> FloatArray:
        return np.stack([y - self._lag(int(h)) if self.k >= h else np.full(self.n, np.nan)
                         for h in self.h], axis=1)

    def _point(self) -> FloatArray:
        return np.repeat(self.last[:, None], self.h.size, axis=1)


class SeasonalNaive(_Online):
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


class Ewma(_Online):
    """Exponentially weighted mean (half-life ewma_halflife_s), at every horizon."""

    name: ClassVar[str] = "ewma"
    _arrays: ClassVar[tuple[str, ...]] = ("lvl", "lvl_ring")

    def __init__(self, n: int, settings: ForecastSettings = ForecastSettings()) -> None:
        super().__init__(n, settings)
        self.a = _alpha(settings.ewma_halflife_s, settings.step_s)
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


# ======================================================================================
# The product's method
# ======================================================================================


class Forecaster(_Online):
    """Per series and horizon: the best of an EWMA level and every seasonal lag, p99 by adaptive conformal
    tracking of the chosen expert's normalized error. See the module docstring."""

    name: ClassVar[str] = "adaptive"
    _arrays: ClassVar[tuple[str, ...]] = ("lvl", "lvl_ring", "sq", "sq_lvl", "sel", "sig", "mean", "var")

    def __init__(self, n: int, settings: ForecastSettings = ForecastSettings()) -> None:
        super().__init__(n, settings)
        s = settings
        H = self.h.size
        self.a = _alpha(s.ewma_halflife_s, s.step_s)
        self.b = _alpha(s.score_halflife_s, s.step_s)
        self.ap = _alpha(s.plan_halflife_s, s.step_s)
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
        for i, h in enumerate(self.h):
            if self.k < h:
                continue
            ep = self._epoch(self.k - int(h))
            sel = self.sel[ep, :, i]
            e = np.where(sel == 0, e_lvl[:, i], e_lag[np.maximum(sel, 1) - 1, self._cols].astype(np.float64))
            z[:, i] = e / np.maximum(self.sig[ep, :, i].astype(np.float64), self._floor())
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
        firstm = ok & ~np.isfinite(self.mean)
        d = np.where(ok, y - self.mean, 0.0)
        self.mean = np.where(firstm, y, self.mean + self.ap * d)
        self.var = np.where(firstm, 0.0, np.where(ok, (1 - self.ap) * (self.var + self.ap * d * d), self.var))

    def _skip(self, slot_k: int) -> None:
        self.lvl_ring[slot_k % self.lvl_ring.shape[0]] = self.lvl.astype(F32)
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


METHODS: dict[str, type[_Online]] = {m.name: m for m in (Forecaster, Persistence, SeasonalNaive, Ewma)}
