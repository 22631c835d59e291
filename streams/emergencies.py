"""Site stage, part 3: emergencies from each closed window. Pure, no I/O.

Kinds (docs/runbooks.md has what to do for each):
- feed_loss / ups_loss / power_loss: a utility feed, a UPS lineup, or an RPP/PDU went dark (its meters read
  ~nothing of the load beneath it, or a UPS says it is on battery: streams.feed_signals; then the details carry
  `signal_unconfirmed` 1 until the meters confirm it, and the event is sent again with 0 when they do).
  Deadline: the ride-through for shedding (BRIEF.md: plan on ~10 s).
- breaker_overload: a feed level above its rating (critical; deadline = estimated trip time from an
  inverse-time curve with the breaker's accumulated heat), or above its continuous (derated) limit for a
  sustained time (warning).
- cooling_failure: a zone's hottest inlet rising faster than a bound, or its heat load above its cooling
  capacity. Deadline: when the inlet reaches the allowable limit at the current slope.
- thermal_slowdown: GPUs in a zone reporting thermal slowdown, or at their slowdown temperature.
- telemetry_loss: a rack with no reading for longer than a bound, or with most of its GPUs silent.
- meter_gap: the gap between a PDU meter and the sum of its servers growing away from its usual level for a
  sustained time (a meter failing, or load nobody monitors).

Each occurrence is one event id: opened once, re-sent only when its severity or deadline changes materially,
resolved once its condition has been clear for `clear_s` (so a flapping reading does not page twice).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from powerplane.physics import ElectricalConfig, climb_clock, trip_time_s
from powerplane.schemas import Event
from powerplane.site import KIND, FloatArray, Site
from streams.tree import Snapshot


@dataclass(frozen=True)
class EmergencySettings:
    ride_through_s: float = 10.0  # BRIEF.md: plan on ~10 s of ride-through for shedding (NFPA 110 Type 10)
    clear_s: float = 5.0  # a condition must be gone this long before its event resolves
    thermal_clear_s: float = 60.0  # GPUs hovering at their slowdown temperature flap: resolve only when calm
    # A single RPP or PDU reading dark must stay so this long (PDU meters refresh about every 10 s, out of
    # phase, so a feed loss or restoration looks like PDUs going dark one by one for a few seconds).
    power_loss_confirm_s: float = 12.0
    overload_warn_sustain_s: float = 30.0  # above the continuous (derated) limit this long: warning
    inlet_limit_c: float = 32.0  # ASHRAE A1 allowable upper bound (BRIEF.md)
    inlet_rise_c_per_min: float = 3.0  # a zone's hottest inlet rising faster than this: cooling failure
    cooling_sustain_s: float = 4.0  # ... for this long (one noisy reading is not a failure) at a steady load:
    # the clock restarts when the zone's load passes the load it started from by this share (a zone's inlets
    # follow its load up: a site restoring after a demand-response shed is not a cooling failure;
    # powerplane.physics.climb_clock)
    cooling_load_step_frac: float = 0.02
    cooling_over_capacity_sustain_s: float = 60.0  # heat above capacity this long, inlet not climbing: warning
    cooling_clear_s: float = 30.0  # a cooling event resolves only after this long calm
    thermal_warmup_s: float = 60.0  # inlet slopes are trusted only after this much history
    gpu_slowdown_c: float = 89.0  # H100 slowdown temperature (BRIEF.md)
    telemetry_loss_s: float = 5.0  # no reading from a rack for this long
    gpus_silent_frac: float = 0.5  # or fewer than this share of its GPUs reporting
    meter_gap_frac: float = 0.10  # PDU meter vs its servers' sum, as a share of the PDU's load ...
    meter_gap_min_w: float = 1_000.0  # ... and at least this much
    meter_gap_sustain_s: float = 30.0
    meter_gap_tau_s: float = 10.0  # the gap is smoothed this much first (GPU readings are noisy per second)
    # ... and compared with its own long-run level: a steady offset is the model's error for that rack (its
    # servers' idle draw, PSU curve); a gap that grows away from it is a meter failing or load appearing.
    meter_gap_baseline_tau_s: float = 900.0
    meter_gap_warmup_s: float = 300.0
    # Breaker curve (the same inverse-time model the twin trips its breakers by; BRIEF.md figures).
    breaker_pickup: float = 1.0
    breaker_exponent: float = 2.76
    breaker_k_s: float = 577.0
    breaker_cool_tau_s: float = 300.0

    def electrical(self) -> ElectricalConfig:
        return ElectricalConfig(breaker_pickup=self.breaker_pickup, breaker_exponent=self.breaker_exponent,
                                breaker_k_s=self.breaker_k_s, breaker_cool_tau_s=self.breaker_cool_tau_s)


@dataclass
class _Cond:
    severity: str
    levels: list[str]
    deadline_s: float | None
    summary: str
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class _Open:
    id: str
    kind: str
    level: str
    opened_s: float
    severity: str
    deadline_s: float | None
    last_true_s: float
    levels: list[str]
    summary: str
    details: dict[str, float]


class EmergencyDetector:
    def __init__(self, site: Site, settings: EmergencySettings = EmergencySettings()) -> None:
        self.site = site
        self.settings = settings
        self.elec = settings.electrical()
        self.ids = site.level_ids
        kinds = site.level_kind
        self.breakers = np.flatnonzero(np.isin(kinds, [KIND[k] for k in ("utility", "ups", "rpp", "pdu")]))
        self.zones = site.levels_of_kind("zone")
        self.pdus = site.levels_of_kind("pdu")
        self.heat = np.zeros(len(site.level_ids))  # accumulated trip fraction per level (1.0 = trip)
        self.dark_since = np.full(len(site.level_ids), np.nan)  # first window any meter beneath read dark
        self.gap_ewma = np.full(len(site.level_ids), np.nan)
        self.gap_base = np.full(len(site.level_ids), np.nan)
        self.gap_since: float | None = None
        # per zone: since when its hottest inlet has climbed fast at a steady load, and its load then (climb_clock)
        self.climb_since_s = np.full(self.zones.size, np.inf)
        self.climb_from_w = np.full(self.zones.size, np.nan)
        self.first_ts_s = math.inf  # first window this detector saw
        self.pending: dict[str, float] = {}  # sustained conditions: key -> first seen (event time)
        self.open: dict[str, _Open] = {}
        self.last_ts_s: float | None = None
        # rack -> zone level, for grouping thermal slowdown by zone
        self.rack_zone = site.rack_zone

    def _feed_root(self, lv: int) -> int:
        while self.site.level_parent[lv] >= 0:
            lv = int(self.site.level_parent[lv])
        return lv

    # ---- conditions --------------------------------------------------------------------------------
    def _sustained(self, key: str, true: bool, now: float, need_s: float) -> bool:
        if not true:
            self.pending.pop(key, None)
            return False
        first = self.pending.setdefault(key, now)
        return now - first >= need_s

    def conditions(self, snap: Snapshot, inlet_slope_c_per_s: FloatArray,
                   time_to_limit_s: FloatArray) -> dict[str, _Cond]:
        """Every condition true in this window, keyed by `kind:level`, in a fixed order."""
        self.first_ts_s = min(self.first_ts_s, snap.ts_s)
        out: dict[str, _Cond] = {}
        out.update(self._power_loss(snap))
        out.update(self._breaker_overload(snap))
        out.update(self._cooling_failure(snap, inlet_slope_c_per_s, time_to_limit_s))
        out.update(self._thermal_slowdown(snap))
        out.update(self._telemetry_loss(snap))
        out.update(self._meter_gap(snap))
        return out

    def _power_loss(self, snap: Snapshot) -> dict[str, _Cond]:
        """Lost power (feed, UPS lineup, RPP/PDU): the top of each dark subtree only. The ride-through clock
        starts when the first meter beneath went dark, not when the quorum was reached."""
        st, ids, now, kinds = self.settings, self.ids, snap.ts_s, self.site.level_kind
        out: dict[str, _Cond] = {}
        spreading = snap.dark_share > 0
        self.dark_since = np.where(spreading, np.fmin(self.dark_since, now), np.nan)
        self.dark_since[spreading & np.isnan(self.dark_since)] = now
        for lv in range(len(ids)):
            k = int(kinds[lv])
            if k not in (KIND["utility"], KIND["ups"], KIND["rpp"], KIND["pdu"]):
                continue
            top = bool(snap.dark_top[lv])
            kind = _LOSS[0] if k == KIND["utility"] else _LOSS[1] if k == KIND["ups"] else _LOSS[2]
            key = f"{kind}:{ids[lv]}"
            if kind == _LOSS[2] and not self._sustained(key, top, now, st.power_loss_confirm_s):
                continue
            if not top:
                continue
            over = [ids[i] for i in self.breakers[(snap.load_w[self.breakers] > snap.limit_w[self.breakers])
                                                  & ~snap.dark[self.breakers]][:10].tolist()]
            since = float(self.dark_since[lv]) if math.isfinite(self.dark_since[lv]) else now
            # Below a dark feed, the UPS lineups that went dark with it (PDU meters cannot tell which failed).
            under = [ids[i] for i in np.flatnonzero(snap.dark & (kinds == KIND["ups"])).tolist()
                     if i != lv and self._feed_root(i) == lv]
            critical = kind != _LOSS[2]
            out[key] = _Cond(
                "critical" if critical else "warning", [ids[lv], *under, *over],
                since + st.ride_through_s if critical else None,
                f"{ids[lv]} lost: {snap.dark_share[lv]:.0%} of the metered load beneath reads dark; "
                f"{len(over)} surviving level(s) above their continuous limit"
                + ("; shed within the ride-through" if critical else ""),
                {"levels_over_limit": float(len(over)), "dark_since_s": since})
        return out

    def _breaker_overload(self, snap: Snapshot) -> dict[str, _Cond]:
        """Heat accumulates while a breaker is above its rating (critical, time to trip from the curve);
        above its continuous limit for a sustained time is a warning."""
        st, ids, now = self.settings, self.ids, snap.ts_s
        out: dict[str, _Cond] = {}
        b = self.breakers
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(snap.rated_w[b] > 0, snap.load_w[b] / snap.rated_w[b], 0.0)
        frac = np.where(np.isfinite(frac), frac, 0.0)
        dt = snap.window_s
        t_trip = trip_time_s(frac, self.elec)
        decay = math.exp(-dt / self.elec.breaker_cool_tau_s)
        self.heat[b] = np.where(np.isfinite(t_trip), self.heat[b] + dt / t_trip, self.heat[b] * decay)
        over_rated = frac > self.elec.breaker_pickup
        over_cont = snap.load_w[b] > snap.limit_w[b]
        for j in np.flatnonzero(over_rated | over_cont).tolist():
            lv = int(b[j])
            key = f"breaker_overload:{ids[lv]}"
            if over_rated[j]:
                remaining = max(0.0, 1.0 - float(self.heat[lv])) * float(t_trip[j])
                out[key] = _Cond("critical", [ids[lv]], now + remaining,
                                 f"{ids[lv]} at {frac[j]:.0%} of its rating: trips in about {remaining:.0f} s",
                                 {"load_frac": float(frac[j]), "time_to_trip_s": remaining,
                                  "load_w": float(snap.load_w[lv]), "rated_w": float(snap.rated_w[lv])})
        for j in range(b.size):
            lv = int(b[j])
            key = f"breaker_overload:{ids[lv]}"
            if key in out:
                self.pending.pop(key, None)
                continue
            if self._sustained(key, bool(over_cont[j]), now, st.overload_warn_sustain_s):
                out[key] = _Cond("warning", [ids[lv]], None,
                                 f"{ids[lv]} above its continuous limit ({frac[j]:.0%} of rating) for "
                                 f"{now - self.pending[key]:.0f} s",
                                 {"load_frac": float(frac[j]), "load_w": float(snap.load_w[lv]),
                                  "limit_w": float(snap.limit_w[lv])})
        return out

    def _cooling_failure(self, snap: Snapshot, inlet_slope_c_per_s: FloatArray,
                         time_to_limit_s: FloatArray) -> dict[str, _Cond]:
        """A zone's hottest inlet climbing fast (critical: the plant is not keeping up), or its heat load above
        its cooling capacity for a while with the inlet not climbing yet (warning: the load estimate is a
        model, so this is the early sign, not the page)."""
        st, ids, now = self.settings, self.ids, snap.ts_s
        out: dict[str, _Cond] = {}
        zs = self.zones
        slope_z = inlet_slope_c_per_s[zs]
        hot = (np.isfinite(slope_z) & (slope_z > st.inlet_rise_c_per_min / 60.0)
               & (now - self.first_ts_s >= st.thermal_warmup_s))
        self.climb_since_s, self.climb_from_w = climb_clock(now, hot, snap.load_w[zs], self.climb_since_s,
                                                            self.climb_from_w, st.cooling_load_step_frac)
        for i, z in enumerate(zs.tolist()):
            slope = float(slope_z[i])
            over_cap = bool(snap.limit_w[z] > 0 and snap.load_w[z] > snap.limit_w[z])
            key = f"cooling_failure:{ids[z]}"
            climbing = bool(now - self.climb_since_s[i] >= st.cooling_sustain_s)
            loaded = self._sustained(key + ":cap", over_cap, now, st.cooling_over_capacity_sustain_s)
            if climbing or loaded:
                ttl = float(time_to_limit_s[z])
                out[key] = _Cond(
                    "critical" if climbing else "warning", [ids[z]],
                    now + ttl if climbing and math.isfinite(ttl) else None,
                    f"{ids[z]}: hottest inlet {snap.inlet_c[z]:.1f} C rising {slope * 60:.1f} C/min"
                    + (f", heat {snap.load_w[z] / 1e3:.0f} kW over {snap.limit_w[z] / 1e3:.0f} kW capacity"
                       if over_cap else "")
                    + (f"; {st.inlet_limit_c:.0f} C in about {ttl:.0f} s" if math.isfinite(ttl) else ""),
                    {"inlet_c": float(snap.inlet_c[z]), "inlet_slope_c_per_min": slope * 60,
                     "time_to_limit_s": ttl if math.isfinite(ttl) else -1.0,
                     "heat_over_capacity": float(snap.load_w[z] / snap.limit_w[z]) if snap.limit_w[z] > 0 else -1.0})
        return out

    def _thermal_slowdown(self, snap: Snapshot) -> dict[str, _Cond]:
        """GPU thermal slowdown, grouped by zone (one page for a hot zone, not one per rack)."""
        st, ids = self.settings, self.ids
        out: dict[str, _Cond] = {}
        rl = self.site.rack_level
        hot_rack = (snap.gpus_throttled[rl] > 0) | (np.nan_to_num(snap.gpu_temp_max_c[rl], nan=0.0)
                                                    >= st.gpu_slowdown_c)
        hot_rack &= snap.rack_age_s <= st.telemetry_loss_s
        for z in np.unique(self.rack_zone[hot_rack]).tolist():
            racks = np.flatnonzero(hot_rack & (self.rack_zone == z))
            n_gpus = int(snap.gpus_throttled[rl[racks]].sum())
            zid = ids[z] if z >= 0 else "no-zone"
            # A rack is hot by its GPUs' slowdown flags or by its hottest GPU's temperature: say which, never
            # "0 GPU(s) in thermal slowdown" for racks that are only at the temperature.
            n_hot = int(np.count_nonzero(np.nan_to_num(snap.gpu_temp_max_c[rl[racks]], nan=0.0) >= st.gpu_slowdown_c))
            what = [f"{n_gpus} GPU(s) reporting thermal slowdown"] if n_gpus else []
            if n_hot:
                what.append(f"{n_hot} rack(s) with a GPU at or above {st.gpu_slowdown_c:.0f} C")
            out[f"thermal_slowdown:{zid}"] = _Cond(
                "warning", [zid, *[ids[rl[r]] for r in racks[:20].tolist()]], None,
                f"{zid}: {' and '.join(what)} ({racks.size} rack(s) hot)",
                {"racks": float(racks.size), "gpus_throttled": float(n_gpus)})
        return out

    def _telemetry_loss(self, snap: Snapshot) -> dict[str, _Cond]:
        """A rack with no reading for too long, or with most of its GPUs silent."""
        st, ids = self.settings, self.ids
        out: dict[str, _Cond] = {}
        rl = self.site.rack_level
        silent = snap.gpus_reporting[rl] < st.gpus_silent_frac * snap.gpus_expected[rl]
        lost = (snap.rack_age_s > st.telemetry_loss_s) | silent
        for r in np.flatnonzero(lost).tolist():
            age = float(snap.rack_age_s[r])
            lid = ids[rl[r]]
            what = (f"no reading for {age:.0f} s" if math.isfinite(age) else "never reported")
            if not (snap.rack_age_s[r] > st.telemetry_loss_s):
                what = f"{snap.gpus_reporting[rl[r]]} of {snap.gpus_expected[rl[r]]} GPUs reporting"
            out[f"telemetry_loss:{lid}"] = _Cond(
                "warning", [lid], None,
                f"{lid}: {what}; counted conservatively (last value plus a margin from its recent peak, or its "
                "PDU meters)",
                {"age_s": age if math.isfinite(age) else -1.0})
        return out

    def _meter_gap(self, snap: Snapshot) -> dict[str, _Cond]:
        """A PDU meter and the sum of its servers drifting apart from their usual gap for a sustained time."""
        st, ids, now = self.settings, self.ids, snap.ts_s
        out: dict[str, _Cond] = {}
        p = self.pdus
        a = min(1.0, snap.window_s / st.meter_gap_tau_s)
        g = snap.gap_w[p]
        prev = self.gap_ewma[p]
        self.gap_ewma[p] = np.where(np.isnan(g), prev, np.where(np.isnan(prev), g, prev + a * (g - prev)))
        beta = min(1.0, snap.window_s / st.meter_gap_baseline_tau_s)
        base = self.gap_base[p]
        fast = self.gap_ewma[p]
        self.gap_base[p] = np.where(np.isnan(fast), base, np.where(np.isnan(base), fast, base + beta * (fast - base)))
        if self.gap_since is None:
            self.gap_since = now
        gap = fast - self.gap_base[p]
        bad = np.isfinite(gap) & (np.abs(gap) > np.maximum(st.meter_gap_frac * np.abs(snap.load_w[p]),
                                                           st.meter_gap_min_w))
        bad &= now - self.gap_since >= st.meter_gap_warmup_s  # the usual level must be learnt first
        for j in range(p.size):
            lv = int(p[j])
            key = f"meter_gap:{ids[lv]}"
            if self._sustained(key, bool(bad[j]), now, st.meter_gap_sustain_s):
                out[key] = _Cond("warning", [ids[lv]], None,
                                 f"{ids[lv]}: meter and servers drifted apart by {gap[j] / 1e3:+.1f} kW for "
                                 f"{now - self.pending[key]:.0f} s (bad meter or unmonitored load)",
                                 {"gap_w": float(gap[j])})
        return out

    # ---- lifecycle ---------------------------------------------------------------------------------
    def step(self, snap: Snapshot, inlet_slope_c_per_s: FloatArray, time_to_limit_s: FloatArray) -> list[Event]:
        """Events to publish for this window: newly opened, materially changed, and resolved."""
        now = snap.ts_s
        self.last_ts_s = now
        conds = self.conditions(snap, inlet_slope_c_per_s, time_to_limit_s)
        out: list[Event] = []
        for key, c in conds.items():
            kind, level = key.split(":", 1)
            o = self.open.get(key)
            if o is not None and kind in _LOSS:  # the ride-through clock does not restart
                c.deadline_s = o.deadline_s
            if o is None:
                o = self.open[key] = _Open(f"{kind}:{level}:{now:.0f}", kind, level, now, c.severity,
                                           c.deadline_s, now, c.levels, c.summary, c.details)
                out.append(self._event(o, now, "open"))
                continue
            o.last_true_s = now
            changed = c.severity != o.severity or _moved(o.deadline_s, c.deadline_s, now)
            if not changed and o.deadline_s is not None:
                c.deadline_s = o.deadline_s
            o.severity, o.levels, o.summary, o.details = c.severity, c.levels, c.summary, c.details
            if changed:
                o.deadline_s = c.deadline_s
                out.append(self._event(o, now, "open"))
        for key in [k for k in self.open if k not in conds]:
            o = self.open[key]
            need = {"thermal_slowdown": self.settings.thermal_clear_s,
                    "cooling_failure": self.settings.cooling_clear_s}.get(o.kind, self.settings.clear_s)
            if now - o.last_true_s >= need:
                del self.open[key]
                out.append(self._event(o, now, "resolved"))
        return out

    def announce_signal(self, lineup: str, now: float, unconfirmed: bool) -> list[Event]:
        """The open loss events naming `lineup`, sent again with their facility-signal state (an update of the
        same id: the page it opened is not repeated). streams.feed_signals marks a confirmation by them."""
        out = []
        for o in self.open.values():
            if o.kind in _LOSS and lineup in o.levels:
                e = self._event(o, now, "open")
                e.details = {**(e.details or {}), "signal_unconfirmed": float(unconfirmed)}
                out.append(e)
        return out

    def _event(self, o: _Open, now: float, state: str) -> Event:
        summary = o.summary if state == "open" else f"resolved: {o.summary}"
        return Event(id=o.id, site=self.site.name, kind=o.kind, severity=o.severity, state=state, levels=o.levels,
                     ts_s=now, deadline_s=o.deadline_s, summary=summary, opened_s=o.opened_s,
                     details={k: float(v) for k, v in o.details.items()})

    # ---- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"heat": self.heat.tobytes(), "dark_since": self.dark_since.tobytes(),
                "climb_since_s": self.climb_since_s.tobytes(), "climb_from_w": self.climb_from_w.tobytes(),
                "gap_ewma": self.gap_ewma.tobytes(), "gap_base": self.gap_base.tobytes(),
                "gap_since": self.gap_since, "first_ts_s": self.first_ts_s, "pending": dict(self.pending),
                "open": {k: asdict(o) for k, o in self.open.items()}, "last_ts_s": self.last_ts_s}

    def load_state(self, state: dict[str, Any]) -> None:
        heat = np.frombuffer(state["heat"], dtype=np.float64)
        if heat.size == self.heat.size:
            self.heat = heat.copy()
            self.dark_since = np.frombuffer(state["dark_since"], dtype=np.float64).copy()
            self.gap_ewma = np.frombuffer(state["gap_ewma"], dtype=np.float64).copy()
            self.gap_base = np.frombuffer(state["gap_base"], dtype=np.float64).copy()
        since = np.frombuffer(state.get("climb_since_s", b""), dtype=np.float64)
        if since.size == self.climb_since_s.size:  # a checkpoint from before the steady-load rule has none
            self.climb_since_s = since.copy()
            self.climb_from_w = np.frombuffer(state["climb_from_w"], dtype=np.float64).copy()
        self.gap_since = state.get("gap_since")
        self.first_ts_s = float(state.get("first_ts_s", math.inf))
        self.pending = {str(k): float(v) for k, v in state["pending"].items()}
        self.open = {str(k): _Open(**v) for k, v in state["open"].items()}
        self.last_ts_s = state["last_ts_s"]


_LOSS = ("feed_loss", "ups_loss", "power_loss")
LOSS_KINDS = _LOSS


def _moved(old: float | None, new: float | None, now: float) -> bool:
    """A deadline worth re-announcing: one appeared, or it came earlier by more than 20% of the time left.
    A deadline that recedes keeps its earlier value (conservative, and no re-page every few seconds)."""
    if new is None:
        return False
    if old is None:
        return True
    return old - new > max(2.0, 0.2 * max(old - now, 0.0))
