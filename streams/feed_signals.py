"""Site stage, facility input: what the UPS units and environment sensors on `pp.facility` say, fused with the
PDU meters. Pure, no I/O; the streams worker (streams.app) and the in-process engine (ops.engine) feed it
through `SiteStage.add_facility`, so both paths take the same decisions.

Per UPS lineup (docs/safety.md, "Facility signals"):
- a UPS trap or poll saying on battery puts the lineup in "lost (unconfirmed)" at once: the tree counts its
  PDUs as dark (streams.tree `signal_dark`), so limits, headroom, the site mode and the feed_loss / ups_loss
  emergency follow in the very next window, `feed_signal: "unconfirmed"` on the levels dark by the signal only;
- the PDU meters and the servers' GPU sums beneath it (the tree's own dark detection) confirm it ("confirmed":
  from then on the meters carry the state) or, when they still read the lineup live `confirm_within_s` after the
  signal (2 x the meters' refresh + a margin), refute it: the lineup is rolled back to normal, the refutation
  is counted and ONE `faulty_signal` event (warning) opens. While it is open the lineup's on-battery readings
  are not acted on (each poll would page again); it resolves when the UPS says it is off battery, or after
  `faulty_hold_s`;
- a reading saying off battery (a poll, or a return-from-battery / utility-restored trap) ends the signal. If
  the meters never confirmed it, the UPS said "on battery" and then "online" with no loss the site could see: a
  false trap, or a transfer too brief for the meters' refresh. The poll cannot tell which, so it is reported
  once (a `faulty_signal` warning with `ended_by_ups` 1, resolved `unexplained_hold_s` later, long enough for
  Alertmanager to notify) and nothing is ignored afterwards: the UPS agrees with the meters again.

Environment sensors: a rack whose sensor inlet and the servers' own inlet differ by more than
`sensor_disagree_c` for `sensor_sustain_s` is flagged once (a `sensor_disagreement` event, info) until they
agree again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from powerplane.facility_checks import (
    PDU_METER_INTERVAL_S,
    SIGNAL_MARGIN_S,
    FacilityChecker,
    FacilitySettings,
    FacilityVerdict,
)
from powerplane.schemas import Event, FacilityReading
from powerplane.site import Site
from streams.emergencies import LOSS_KINDS, EmergencyDetector
from streams.tree import BoolArray, Snapshot


@dataclass(frozen=True)
class SignalSettings:
    meter_interval_s: float = PDU_METER_INTERVAL_S  # PDU meters' SNMP refresh (BRIEF.md: typically 10 s)
    margin_s: float = SIGNAL_MARGIN_S  # the meters' phase spread, the window's lateness and a late trap
    faulty_hold_s: float = 600.0  # a refuted lineup's on-battery readings are ignored at most this long
    unexplained_hold_s: float = 300.0  # an unconfirmed signal the UPS itself ended: its warning stays open this long
    sensor_disagree_c: float = 3.0  # env sensor vs the servers' inlet: sensors are +-0.5-1 C, inlets a few C apart
    sensor_sustain_s: float = 60.0
    sensor_max_age_s: float = 30.0  # an env reading older than this (event time) is not compared

    @property
    def confirm_within_s(self) -> float:
        """The bound: every meter beneath the lineup has refreshed twice by then (25 s by default)."""
        return 2.0 * self.meter_interval_s + self.margin_s


@dataclass
class SignalCounts:
    started: int = 0  # lineups put in lost (unconfirmed) by a signal
    confirmed: int = 0
    refuted: int = 0  # rolled back: the meters read the lineup live
    cleared: int = 0  # ended by the UPS saying it is off battery
    unexplained: int = 0  # of those, never confirmed by the meters (a false trap or a transfer they could not see)
    ignored: int = 0  # on-battery readings of a lineup whose signal was refuted (faulty_signal open)
    refused: int = 0  # readings refused (dead-lettered): old, unknown lineup, implausible
    sensors_flagged: int = 0


@dataclass
class _Signal:
    since_s: float  # event time of the first on-battery evidence
    state: str  # unconfirmed | confirmed
    unit: str
    trap: str  # the trap's MIB name, or "poll"
    # Whether a window showed the lineup dark by this signal alone (its loss event said "unconfirmed"): only
    # then does the meters' confirmation send that event again. A signal the meters agreed with from its first
    # window (a twin's or a real UPS's trap landing in the window of the transfer) has nothing to correct.
    shown: bool = False


@dataclass
class _Faulty:
    id: str
    opened_s: float
    levels: list[str]
    summary: str


class FeedSignals:
    def __init__(self, site: Site, settings: SignalSettings | None = None,
                 facility: FacilitySettings | None = None) -> None:
        self.site = site
        self.s = settings or SignalSettings()
        self.checker = FacilityChecker(site, facility)
        self.counts = SignalCounts()
        self.signals: dict[int, _Signal] = {}  # lineup level -> signal
        self.faulty: dict[int, _Faulty] = {}  # lineup level -> its open faulty_signal event
        self.unexplained: dict[int, _Faulty] = {}  # lineup level -> its open warning for a signal the UPS ended
        self.env: dict[int, tuple[float, float]] = {}  # rack -> (sensor inlet, event time)
        self.disagree_since: dict[int, float] = {}
        self.flagged: dict[int, _Faulty] = {}  # rack -> its open sensor_disagreement event
        self.pending: list[Event] = []  # decided between windows (a faulty signal ending): out at the next one
        self.rack_level = site.rack_level

    # ---- input -------------------------------------------------------------------------------------
    def take(self, r: FacilityReading, wall_s: float | None) -> FacilityVerdict:
        """Check one reading (the facility checker, then the signal rules); a refused verdict's reason is the
        one line the Kafka shell dead-letters it with. `wall_s`: the receiver's clock (None: its event time)."""
        now = r.ts_s if wall_s is None else wall_s
        v = self.checker.check(r, now)
        if v.reading is None:
            self.counts.refused += int(v.refused)
            return v
        reason = self._ups(r, now) if r.kind == "ups" else ""
        if r.kind == "env":
            self._env(r)
        if reason:
            self.counts.refused += 1
            return FacilityVerdict(None, reason)
        return v

    def _ups(self, r: FacilityReading, now_s: float) -> str:
        lv = self.site.level_index[r.lineup or ""]  # the checker refused a lineup not in the site
        if r.on_battery is None:
            return ""
        if not r.on_battery:
            sig = self.signals.get(lv)
            if sig is not None and r.ts_s >= sig.since_s:
                del self.signals[lv]
                self.counts.cleared += 1
                if sig.state == "unconfirmed":
                    self._unexplained(lv, sig, r)
            f = self.faulty.get(lv)
            if f is not None and r.ts_s >= f.opened_s:
                del self.faulty[lv]
                self.pending.append(self._event("faulty_signal", f, r.ts_s, "resolved"))
            return ""
        age = now_s - r.ts_s
        if age > self.s.confirm_within_s:
            return (f"facility.reading {r.unit}: on battery at ts_s {r.ts_s:.3f}, {age:.1f} s old: past the "
                    f"{self.s.confirm_within_s:g} s confirmation bound, not acted on")
        if lv in self.faulty:
            self.counts.ignored += 1
        elif lv not in self.signals:
            self.signals[lv] = _Signal(r.ts_s, "unconfirmed", r.unit, r.trap or "poll")
            self.counts.started += 1
        return ""

    def _env(self, r: FacilityReading) -> None:
        for rack, inlet in zip(r.racks or [], r.inlet_c or [], strict=False):
            if math.isfinite(inlet):
                self.env[self.site.rack_index(rack)] = (float(inlet), r.ts_s)

    # ---- the tree's hook and each closed window ------------------------------------------------------
    def signal_dark(self, window_end_s: float) -> BoolArray | None:
        """Lineups lost by an unconfirmed signal, for a window ending at `window_end_s` (the window holding
        the signal's time and every later one)."""
        on = [lv for lv, sig in self.signals.items() if sig.state == "unconfirmed" and sig.since_s < window_end_s]
        if not on:
            return None
        mask = np.zeros(len(self.site.level_ids), dtype=bool)
        mask[on] = True
        return mask

    def unconfirmed(self, snap: Snapshot) -> BoolArray | None:
        """Levels dark in this window by a signal only (None: none); marks those signals as shown."""
        if snap.meter_dark is None:
            return None
        out = snap.dark & ~snap.meter_dark
        for lv, sig in self.signals.items():
            if sig.state == "unconfirmed" and out[lv]:
                sig.shown = True
        return out if out.any() else None

    def on_window(self, snap: Snapshot) -> tuple[list[Event], list[str]]:
        """Events of this window (faulty signals, sensor flags) and the lineups the meters confirmed in it."""
        out, self.pending = self.pending, []
        confirmed: list[str] = []
        meter = snap.dark if snap.meter_dark is None else snap.meter_dark
        ids = self.site.level_ids
        for lv, sig in list(self.signals.items()):
            if snap.ts_s <= sig.since_s:
                continue
            if meter[lv]:
                if sig.state == "unconfirmed":
                    sig.state = "confirmed"
                    self.counts.confirmed += 1
                    if sig.shown:
                        confirmed.append(ids[lv])
            elif sig.state == "confirmed":  # the meters read it live again: the signal has done its job
                del self.signals[lv]
            elif snap.ts_s >= sig.since_s + self.s.confirm_within_s:
                del self.signals[lv]
                self.counts.refuted += 1
                out.append(self._refute(lv, sig, snap.ts_s))
        for held, hold_s in ((self.faulty, self.s.faulty_hold_s), (self.unexplained, self.s.unexplained_hold_s)):
            for lv, f in list(held.items()):
                if snap.ts_s - f.opened_s >= hold_s:
                    del held[lv]
                    out.append(self._event("faulty_signal", f, snap.ts_s, "resolved"))
        out += self._sensors(snap)
        return out, confirmed

    def _refute(self, lv: int, sig: _Signal, now_s: float) -> Event:
        lineup = self.site.level_ids[lv]
        f = self.faulty[lv] = _Faulty(
            f"faulty_signal:{lineup}:{now_s:.0f}", now_s, [lineup],
            f"{sig.unit}: '{sig.trap}' said lineup {lineup} is on battery, but its PDU meters still read it live "
            f"{now_s - sig.since_s:.0f} s later: rolled back to normal; its on-battery signal is not acted on "
            f"until it reads off battery")
        return self._event("faulty_signal", f, now_s, "open", {"signal_s": sig.since_s,
                                                              "bound_s": self.s.confirm_within_s,
                                                              "refuted": float(self.counts.refuted)})

    def _unexplained(self, lv: int, sig: _Signal, r: FacilityReading) -> None:
        """The UPS ended a signal the meters never confirmed: one warning per lineup while it is open."""
        self.counts.unexplained += 1
        if lv in self.unexplained:
            return
        lineup = self.site.level_ids[lv]
        f = self.unexplained[lv] = _Faulty(
            f"faulty_signal:{lineup}:{r.ts_s:.0f}", r.ts_s, [lineup],
            f"{sig.unit}: '{sig.trap}' said lineup {lineup} is on battery, then {r.trap or 'its poll'} said off "
            f"battery {r.ts_s - sig.since_s:.0f} s later, and the PDU meters never showed a loss: a false trap or a "
            f"transfer too brief for the meters; check the UPS's event log")
        self.pending.append(self._event("faulty_signal", f, r.ts_s, "open", {
            "signal_s": sig.since_s, "ended_by_ups": 1.0, "unexplained": float(self.counts.unexplained)}))

    def _sensors(self, snap: Snapshot) -> list[Event]:
        st, out = self.s, []
        for rack, (inlet, ts) in self.env.items():
            server = float(snap.inlet_c[self.rack_level[rack]])
            if snap.ts_s - ts > st.sensor_max_age_s or not math.isfinite(server):
                self.disagree_since.pop(rack, None)  # nothing to compare: neither flagged nor cleared
                continue
            rid = self.site.rack_ids[rack]
            if abs(inlet - server) <= st.sensor_disagree_c:
                self.disagree_since.pop(rack, None)
                f = self.flagged.pop(rack, None)
                if f is not None:
                    out.append(self._event("sensor_disagreement", f, snap.ts_s, "resolved", severity="info"))
                continue
            first = self.disagree_since.setdefault(rack, snap.ts_s)
            if rack in self.flagged or snap.ts_s - first < st.sensor_sustain_s:
                continue
            f = self.flagged[rack] = _Faulty(
                f"sensor_disagreement:{rid}:{snap.ts_s:.0f}", snap.ts_s, [rid],
                f"{rid}: environment sensor reads {inlet:.1f} C, the servers' inlets {server:.1f} C, more than "
                f"{st.sensor_disagree_c:g} C apart for {snap.ts_s - first:.0f} s (a sensor misplaced or failing)")
            self.counts.sensors_flagged += 1
            out.append(self._event("sensor_disagreement", f, snap.ts_s, "open",
                                   {"sensor_c": inlet, "servers_c": server}, severity="info"))
        return out

    def _event(self, kind: str, f: _Faulty, now_s: float, state: str, details: dict[str, float] | None = None,
               severity: str = "warning") -> Event:
        summary = f.summary if state == "open" else f"resolved: {f.summary}"
        return Event(id=f.id, site=self.site.name, kind=kind, severity=severity, state=state, levels=f.levels,
                     ts_s=now_s, deadline_s=None, summary=summary, opened_s=f.opened_s, details=details)

    # ---- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"signals": {str(k): asdict(v) for k, v in self.signals.items()},
                "faulty": {str(k): asdict(v) for k, v in self.faulty.items()},
                "unexplained": {str(k): asdict(v) for k, v in self.unexplained.items()},
                "flagged": {str(k): asdict(v) for k, v in self.flagged.items()},
                "disagree_since": {str(k): v for k, v in self.disagree_since.items()},
                "counts": asdict(self.counts)}

    def load_state(self, s: dict[str, Any]) -> None:
        self.signals = {int(k): _Signal(**v) for k, v in s.get("signals", {}).items()}
        self.faulty = {int(k): _Faulty(**v) for k, v in s.get("faulty", {}).items()}
        self.unexplained = {int(k): _Faulty(**v) for k, v in s.get("unexplained", {}).items()}
        self.flagged = {int(k): _Faulty(**v) for k, v in s.get("flagged", {}).items()}
        self.disagree_since = {int(k): float(v) for k, v in s.get("disagree_since", {}).items()}
        self.counts = SignalCounts(**s.get("counts", {}))


def mark_losses(detector: EmergencyDetector, events: list[Event], unconfirmed: BoolArray | None,
                confirmed: list[str], site: Site, now_s: float) -> list[Event]:
    """The detector's events of one window with the facility signal's state: a loss event whose primary level is
    dark by a signal only says so (`signal_unconfirmed` 1, and in its summary); a lineup the meters confirmed
    sends its open loss events again with 0 (an update, not a second page)."""
    for e in events:
        if (e.kind in LOSS_KINDS and e.state == "open" and unconfirmed is not None
                and unconfirmed[site.level_index[e.levels[0]]]):
            e.details = {**(e.details or {}), "signal_unconfirmed": 1.0}
            e.summary += " (a UPS says so; the PDU meters have not shown it yet)"
    sent = {e.id for e in events}
    for lineup in confirmed:
        events += [e for e in detector.announce_signal(lineup, now_s, False) if e.id not in sent]
        sent |= {e.id for e in events}
    return events
