"""The controller's view of the facility signals on `pp.facility`: which UPS lineups a UPS says are on battery,
so the controller sheds within the ride-through instead of waiting for the PDU meters (docs/safety.md,
"Facility signals"). Pure, no I/O.

A lineup's on-battery reading (a trap or a poll) is acted on for `SIGNAL_BOUND_S` after its event time: the
levels under it take the site's feed-lost limits (powerplane.site.Site.limits_dark_w), so the surviving side's
PDUs and lineups are capped before their meters show the transfer. Past the bound the streams stage's verdict
governs through the aggregates' limits (confirmed: the meters' dark feed; refuted: normal limits, and the caps
come off through the normal hysteresis). A reading older than the bound, or of an unknown lineup, is refused
with one line: never escalate on stale evidence.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from powerplane.facility_checks import SIGNAL_BOUND_S, FacilityChecker
from powerplane.schemas import FacilityReading
from powerplane.site import Site


class ControllerSignals:
    def __init__(self, site: Site, bound_s: float = SIGNAL_BOUND_S) -> None:
        self.site = site
        self.bound_s = bound_s
        self.checker = FacilityChecker(site)
        self.since: dict[int, float] = {}  # lineup level -> event time of its on-battery evidence
        # Lineups whose signal outlived its bound: the stage's verdict governs, and further on-battery readings
        # (a UPS polled every few seconds) are not acted on again until it reads off battery.
        self.spent: set[int] = set()
        self.refused = 0
        self._cache: tuple[tuple[int, ...], npt.NDArray[np.float64]] | None = None

    def take(self, r: FacilityReading, now_s: float) -> tuple[bool, str]:
        """(a lineup newly on battery: decide now, the reason it is refused or "")."""
        v = self.checker.check(r, now_s)
        if v.reading is None:
            self.refused += int(v.refused)
            return False, v.reason if v.refused else ""
        if r.kind != "ups" or r.on_battery is None:
            return False, ""
        lv = self.site.level_index[r.lineup or ""]
        if not r.on_battery:
            if self.since.get(lv, np.inf) <= r.ts_s:
                del self.since[lv]
            self.spent.discard(lv)
            return False, ""
        age = now_s - r.ts_s
        if age > self.bound_s:
            self.refused += 1
            return False, (f"facility.reading {r.unit}: on battery at ts_s {r.ts_s:.3f}, {age:.1f} s old: past the "
                           f"{self.bound_s:g} s confirmation bound, not acted on")
        self.active(now_s)
        new = lv not in self.since and lv not in self.spent
        if new:
            self.since[lv] = r.ts_s
        return new, ""

    def active(self, now_s: float) -> list[int]:
        """Lineups whose signal is within its bound now (older ones are forgotten)."""
        for lv in [lv for lv, t in self.since.items() if now_s - t > self.bound_s]:
            del self.since[lv]
            self.spent.add(lv)
        return sorted(self.since)

    def limits(self, limit_w: npt.NDArray[np.float64], now_s: float) -> npt.NDArray[np.float64]:
        """`limit_w` with the feed-lost limits of the lineups on battery now (the lower of the two per level)."""
        on = tuple(self.active(now_s))
        if not on:
            return limit_w
        if self._cache is None or self._cache[0] != on:
            dark = np.zeros(len(self.site.level_ids), dtype=bool)
            dark[list(on)] = True
            self._cache = (on, self.site.limits_dark_w(dark)[1])
        return np.minimum(limit_w, self._cache[1])
