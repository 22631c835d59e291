"""Site stage: rack summaries in; upper-level aggregates, headroom for every level, and emergencies out.

Composes the pure parts (streams.tree windows and roll-up, streams.forecast, thermal slopes, streams.emergencies)
into one object with no I/O. The faust agent (streams.app) and the in-process engine (ops.engine) both
drive it, so both paths compute the same numbers. Its whole state serializes to bytes for the worker's
changelog-backed table.

Headroom per level = derated limit in the current feed state - p99 forecast at `headroom_horizon_s`.
Thermal headroom (racks and zones) = allowable inlet - forecast inlet (current + slope x horizon), with the time
to reach the limit at the current slope.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from powerplane.facility_checks import FacilityVerdict
from powerplane.schemas import Event, FacilityReading, Headroom, LevelAggregate, RackSummary, RackSummaryBatch
from powerplane.site import KIND, KIND_NAMES, FloatArray, IntArray, Site
from streams.emergencies import EmergencyDetector, EmergencySettings
from streams.feed_signals import FeedSignals, SignalSettings, mark_losses
from streams.forecast import Forecaster, ForecastSettings
from streams.grid_watch import GridWatch, GridWatchSettings
from streams.tree import Snapshot, TreeSettings, TreeWindows

STATE_VERSION = 3  # 3: the forecaster blends its p99 candidates (streams.forecast.fallback); 1-2 do not resume


@dataclass(frozen=True)
class SiteStageSettings:
    tree: TreeSettings = field(default_factory=TreeSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    emergencies: EmergencySettings = field(default_factory=EmergencySettings)
    signals: SignalSettings = field(default_factory=SignalSettings)  # facility signals (streams.feed_signals)
    grid: GridWatchSettings = field(default_factory=GridWatchSettings)  # the site's [grid] limits (streams.grid_watch)
    headroom_horizon_s: float = 10.0  # the forecast horizon power headroom is taken at
    thermal_fit_s: float = 20.0  # inlet slope: least squares over this much history
    # Which kinds get aggregates from this stage (racks and PDUs come from the per-rack stage, per frame).
    aggregate_kinds: tuple[str, ...] = ("utility", "ups", "rpp", "row", "hall", "zone", "site")


@dataclass
class HeadroomWindow:
    """One closed window's headroom for every level, as columns. The worker encodes the records straight from
    them (`items`): building ~3,660 Headroom objects a second for the 100 MW site and encoding them field by field
    was ~9 % of its catch-up CPU. `records()` gives the same records as objects (the engine, tests);
    tests/unit/test_site_stage.py holds `items` byte-equal to encoding them."""

    site: str
    ids: list[str]
    kinds: list[str]
    modes: list[str]
    ts_s: float
    horizon_s: float
    plan_horizon_s: float | None
    lag_s: float | None
    inlet_limit_c: float
    power_w: FloatArray
    limit_w: FloatArray
    forecast_p50_w: FloatArray
    forecast_p99_w: FloatArray
    plan_p99_w: FloatArray  # NaN: no planning forecast
    thermal: npt.NDArray[np.bool_]  # a thermal level with an inlet reading
    inlet_c: FloatArray
    forecast_inlet_c: FloatArray
    time_to_limit_s: FloatArray  # inf: flat or falling
    # Levels dark by a facility signal the meters have not confirmed yet (feed_signal "unconfirmed"); None: none.
    unconfirmed: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _rows(self, head: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """One dict per level, `head` then Headroom's fields in order, optional fields absent when None
        (Record.to_wire's map when `head` is its two header keys)."""
        head = {**head, "site": self.site}
        ts_s, hz, lim_c = float(self.ts_s), float(self.horizon_s), float(self.inlet_limit_c)
        plan_h = None if self.plan_horizon_s is None else float(self.plan_horizon_s)
        lag = None if self.lag_s is None else float(self.lag_s)
        cols = zip(self.ids, self.kinds, self.modes, self.power_w.tolist(), self.limit_w.tolist(),
                   self.forecast_p50_w.tolist(), self.forecast_p99_w.tolist(), (self.limit_w - self.forecast_p99_w)
                   .tolist(), self.plan_p99_w.tolist(), self.thermal.tolist(), self.inlet_c.tolist(),
                   self.forecast_inlet_c.tolist(), self.time_to_limit_s.tolist(), strict=True)
        unconf = set(np.flatnonzero(self.unconfirmed).tolist()) if self.unconfirmed is not None else set()
        for i, (lvl, kind, mode, p, lim, f50, f99, hr, plan, th, inlet, f_inlet, ttl) in enumerate(cols):
            row = {**head, "level": lvl, "kind": kind, "ts_s": ts_s, "mode": mode, "horizon_s": hz, "power_w": p,
                   "limit_w": lim, "forecast_p50_w": f50, "forecast_p99_w": f99, "headroom_w": hr}
            if plan_h is not None:
                row["plan_horizon_s"] = plan_h
            if math.isfinite(plan):
                row["plan_p99_w"] = plan
            if th:
                row["inlet_c"], row["inlet_limit_c"], row["forecast_inlet_c"] = inlet, lim_c, f_inlet
                row["thermal_headroom_c"] = lim_c - f_inlet
                if math.isfinite(ttl):
                    row["time_to_limit_s"] = ttl
            if lag is not None:
                row["lag_s"] = lag
            if i in unconf:
                row["feed_signal"] = "unconfirmed"
            yield row

    def records(self) -> list[Headroom]:
        return [Headroom(**row) for row in self._rows({})]

    def items(self) -> list[tuple[bytes, bytes, float]]:
        """(key, encoded record, event time) per level, as Record.encode gives them."""
        pack = msgpack.Packer(use_bin_type=True).pack
        ts_s = float(self.ts_s)
        return [(row["level"].encode(), pack(row), ts_s)
                for row in self._rows({"schema": Headroom.SCHEMA, "v": Headroom.VERSION})]


@dataclass
class StageOutput:
    aggregates: list[LevelAggregate] = field(default_factory=list)
    headroom_windows: list[HeadroomWindow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    windows: int = 0

    @property
    def headroom(self) -> list[Headroom]:
        """Every level's headroom record of every window, as objects (built on each call)."""
        return [h for w in self.headroom_windows for h in w.records()]

    def headroom_count(self) -> int:
        return sum(len(w) for w in self.headroom_windows)

    def headroom_items(self) -> list[tuple[bytes, bytes, float]]:
        return [it for w in self.headroom_windows for it in w.items()]

    def extend(self, other: StageOutput) -> None:
        self.aggregates += other.aggregates
        self.headroom_windows += other.headroom_windows
        self.events += other.events
        self.windows += other.windows


class InletSlopes:
    """Least-squares slope of the inlet over the last few windows, per level (NaN-aware, vectorized)."""

    def __init__(self, n: int, depth: int) -> None:
        self.depth = max(3, depth)
        self.t = np.full(self.depth, np.nan)
        self.y = np.full((n, self.depth), np.nan)
        self.i = 0

    def update(self, t_s: float, inlet_c: FloatArray) -> FloatArray:
        self.t[self.i] = t_s
        self.y[:, self.i] = inlet_c
        self.i = (self.i + 1) % self.depth
        ok = np.isfinite(self.y) & np.isfinite(self.t)[None, :]
        n = ok.sum(axis=1)
        t = np.where(ok, self.t[None, :], 0.0)
        y = np.where(ok, self.y, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tm = t.sum(axis=1) / n
            ym = y.sum(axis=1) / n
            dt = np.where(ok, t - tm[:, None], 0.0)
            cov = (dt * np.where(ok, y - ym[:, None], 0.0)).sum(axis=1)
            var = (dt * dt).sum(axis=1)
            # A slope only from a full history: a short one turns start-up transients into "failures".
            slope = np.where((n >= self.depth - 1) & (var > 0), cov / var, np.nan)
        return np.asarray(slope, dtype=np.float64)

    def state(self) -> dict[str, Any]:
        return {"t": self.t.tobytes(), "y": self.y.tobytes(), "i": self.i, "shape": list(self.y.shape)}

    def load_state(self, s: dict[str, Any]) -> None:
        if list(s["shape"]) == list(self.y.shape):
            self.t = np.frombuffer(s["t"], dtype=np.float64).copy()
            self.y = np.frombuffer(s["y"], dtype=np.float64).reshape(self.y.shape).copy()
            self.i = int(s["i"])


class SiteStage:
    def __init__(self, site: Site, settings: SiteStageSettings = SiteStageSettings(),
                 rack_source: IntArray | None = None) -> None:
        """`rack_source`: the pp.telemetry partition of each rack (streams.watermark); None: one source."""
        self.site = site
        self.settings = settings
        self.tree = TreeWindows(site, settings.tree, rack_source)
        n = len(site.level_ids)
        self.forecaster = Forecaster(n, settings.forecast)
        hz = settings.forecast.horizons_s
        self.h_idx = int(np.argmin(np.abs(np.asarray(hz) - settings.headroom_horizon_s)))
        self.horizon_s = float(hz[self.h_idx])
        kinds = site.level_kind
        self.thermal_levels = np.flatnonzero(np.isin(kinds, [KIND["rack"], KIND["zone"]]))
        depth = max(3, round(settings.thermal_fit_s / settings.tree.window_s))
        self.slopes = InletSlopes(self.thermal_levels.size, depth)
        self.detector = EmergencyDetector(site, settings.emergencies)
        self.signals = FeedSignals(site, settings.signals)
        self.tree.signal_dark = self.signals.signal_dark
        # None for a site without [grid] tables: nothing more per window.
        self.grid = GridWatch.for_site(site, settings.tree.window_s, settings.grid)
        self.agg_levels = np.flatnonzero(np.isin(kinds, [KIND[k] for k in settings.aggregate_kinds]))
        self.kind_names = [KIND_NAMES[k] for k in kinds.tolist()]
        self.windows_closed = 0
        self.last: Snapshot | None = None  # the newest closed window, for status and tests
        # Offset of the newest input record (pp.racks) this state has taken, kept in the checkpoint: a worker
        # that takes over replays what came after it (streams.handover). None: the caller does not track it.
        self.input_offset: int | None = None

    # ---- input -------------------------------------------------------------------------------------
    def add(self, summary: RackSummary, wall_s: float | None = None, backlog: bool = False) -> StageOutput:
        return self._on_windows(self.tree.add(summary, wall_s, backlog))

    def add_batch(self, batch: RackSummaryBatch, wall_s: float | None = None, backlog: bool = False) -> StageOutput:
        """`wall_s`: the receiver's clock; `backlog`: input not read yet (streams.tree.TreeWindows.add_batch)."""
        return self._on_windows(self.tree.add_batch(batch, wall_s, backlog))

    def add_facility(self, reading: FacilityReading, wall_s: float | None = None) -> FacilityVerdict:
        """A facility reading (pp.facility): checked, then taken by the feed signals (streams.feed_signals). It
        shows in the next closed window; a refused verdict's reason is what the Kafka shell dead-letters."""
        return self.signals.take(reading, wall_s)

    def advance(self, now_s: float, wall_s: float | None = None) -> StageOutput:
        """Close windows by the clock (call from a timer, only while the input has no backlog): telemetry that
        stops entirely still shows up."""
        return self._on_windows(self.tree.advance(now_s, wall_s))

    def _on_windows(self, snaps: list[Snapshot]) -> StageOutput:
        out = StageOutput()
        for snap in snaps:
            out.extend(self.on_snapshot(snap))
        return out

    # ---- one closed window -------------------------------------------------------------------------
    def on_snapshot(self, snap: Snapshot) -> StageOutput:
        st = self.settings
        self.windows_closed += 1
        prev, self.last = self.last, snap
        site, ids = self.site, self.site.level_ids
        if prev is not None:  # a feed or topology change: history from before it would mislead every level
            changed = ~np.isclose(snap.limit_w, prev.limit_w, equal_nan=True)
            self.forecaster.forget(np.ones(len(ids), dtype=bool) if snap.site_mode != prev.site_mode else changed)
        self.forecaster.update(snap.ts_s, snap.load_w)
        p50, p99 = self.forecaster.predict()
        _, plan99 = self.forecaster.predict_plan()
        f50 = p50[:, self.h_idx]
        # Until a level has history the forecast is its load now: headroom is never invented from nothing.
        f50 = np.where(np.isfinite(f50), f50, snap.load_w)
        f99 = np.where(np.isfinite(p99[:, self.h_idx]), p99[:, self.h_idx], snap.load_w)
        f99 = np.maximum(f99, f50)
        plan_h = float(st.forecast.plan_horizons_s[0]) if st.forecast.plan_horizons_s else None
        plan_p99 = plan99[:, 0] if plan99.shape[1] else np.full(len(ids), np.nan)

        # Thermal.
        tl = self.thermal_levels
        slope = np.full(len(ids), np.nan)
        slope[tl] = self.slopes.update(snap.ts_s, snap.inlet_c[tl])
        inlet_limit = st.emergencies.inlet_limit_c
        rising = np.isfinite(slope) & (slope > 1e-4)
        with np.errstate(invalid="ignore", divide="ignore"):
            ttl = np.where(rising, np.maximum(inlet_limit - snap.inlet_c, 0.0) / np.where(rising, slope, 1.0), np.inf)
        forecast_inlet = snap.inlet_c + np.where(np.isfinite(slope), np.maximum(slope, 0.0), 0.0) * self.horizon_s

        out = StageOutput(windows=1)
        signal_events, confirmed = self.signals.on_window(snap)
        unconfirmed = self.signals.unconfirmed(snap)
        out.events = mark_losses(self.detector, self.detector.step(snap, slope, ttl), unconfirmed, confirmed, site,
                                 snap.ts_s) + signal_events
        if self.grid is not None:
            out.events += self.grid.step(snap)

        for i in self.agg_levels.tolist():
            out.aggregates.append(LevelAggregate(
                site=site.name, level=ids[i], kind=self.kind_names[i], ts_s=snap.ts_s, window_s=snap.window_s,
                power_w=float(snap.load_w[i]), limit_w=float(snap.limit_w[i]), rated_w=float(snap.rated_w[i]),
                mode=snap.site_mode, gpus_expected=int(snap.gpus_expected[i]),
                gpus_reporting=int(snap.gpus_reporting[i]), inlet_c=_opt(snap.inlet_c[i]),
                racks_stale=int(snap.racks_stale[i]), age_s=float(snap.age_s[i]),
                gpu_temp_max_c=_opt(snap.gpu_temp_max_c[i]), gpus_throttled=int(snap.gpus_throttled[i]),
                lag_s=snap.lag_s,
                feed_signal="unconfirmed" if unconfirmed is not None and unconfirmed[i] else None))
        thermal = np.zeros(len(ids), dtype=bool)
        thermal[tl] = True
        modes = [snap.site_mode] * len(ids)  # a rack's level is in its own feed state
        for r, lv in enumerate(site.rack_level.tolist()):
            modes[lv] = snap.rack_mode[r]
        out.headroom_windows.append(HeadroomWindow(
            site=site.name, ids=ids, kinds=self.kind_names, modes=modes, ts_s=snap.ts_s, horizon_s=self.horizon_s,
            plan_horizon_s=plan_h, lag_s=snap.lag_s, inlet_limit_c=inlet_limit,
            power_w=snap.load_w.astype(np.float64), limit_w=snap.limit_w.astype(np.float64),
            forecast_p50_w=np.asarray(f50, dtype=np.float64), forecast_p99_w=np.asarray(f99, dtype=np.float64),
            plan_p99_w=np.asarray(plan_p99, dtype=np.float64), thermal=thermal & np.isfinite(snap.inlet_c),
            inlet_c=snap.inlet_c.astype(np.float64), forecast_inlet_c=np.asarray(forecast_inlet, dtype=np.float64),
            time_to_limit_s=np.asarray(ttl, dtype=np.float64), unconfirmed=unconfirmed))
        return out

    # ---- state -------------------------------------------------------------------------------------
    def state(self) -> bytes:
        return bytes(msgpack.packb({
            "v": STATE_VERSION, "site": self.site.name, "n_levels": len(self.site.level_ids),
            "tree": self.tree.state(), "forecaster": self.forecaster.state(), "slopes": self.slopes.state(),
            "detector": self.detector.state(), "windows_closed": self.windows_closed,
            "input_offset": self.input_offset, "signals": self.signals.state(),
            "grid": self.grid.state() if self.grid is not None else None,
        }, use_bin_type=True))

    def load_state(self, raw: bytes) -> bool:
        """Resume from a checkpoint; False (and a fresh start) when it belongs to another site or shape."""
        s = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if s.get("v") != STATE_VERSION or s.get("site") != self.site.name or s.get("n_levels") != len(
                self.site.level_ids):
            return False
        self.tree.load_state(s["tree"])
        self.forecaster = Forecaster.from_state(s["forecaster"])
        self.slopes.load_state(s["slopes"])
        self.detector.load_state(s["detector"])
        self.windows_closed = int(s["windows_closed"])
        self.input_offset = s.get("input_offset")  # checkpoints written before it have none
        self.signals.load_state(s.get("signals", {}))
        if self.grid is not None and s.get("grid"):  # checkpoints written before it have none
            self.grid.load_state(s["grid"])
        return True


def _opt(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
