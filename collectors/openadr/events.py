"""An OpenADR 2.0b event, as openleadr parses it (`oadrDistributeEvent`), read as one demand-response request
(powerplane.schemas.GridRequest) or refused with its reason. No I/O: the gateway (gateway.py) signs and
publishes what this returns and answers the VTN optIn or optOut.

What is taken (README.md beside this file says the same for operators):
- `SIMPLE` levels 1-3: reduce by the percentage the config gives each level; level 0 is normal operation.
- `LOAD_DISPATCH` / `setpoint` and `LOAD_CONTROL` / `x-loadControlSetpoint`: reduce to that load, in the
  signal's unit (its itemBase: W, kW or MW) or, where it gives none, the config's `dispatch_unit`.
- `LOAD_CONTROL` / `x-loadControlPercentOffset`: reduce by that percentage (a negative offset; a rise is refused).
- Anything else (prices, deltas in MW: the request schema takes a target or a share) is refused by name.
Intervals: the strictest interval holds for the whole active period (a site that meets it meets every interval).
Timing: the target is due at the active period's start; the ramp-up period (x-eiRampUp) or, without one, the
config's `within_s` before it is when the shed starts; the hold is the active period's duration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# The scale prefixes OpenADR's itemBase carries (SiScaleCodeType), as W multipliers, for power units.
_SCALE = {"none": 1.0, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_UNIT_MW = {"W": 1e-6, "kW": 1e-3, "MW": 1.0}


@dataclass(frozen=True)
class Target:
    """What one event asks: exactly one of `reduce_by_pct` and `reduce_to_mw`, due `within_s` after `start_s`, held
    `hold_s`."""

    event_id: str
    modification: int
    start_s: float  # when the shed starts
    within_s: float  # the target is due this long after start_s
    hold_s: float
    reduce_by_pct: float | None = None
    reduce_to_mw: float | None = None
    feed: str | None = None

    def summary(self) -> str:
        what = f"by {self.reduce_by_pct:g} %" if self.reduce_by_pct is not None else f"to {self.reduce_to_mw:g} MW"
        return f"reduce {self.feed or 'the site'} {what} within {self.within_s:g} s, hold {self.hold_s:g} s"


@dataclass(frozen=True)
class Rules:
    """The config's part of the reading (config.py): SIMPLE levels as percentages, the unit of a setpoint that
    names none, the default lead before the active period, and which OpenADR resource ids are utility feeds."""

    simple_pct: dict[int, float]
    dispatch_unit: str = "MW"
    within_s: float = 30.0
    feeds: dict[str, str] | None = None


class Refused(ValueError):
    """An event the gateway does not take: the reason, one line naming the event and the field."""


def _secs(v: Any) -> float:
    return v.total_seconds() if isinstance(v, timedelta) else float(v or 0.0)


def _when(v: Any) -> float:
    if not isinstance(v, datetime) or v.tzinfo is None:
        raise Refused(f"dtstart {v!r} is not a time with a zone")
    return v.timestamp()


def _unit_mw(signal: dict[str, Any], rules: Rules, where: str) -> float:
    """MW per unit of the signal's payload: its itemBase where it has one (a power unit), else the config's."""
    m = signal.get("measurement")
    if not m:
        return _UNIT_MW[rules.dispatch_unit]
    unit, scale = str(m.get("unit", "")), str(m.get("scale") or "none")
    if unit != "W" or scale not in _SCALE:
        raise Refused(f"{where}: itemBase {unit!r} scale {scale!r} is not a power in W, kW, MW or GW")
    return _SCALE[scale] * 1e-6


def _reading(signal: dict[str, Any], rules: Rules, where: str) -> tuple[str, float] | None:
    """('pct', %) or ('mw', MW) of the strictest interval; None for a SIMPLE event at level 0 throughout."""
    name, kind = str(signal.get("signal_name", "")), str(signal.get("signal_type", ""))
    payloads = [float(i.get("signal_payload", math.nan)) for i in signal.get("intervals") or []]
    if not payloads or not all(math.isfinite(p) for p in payloads):
        raise Refused(f"{where}: intervals with no finite payload {payloads}")
    if name.upper() == "SIMPLE" and kind == "level":
        levels = [int(p) for p in payloads]
        if any(lv != p or lv < 0 for lv, p in zip(levels, payloads, strict=True)):
            raise Refused(f"{where}: SIMPLE levels must be whole numbers 0-3, got {payloads}")
        unknown = sorted({lv for lv in levels if lv and lv not in rules.simple_pct})
        if unknown:
            raise Refused(f"{where}: SIMPLE level(s) {unknown} have no percentage in the config (simple_levels)")
        pct = max((rules.simple_pct[lv] for lv in levels if lv), default=0.0)
        return ("pct", pct) if pct > 0 else None
    if (name, kind) in (("LOAD_DISPATCH", "setpoint"), ("LOAD_CONTROL", "x-loadControlSetpoint")):
        return "mw", min(payloads) * _unit_mw(signal, rules, where)
    if (name, kind) == ("LOAD_CONTROL", "x-loadControlPercentOffset"):
        if max(payloads) >= 0:
            raise Refused(f"{where}: a percent offset of {max(payloads):g} asks for no reduction (a rise, or none)")
        return "pct", -min(payloads)
    raise Refused(f"{where}: signal {name} / {kind} is not a load reduction the gateway takes (SIMPLE level, "
                  f"LOAD_DISPATCH setpoint, LOAD_CONTROL x-loadControlSetpoint or x-loadControlPercentOffset)")


def _feed(event: dict[str, Any], rules: Rules, where: str) -> str | None:
    """The utility feed the event's targets name (by resource id), or None for the whole site."""
    ids = {str(t.get("resource_id")) for t in event.get("targets") or [] if t.get("resource_id")}
    feeds = {(rules.feeds or {}).get(r) for r in ids}
    if not ids:
        return None
    if None in feeds:
        raise Refused(f"{where}: target resource(s) {sorted(r for r in ids if r not in (rules.feeds or {}))} "
                      f"are not feeds of this site (config: feeds)")
    if len(feeds) > 1:
        raise Refused(f"{where}: targets {sorted(ids)} name {len(feeds)} feeds; one request is for one feed")
    return feeds.pop()


