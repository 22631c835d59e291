"""Is a decoded facility reading (a UPS, a rack transfer switch, an environment sensor; `FacilityReading`)
physically and temporally plausible for this site? Pure code, the facility counterpart of
powerplane/plausibility.py, for whatever stage takes `pp.facility` as truth.

- refused (one line naming the field and the value; the record goes to the dead-letter topic): another site;
  a UPS whose lineup is not a UPS lineup of the site model, or whose feed is not that lineup's feed; a transfer
  switch of an unknown rack; an environment reading naming an unknown rack; a time more than `max_ahead_s`
  ahead of the receiver's clock or older than `max_age_s`; a reading outside what the hardware can report:
  input voltage outside [0, 600] V, a frequency neither 0 (a dead input) nor within [40, 70] Hz, output
  load outside [0, 150] %, output power outside [0, 3 x the lineup's rating], a negative battery time, an
  inlet outside the sensor range. NaN (no reading) is never refused.
- dropped and counted: a duplicate `seq` of its source (same unit and source, a seq not after the last and
  not newer in event time), as for telemetry frames.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from powerplane.schemas import FacilityReading
from powerplane.site import FEEDS, KIND, Site

# The bound within which the PDU meters confirm or refute a UPS's on-battery signal (docs/safety.md, "Facility
# signals"): twice their SNMP refresh (BRIEF.md: typically 10 s) plus a margin for their phase spread and a late
# trap. The streams stage rolls a signal back past it; the controller acts on a signal only within it.
PDU_METER_INTERVAL_S = 10.0
SIGNAL_MARGIN_S = 5.0
SIGNAL_BOUND_S = 2.0 * PDU_METER_INTERVAL_S + SIGNAL_MARGIN_S


@dataclass(frozen=True)
class FacilitySettings:
    max_ahead_s: float = 5.0  # clock skew allowed between a collector and the receiver
    max_age_s: float = 86_400.0
    input_voltage_v: tuple[float, float] = (0.0, 600.0)  # 480 V three-phase lines + margin; 0 = dead input
    # A live AC line is 50 or 60 Hz; 40-70 Hz covers generator start-up and the IEC ranges UPSes accept. 0 is
    # how many UPSes report a dead input.
    frequency_hz: tuple[float, float] = (40.0, 70.0)
    output_load_pct: tuple[float, float] = (0.0, 150.0)  # a UPS carries 150 % for seconds before it transfers
    output_power_factor: float = 3.0  # output power above 3 x the lineup's rating is no load it could carry
    inlet_c: tuple[float, float] = (-20.0, 80.0)  # the same sensor range as telemetry frames' inlets
    max_sources: int = 100_000  # bound on the per-source table


@dataclass(frozen=True)
class FacilityVerdict:
    reading: FacilityReading | None
    reason: str = ""
    dropped: bool = False  # a duplicate: counted, not dead-lettered

    @property
    def refused(self) -> bool:
        return self.reading is None and not self.dropped


@dataclass
class FacilityCounts:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # cause -> readings
    duplicates: int = 0


def _first_out(values: Sequence[float], lo: float, hi: float) -> int:
    """Index of the first finite value outside [lo, hi] (NaN = no reading, allowed), or -1."""
    for i, v in enumerate(values):
        if math.isfinite(v) and not lo <= v <= hi:
            return i
    return -1


class FacilityChecker:
    """Per-site bounds and per-source sequence state for `pp.facility` readings."""

    def __init__(self, site: Site, settings: FacilitySettings | None = None) -> None:
        self.site = site
        self.s = settings or FacilitySettings()
        self.counts = FacilityCounts()
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}  # (unit, source) -> (seq, ts_s)

    def check(self, r: FacilityReading, now_s: float) -> FacilityVerdict:
        """The verdict on one decoded reading; `now_s` is the receiver's clock."""
        where = f"facility.reading {r.unit}"
        reason, cause = self._site(r, where)
        if not reason:
            reason, cause = self._ranges(r, where)
        if not reason:
            reason, cause = self._time(r, where, now_s)
        if reason:
            self.counts.refused[cause] += 1
            return FacilityVerdict(None, reason)
        key = (r.unit, r.source)
        last = self._seen.get(key)
        if last is not None and r.seq <= last[0] and r.ts_s <= last[1]:
            self.counts.duplicates += 1
            return FacilityVerdict(None, f"{where}: seq {r.seq} from '{r.source}' already seen (newest {last[0]})",
                                   dropped=True)
        if last is None and len(self._seen) >= self.s.max_sources:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = (r.seq, r.ts_s)
        self.counts.accepted += 1
        return FacilityVerdict(r)

    def _site(self, r: FacilityReading, where: str) -> tuple[str, str]:
        site = self.site
        if r.site != site.name:
            return f"{where}: site '{r.site}', this worker takes '{site.name}'", "site"
        if r.kind == "ups":
            i = site.level_index.get(r.lineup or "")
            if i is None or int(site.level_kind[i]) != KIND["ups"]:
                return f"{where}: field 'lineup' = {r.lineup!r} is not a UPS lineup of site '{site.name}'", "site"
            feed = FEEDS[int(site.level_feed[i])]
            if r.feed is not None and r.feed != feed:
                return f"{where}: field 'feed' = {r.feed!r}, lineup '{r.lineup}' is on feed {feed}", "site"
        for rack in ([r.rack] if r.kind == "ats" else []) + list(r.racks or []):
            if rack is None or rack not in site.level_index or int(site.level_kind[site.level_index[rack]]) != KIND[
                    "rack"]:
                return f"{where}: rack {rack!r} not in site '{site.name}'", "site"
        return "", ""

    def _ranges(self, r: FacilityReading, where: str) -> tuple[str, str]:
        s = self.s
        for name, values, (lo, hi) in (("input_voltage_v", r.input_voltage_v, s.input_voltage_v),
                                       ("output_load_pct", r.output_load_pct, s.output_load_pct),
                                       ("inlet_c", r.inlet_c, s.inlet_c)):
            i = _first_out(values or [], lo, hi)
            if i >= 0:
                assert values is not None
                return f"{where}: field '{name}'[{i}] = {values[i]:g} outside [{lo:g}, {hi:g}]", "range"
        lo, hi = s.frequency_hz
        for i, hz in enumerate(r.input_frequency_hz or []):
            if math.isfinite(hz) and hz != 0.0 and not lo <= hz <= hi:
                return (f"{where}: field 'input_frequency_hz'[{i}] = {hz:g} is neither 0 (dead input) nor within "
                        f"[{lo:g}, {hi:g}] Hz"), "range"
        if r.output_power_w and r.kind == "ups" and r.lineup is not None:
            hi_w = float(self.site.level_rated_w[self.site.level_index[r.lineup]]) * s.output_power_factor
            i = _first_out(r.output_power_w, 0.0, hi_w)
            if i >= 0:
                return (f"{where}: field 'output_power_w'[{i}] = {r.output_power_w[i]:g} outside [0, {hi_w:g}] "
                        f"({s.output_power_factor:g} x lineup '{r.lineup}''s rating)"), "range"
        elif r.output_power_w:
            i = _first_out(r.output_power_w, 0.0, 1e9)
            if i >= 0:
                return f"{where}: field 'output_power_w'[{i}] = {r.output_power_w[i]:g} is negative", "range"
        if r.battery_remaining_s is not None and r.battery_remaining_s < 0:  # the schema refuses it too
            return f"{where}: field 'battery_remaining_s' = {r.battery_remaining_s:g} is negative", "range"
        return "", ""

    def _time(self, r: FacilityReading, where: str, now_s: float) -> tuple[str, str]:
        ahead = r.ts_s - now_s
        if ahead > self.s.max_ahead_s:
            return (f"{where}: field 'ts_s' = {r.ts_s:.3f} is {ahead:.1f} s ahead of the receiver's clock (at most "
                    f"{self.s.max_ahead_s:g} s)"), "ahead"
        if -ahead > self.s.max_age_s:
            return (f"{where}: field 'ts_s' = {r.ts_s:.3f} is {-ahead:.0f} s old (at most {self.s.max_age_s:g} s; "
                    f"older is a replay or a broken clock)"), "too_old"
        return "", ""
