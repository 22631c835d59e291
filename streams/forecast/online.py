"""What every forecast method shares (see streams.forecast): settings, windows and gaps, the history ring,
planning snapshots, the baselines' p99 tracker, and an exact resume through `state()`/`from_state()`.
Pure numpy, no I/O."""

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
    select_halflife_s: float = 600.0  # product: memory of the candidate p99s' pinball losses (fallback)
    peak_halflife_s: float = 30.0  # product: a held burst peak decays towards the level with this half-life
    blend_power: float = 16.0  # product: p99 blend weight ~ (best loss / candidate's loss) ** this (fallback)

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
        for name in ("ewma_halflife_s", "score_halflife_s", "plan_halflife_s", "plan_stride_s", "aci_rate",
                     "select_halflife_s", "peak_halflife_s", "blend_power"):
            if not getattr(self, name) > 0:
                bad.append(f"{name}={getattr(self, name)} must be > 0")
        if self.min_obs < 1 or self.select_every < 1 or self.warm_errors < 1:
            bad.append("min_obs, select_every and warm_errors must be >= 1")
        if bad:
            raise ValueError("ForecastSettings: " + "; ".join(bad))


DEFAULT_SETTINGS = ForecastSettings()


def ewma_alpha(halflife_s: float, step_s: float) -> float:
    """EWMA weight of a new value for a half-life in seconds."""
    return float(1.0 - 0.5 ** (step_s / halflife_s))


def _pack(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


class OnlineForecast:
    """Shared machinery: windows and gaps, the history ring, planning snapshots, p99 trackers, state."""

    name: ClassVar[str] = "base"
    # Names of the arrays that make up the state (besides the base's).
    _arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n: int, settings: ForecastSettings = DEFAULT_SETTINGS) -> None:
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
        """Recompute what follows from the state (after from_state and forget)."""

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
        w = np.maximum(1.0 / np.maximum(ne, 1), ewma_alpha(self.settings.score_halflife_s, self.settings.step_s))
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

    def forget(self, series: npt.NDArray[np.bool_]) -> None:
        """Start the chosen series afresh, as if never seen (history, error scores, p99 trackers): after a
        feed or topology change their history describes a tree that is gone, and a step in it would widen
        their p99 for minutes (the error scores have a half-life of `score_halflife_s`). Their forecasts are
        NaN again until `min_obs` new windows. Rare (on a change), so built from a fresh object."""
        mask = np.asarray(series, dtype=bool)
        if not mask.any():
            return
        fresh = type(self)(self.n + 1, self.settings)  # its series axis is the one one longer than ours
        for a in self._base_arrays + self._arrays:
            cur, new = getattr(self, a), getattr(fresh, a)
            ax = next(i for i, (x, y) in enumerate(zip(cur.shape, new.shape, strict=True)) if x != y)
            idx: list[Any] = [slice(None)] * cur.ndim
            idx[ax] = mask
            src: list[Any] = [slice(None)] * cur.ndim
            src[ax] = slice(0, 1)
            cur[tuple(idx)] = new[tuple(src)]
        self._derive()

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
            if a not in state["arrays"]:
                raise ValueError(f"{cls.name} forecast state: no array {a!r} (written by an older version)")
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