def read_event(event: dict[str, Any], rules: Rules) -> Target | None:
    """The request an event asks for; None when it asks for nothing (SIMPLE level 0). Raises Refused."""
    desc = event.get("event_descriptor") or {}
    event_id, mod = str(desc.get("event_id") or ""), int(desc.get("modification_number") or 0)
    where = f"event {event_id or '?'} (modification {mod})"
    if not event_id:
        raise Refused(f"{where}: no event_id")
    signals = event.get("event_signals") or []
    signals = signals.get("event_signals", []) if isinstance(signals, dict) else signals
    read = [r for r in (_reading(s, rules, f"{where} signal {s.get('signal_id', i)}") for i, s in enumerate(signals))
            if r is not None]
    if not read and signals:
        return None
    if len({k for k, _ in read}) != 1:
        raise Refused(f"{where}: {len(signals)} signal(s); one kind of reduction (a share or a target) is taken")
    period = event.get("active_period") or {}
    due_s, hold_s = _when(period.get("dtstart")), _secs(period.get("duration"))
    if hold_s <= 0:
        raise Refused(f"{where}: an active period of {hold_s:g} s (an open-ended event has no end to hold to)")
    # x-eiRampUp: `ramp_up` as openleadr parses a message, `ramp_up_period` on its ActivePeriod object.
    lead_s = _secs(period.get("ramp_up") or period.get("ramp_up_period")) or rules.within_s
    kind = read[0][0]
    value = max(v for _, v in read) if kind == "pct" else min(v for _, v in read)
    return Target(event_id, mod, due_s - lead_s, lead_s, hold_s, feed=_feed(event, rules, where),
                  reduce_by_pct=value if kind == "pct" else None, reduce_to_mw=value if kind == "mw" else None)


def schedule(t: Target, now_s: float, within_s: float) -> tuple[float, float, float]:
    """(start_s, within_s, hold_s) of the request for `t` sent at now_s. A shed due to start already is sent
    starting now (the controller takes no request that started more than 10 s ago): due by the event's time if
    that is still ahead, else within `within_s`, and held to the event's end. Refused when under 1 s is left."""
    if t.start_s >= now_s:
        return t.start_s, t.within_s, t.hold_s
    due_s, end_s = t.start_s + t.within_s, t.start_s + t.within_s + t.hold_s
    lead_s = due_s - now_s if due_s - now_s >= 1.0 else within_s
    hold_s = end_s - now_s - lead_s
    if hold_s < 1.0:
        raise Refused(f"event {t.event_id}: ends in {end_s - now_s:.0f} s; too late to shed to it "
                      f"(the target would be due {lead_s:g} s from now)")
    return now_s, lead_s, hold_s
