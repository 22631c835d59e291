"""Site stage, part 4: the site's and each utility feed's load against the utility's limits (issue 16). Pure, no I/O.

Fed the total power of the site and of each utility feed with a `[grid]` table once per closed window, it keeps a
bounded ring buffer per series (as long as the longest window its limits need) and raises events on pp.events:
- grid_ramp: the ramp over `ramp_window_s` above `ramp_up_mw_per_s` or `ramp_down_mw_per_s`;
- grid_range: max - min over `range_window_s` above `range_mw`;
- grid_oscillation: the amplitude in a band (spectrum over `band_window_s`) above its `limit_mw`.
The measures are powerplane.grid's, the same functions `evaluate` and the controllers use.

Trust (docs/safety.md): a sample counts only when every rack beneath the series has its own frame in the window,
all its GPUs report, the level is not dark or going dark, and the feed state has not changed lately: otherwise a
rack dropping out of the roll-up reads as a ramp down (and its conservative estimate as a ramp up). A measure is
taken only over a window of complete samples; an incomplete one is neither a violation nor a clearance (an open
event stays open, a pending one restarts).

What a 1 s series can see (docs/grid.md): bands below its Nyquist frequency, 0.5 Hz. A band straddling it is
measured below 0.5 Hz only and its event says so; a band wholly above is never evaluated here.

Lifecycle as streams.emergencies: one occurrence is one event id, opened once the violation has lasted
`sustain_s`, re-sent only when its severity changes, resolved once the measure has stayed under `clear_frac` of
its limit for `clear_s` (hysteresis: a measure hovering at the limit does not page twice).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.grid import (
    GridLimits,
    band_amplitude_mw,
    band_resolved,
    dynamic_range_mw,
    ramp_mw_per_s,
    window_samples,
)
from powerplane.schemas import Event
from powerplane.site import KIND, FloatArray, Site
from streams.tree import Snapshot

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class GridWatchSettings:
    sustain_s: float = 0.0  # over the limit this long before opening (the measures are windowed already)
    clear_s: float = 10.0  # under clear_frac of the limit this long before resolving
    clear_frac: float = 0.9
    critical_factor: float = 2.0  # a measure at this multiple of its limit is critical, else warning
    # After the feed state changes (a feed lost or back) the split between feeds settles for ~10 s (PDU meters
    # refresh about every 10 s): samples in this time are not comparable.
    transition_s: float = 15.0


class Ring:
    """The newest `cap` samples of a series, each with whether it is complete; O(1) per sample, the last m as
    contiguous arrays (every sample is written twice, at i and i + cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.values = np.full(2 * cap, np.nan)
        self.ok = np.zeros(2 * cap, dtype=bool)
        self.pos = 0  # where the next sample goes
        self.count = 0

    def push(self, value: float, ok: bool) -> None:
        self.values[self.pos] = self.values[self.pos + self.cap] = value
        self.ok[self.pos] = self.ok[self.pos + self.cap] = ok
        self.pos = (self.pos + 1) % self.cap
        self.count = min(self.count + 1, self.cap)

    def last(self, m: int) -> tuple[FloatArray, BoolArray]:
        """The newest m samples, oldest first (fewer while the ring is filling)."""
        m = min(m, self.count)
        end = self.pos + self.cap
        return self.values[end - m:end], self.ok[end - m:end]

    def state(self) -> dict[str, Any]:
        return {"cap": self.cap, "values": self.values[:self.cap].tobytes(), "ok": self.ok[:self.cap].tobytes(),
                "pos": self.pos, "count": self.count}

    def load_state(self, s: dict[str, Any]) -> None:
        if int(s["cap"]) != self.cap:
            return  # the limits changed: their windows with them; start empty
        v = np.frombuffer(s["values"], dtype=np.float64)
        ok = np.frombuffer(s["ok"], dtype=bool)
        self.values = np.concatenate([v, v])
        self.ok = np.concatenate([ok, ok])
        self.pos, self.count = int(s["pos"]), int(s["count"])


@dataclass
class Reading:
    """One measure of one series in one window. `value` NaN: not measurable (incomplete evidence)."""

    key: str  # kind:series:measure, one occurrence at a time
    kind: str
    series: str
    value: float
    limit: float
    summary: str  # the reason, for when it is over the limit
    details: dict[str, float] = field(default_factory=dict)


class GridSeries:
    """One series (the site, or a utility feed) and its limits: the ring of samples and its measures."""

    def __init__(self, name: str, limits: GridLimits, dt_s: float) -> None:
        self.name, self.limits, self.dt_s = name, limits, dt_s
        lim = limits
        self.k_ramp = window_samples(lim.ramp_window_s, dt_s) + 1  # samples spanning the window, both ends
        self.k_range = window_samples(lim.range_window_s, dt_s) + 1
        self.k_band = window_samples(lim.band_window_s, dt_s)
        need = [2]
        if lim.ramp_up_mw_per_s is not None or lim.ramp_down_mw_per_s is not None:
            need.append(self.k_ramp)
        if lim.range_mw is not None:
            need.append(self.k_range)
        self.bands = [b for b in lim.bands if band_resolved(b.lo_hz, b.hi_hz, dt_s) != "none"]
        if self.bands:
            need.append(self.k_band)
        self.ring = Ring(max(need))
        self.last_ts_s: float | None = None
        # Counters (status, tests): samples refused as not newer than the last, seconds with no sample (filled
        # as incomplete), samples taken incomplete.
        self.late_dropped = 0
        self.gap_samples = 0
        self.incomplete_samples = 0
        self.samples = 0

    def push(self, ts_s: float, power_w: float, complete: bool) -> bool:
        """Take one window's total; False (and counted) when it is not newer than the last one taken."""
        if self.last_ts_s is not None:
            steps = round((ts_s - self.last_ts_s) / self.dt_s)
            if steps <= 0:
                self.late_dropped += 1
                return False
            for _ in range(min(steps - 1, self.ring.cap)):  # missed windows: nothing known of them
                self.ring.push(math.nan, False)
            self.gap_samples += steps - 1
        self.last_ts_s = ts_s
        ok = complete and math.isfinite(power_w)
        self.ring.push(power_w, ok)
        self.samples += 1
        self.incomplete_samples += not ok
        return True

    def _window(self, k: int) -> FloatArray | None:
        """The newest k samples when all are there and complete, else None."""
        v, ok = self.ring.last(k)
        return v if v.size == k and bool(ok.all()) else None

    def readings(self) -> list[Reading]:
        """Every configured measure over the newest samples."""
        return self._ramp() + self._range() + self._bands()

    def _ramp(self) -> list[Reading]:
        lim, out = self.limits, []
        if lim.ramp_up_mw_per_s is None and lim.ramp_down_mw_per_s is None:
            return []
        w = self._window(self.k_ramp)
        r = float(ramp_mw_per_s(w, self.dt_s, lim.ramp_window_s)[-1]) if w is not None else math.nan
        for way, limit, v in (("up", lim.ramp_up_mw_per_s, r), ("down", lim.ramp_down_mw_per_s, -r)):
            if limit is None:
                continue
            out.append(Reading(
                f"grid_ramp:{self.name}:ramp_{way}", "grid_ramp", self.name, v, limit,
                f"{self.name}: ramp {way} {v:.3g} MW/s over {lim.ramp_window_s:g} s, over the utility's limit "
                f"of {limit:g} MW/s", {"ramp_mw_per_s": r, "limit_mw_per_s": limit, "window_s": lim.ramp_window_s}))
        return out

    def _range(self) -> list[Reading]:
        lim = self.limits
        if lim.range_mw is None:
            return []
        w = self._window(self.k_range)
        v = float(dynamic_range_mw(w, self.dt_s, lim.range_window_s)[-1]) if w is not None else math.nan
        return [Reading(f"grid_range:{self.name}:range", "grid_range", self.name, v, lim.range_mw,
                        f"{self.name}: dynamic range {v:.3g} MW within {lim.range_window_s:g} s, over the utility's "
                        f"limit of {lim.range_mw:g} MW",
                        {"range_mw": v, "limit_mw": lim.range_mw, "window_s": lim.range_window_s})]

    def _bands(self) -> list[Reading]:
        if not self.bands:
            return []
        w = self._window(self.k_band)
        amp = (band_amplitude_mw(w, self.dt_s, [(b.lo_hz, b.hi_hz) for b in self.bands]) if w is not None
               else np.full(len(self.bands), np.nan))
        nyquist = 0.5 / self.dt_s
        out = []
        for b, a in zip(self.bands, amp.tolist(), strict=True):
            partial = band_resolved(b.lo_hz, b.hi_hz, self.dt_s) == "partial"
            seen_hi = min(b.hi_hz, nyquist)
            note = (f" (measured {b.lo_hz:g}-{seen_hi:g} Hz only: {self.dt_s:g} s samples resolve up to "
                    f"{nyquist:g} Hz; above it the GPUs' own power smoothing must hold the swing)" if partial else "")
            out.append(Reading(
                f"grid_oscillation:{self.name}:band_{b.lo_hz:g}-{b.hi_hz:g}hz", "grid_oscillation", self.name, a,
                b.limit_mw, f"{self.name}: oscillation {b.lo_hz:g}-{b.hi_hz:g} Hz at {a:.3g} MW peak over "
                f"{self.limits.band_window_s:g} s, over the utility's limit of {b.limit_mw:g} MW{note}",
                {"amplitude_mw": a, "limit_mw": b.limit_mw, "lo_hz": b.lo_hz, "hi_hz": b.hi_hz,
                 "measured_hi_hz": seen_hi, "band_partial": float(partial), "window_s": self.limits.band_window_s}))
        return out

    def state(self) -> dict[str, Any]:
        return {"ring": self.ring.state(), "last_ts_s": self.last_ts_s, "late_dropped": self.late_dropped,
                "gap_samples": self.gap_samples, "incomplete_samples": self.incomplete_samples,
                "samples": self.samples}

    def load_state(self, s: dict[str, Any]) -> None:
        self.ring.load_state(s["ring"])
        self.last_ts_s = s["last_ts_s"] if int(s["ring"]["cap"]) == self.ring.cap else None
        self.late_dropped, self.gap_samples = int(s["late_dropped"]), int(s["gap_samples"])
        self.incomplete_samples, self.samples = int(s["incomplete_samples"]), int(s["samples"])


@dataclass
class _Open:
    id: str
    kind: str
    level: str
    opened_s: float
    severity: str
    last_true_s: float
    summary: str
    details: dict[str, float]
    peak: float


class GridWatch:
    """The site's and its utility feeds' series against their [grid] limits. `observe` is the pure core (one
    total and a completeness flag per series); `step` takes them from a closed window of the site stage."""

    def __init__(self, site_name: str, limits: dict[str, GridLimits], dt_s: float,
                 settings: GridWatchSettings = GridWatchSettings()) -> None:
        self.site_name, self.settings = site_name, settings
        self.series = {name: GridSeries(name, lim, dt_s) for name, lim in limits.items()}
        self.pending: dict[str, float] = {}  # key -> first window over the limit
        self.open: dict[str, _Open] = {}
        # Site-bound (step): per series its level and the racks beneath; the feed state and when it last changed.
        self.levels: dict[str, int] = {}
        self.racks: dict[str, BoolArray] = {}
        self.mode: str | None = None
        self.mode_changed_s = -math.inf

    @classmethod
    def for_site(cls, site: Site, dt_s: float, settings: GridWatchSettings = GridWatchSettings()) -> GridWatch | None:
        """The watch for a site's [grid] tables; None when it has none (the site stage then does nothing more)."""
        limits: dict[str, GridLimits] = {}
        site_levels = site.levels_of_kind("site")
        if site.grid is not None and site_levels.size:
            limits[site.level_ids[int(site_levels[0])]] = site.grid
        limits.update(site.feed_grid)
        if not limits:
            return None
        watch = cls(site.name, limits, dt_s, settings)
        for name in limits:
            lv = site.level(name)
            watch.levels[name] = lv
            watch.racks[name] = (_racks_under(site, lv) if site.level_kind[lv] == KIND["utility"]
                                 else np.ones(site.rack_level.size, dtype=bool))
        return watch

    # ---- a closed window ---------------------------------------------------------------------------
    def complete(self, snap: Snapshot, name: str) -> bool:
        """Whether this window's total of a series is comparable with the last one (docs/safety.md)."""
        lv = self.levels[name]
        return bool(snap.rack_fresh[self.racks[name]].all()
                    and snap.gpus_reporting[lv] >= snap.gpus_expected[lv]
                    and not snap.dark[lv] and not snap.dark_share[lv] > 0
                    and snap.ts_s - self.mode_changed_s >= self.settings.transition_s)

    def step(self, snap: Snapshot) -> list[Event]:
        if self.mode is not None and snap.site_mode != self.mode:
            self.mode_changed_s = snap.ts_s
        self.mode = snap.site_mode
        return self.observe(snap.ts_s, {n: (float(snap.load_w[lv]), self.complete(snap, n))
                                        for n, lv in self.levels.items()})

    def observe(self, ts_s: float, totals: dict[str, tuple[float, bool]]) -> list[Event]:
        """One window: per series its total (W) and whether it is complete; the events to publish."""
        readings: list[Reading] = []
        for name, (power_w, complete) in totals.items():
            s = self.series[name]
            if s.push(ts_s, power_w, complete):
                readings += s.readings()
        return self._lifecycle(ts_s, readings)

    def _lifecycle(self, now: float, readings: list[Reading]) -> list[Event]:
        st, out = self.settings, []
        for r in readings:
            o = self.open.get(r.key)
            if math.isnan(r.value):  # incomplete: neither a violation nor a clearance
                self.pending.pop(r.key, None)
                continue
            over = r.value > r.limit
            if o is None:
                if not over:
                    self.pending.pop(r.key, None)
                    continue
                first = self.pending.setdefault(r.key, now)
                if now - first >= st.sustain_s:
                    self.pending.pop(r.key, None)
                    o = self.open[r.key] = _Open(f"{r.key}:{now:.0f}", r.kind, r.series, now, self._severity(r),
                                                 now, r.summary, {**r.details, "peak": r.value}, r.value)
                    out.append(self._event(o, now, "open"))
                continue
            if r.value > st.clear_frac * r.limit:
                o.last_true_s = now
            if over:
                o.peak = max(o.peak, r.value)
                o.details = {**r.details, "peak": o.peak}
                if self._severity(r) == "critical" and o.severity != "critical":
                    o.severity, o.summary = "critical", r.summary
                    out.append(self._event(o, now, "open"))
            elif now - o.last_true_s >= st.clear_s:
                del self.open[r.key]
                out.append(self._event(o, now, "resolved"))
        return out

    def _severity(self, r: Reading) -> str:
        return "critical" if r.value >= self.settings.critical_factor * r.limit else "warning"

    def _event(self, o: _Open, now: float, state: str) -> Event:
        summary = o.summary if state == "open" else f"resolved: {o.summary} (peak {o.peak:.3g})"
        return Event(id=o.id, site=self.site_name, kind=o.kind, severity=o.severity, state=state, levels=[o.level],
                     ts_s=now, deadline_s=None, summary=summary, opened_s=o.opened_s,
                     details={k: float(v) for k, v in o.details.items()})

    # ---- state -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        return {n: {"samples": s.samples, "incomplete_samples": s.incomplete_samples, "gap_samples": s.gap_samples,
                    "late_dropped": s.late_dropped} for n, s in self.series.items()}

    def state(self) -> dict[str, Any]:
        return {"series": {n: s.state() for n, s in self.series.items()}, "pending": dict(self.pending),
                "open": {k: asdict(o) for k, o in self.open.items()}, "mode": self.mode,
                "mode_changed_s": self.mode_changed_s}

    def load_state(self, s: dict[str, Any]) -> None:
        for n, ss in s.get("series", {}).items():
            if n in self.series:
                self.series[n].load_state(ss)
        self.pending = {str(k): float(v) for k, v in s.get("pending", {}).items()}
        self.open = {str(k): _Open(**v) for k, v in s.get("open", {}).items() if k.split(":")[1] in self.series}
        self.mode = s.get("mode")
        self.mode_changed_s = float(s.get("mode_changed_s", -math.inf))


def _racks_under(site: Site, level: int) -> BoolArray:
    """Racks with a PDU beneath `level` on either feed."""
    n = len(site.level_ids)
    root = np.arange(n)
    for _ in range(n):  # walk every level up to its root (the tree is a few levels deep)
        par = site.level_parent[root]
        if (par < 0).all():
            break
        root = np.where(par >= 0, par, root)
    return np.asarray((root[site.rack_pdu] == level).any(axis=1), dtype=bool)
