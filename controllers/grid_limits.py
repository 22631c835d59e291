"""The controller's side of the utility's limits (issue 16): demand-response requests as a paced budget on the
site (or one utility feed), and caps released no faster than the ramp-up limit. Plain state and numpy, no I/O.

Demand response rides on the capping policy rather than beside it: while a request holds, the site level (or
the feed's utility level) gets a power budget, as the thermal policy gives a cooling zone one
(controllers.capping.decide_caps `heat_budget_w`). decide_caps then sheds lowest priority first down to it
(best-effort, training, batch), and inference-critical only if the level runs far above it, across every rack
under the level, with the same fresh-evidence rules as any shed; the breakers' own limits bind as always
(whichever is lower wins). The budget is paced: from the load when the request came, down at the ramp-down
limit, to the target (when the pace cannot reach the target by the deadline, the ramp limit wins and the
request is met late: docs/decisions.md); held; then raised at the ramp-up limit until it no longer binds, and
the caps come back by the ordinary release, itself paced by `limit_release`.

The plans in controllers.demand_response and controllers.grid_control compute the same things open loop (a
schedule fixed when the request arrives); this is their closed-loop form: each decision takes the budget at
its time and the loads as measured, so a burst of inference during the hold is shed too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controllers.capping import CapSettings, gpu_efficiency
from controllers.grid_control import release_step
from powerplane.grid import MW, DemandResponse, GridLimits, ramp_step_w
from powerplane.site import FloatArray, Site


@dataclass
class _Request:
    ev: DemandResponse
    level: int  # the level the budget is on: the site, or the event's utility feed
    load0_w: float  # the level's load when the request came (NaN: not seen yet; the budget waits for it)
    limits: GridLimits


@dataclass
class GridControl:
    site: Site
    settings: CapSettings
    requests: list[_Request] = field(default_factory=list)
    held_back_w: float = 0.0  # wall W of cap releases the ramp-up limit put off, summed over decisions

    def __post_init__(self) -> None:
        self.site_level = int(self.site.levels_of_kind("site")[0])
        self.eff = gpu_efficiency(self.site)

    def limits_of(self, feed: str | None) -> GridLimits:
        lim = self.site.feed_grid.get(feed) if feed is not None else self.site.grid
        return lim if lim is not None else GridLimits.model_validate({})  # no limit stated: no pacing

    def on_demand_response(self, ev: DemandResponse, level_power_w: FloatArray) -> str:
        """Take a request; returns a one-line summary. A request with an id already held is ignored (a
        duplicate delivery), so the budget's starting load is the first one's."""
        if any(r.ev.id == ev.id for r in self.requests):
            return f"demand response {ev.id}: already held"
        level = self.site.level(ev.feed) if ev.feed is not None else self.site_level
        load0 = float(level_power_w[level])
        self.requests.append(_Request(ev, level, load0, self.limits_of(ev.feed)))
        target = ev.target_w(load0) if math.isfinite(load0) else math.nan
        return (f"demand response {ev.id}: {self.site.level_ids[level]} from {load0 / MW:.2f} MW to "
                f"{target / MW:.2f} MW by {ev.start_s + ev.within_s:.0f} s, held {ev.hold_s:.0f} s")

    def _budget(self, r: _Request, now_s: float) -> float:
        """The load the request allows at now_s (wall W), inf once restored."""
        ev, lim = r.ev, r.limits
        target = ev.target_w(r.load0_w)
        down = lim.ramp_down_mw_per_s * MW if lim.ramp_down_mw_per_s is not None else math.inf
        up = lim.ramp_up_mw_per_s * MW if lim.ramp_up_mw_per_s is not None else math.inf
        end = ev.start_s + ev.within_s + ev.hold_s
        if now_s < end:
            return max(target, r.load0_w - down * (now_s - ev.start_s))
        return target + up * (now_s - end)

    def budget_w(self, now_s: float, level_power_w: FloatArray) -> FloatArray:
        """Level-indexed budgets (NaN where none) for decide_caps, scaled so that its shed threshold falls on the
        request's allowance: the level is shed as soon as it is over, down to a little under it."""
        out = np.full(len(self.site.level_ids), np.nan)
        s = self.settings
        keep: list[_Request] = []
        for r in self.requests:
            if now_s < r.ev.start_s:
                keep.append(r)
                continue
            if not math.isfinite(r.load0_w):  # the level's load was unknown when it came: take the first seen
                r.load0_w = float(level_power_w[r.level])
                if not math.isfinite(r.load0_w):
                    keep.append(r)
                    continue
            b = self._budget(r, now_s)
            if b > 2.0 * r.load0_w:  # restored well past where it started: the request no longer binds
                continue
            keep.append(r)
            out[r.level] = np.fmin(out[r.level], b * (s.cap_threshold - s.target_margin) / s.cap_threshold)
        self.requests = keep
        return out

    def limit_release(self, cap_w: FloatArray, new_w: FloatArray, gpu_power_w: FloatArray) -> FloatArray:
        """new_w with its rises (releases) held to the site's ramp-up allowance for one decision, highest
        priority first; every cut stays as decided (a shed is never slowed by a ramp limit). A capped GPU's
        demand is unknown (its reading is its cap), so its rise counts in full."""
        lim = self.site.grid
        if lim is None or lim.ramp_up_mw_per_s is None:
            return new_w
        old = np.where(np.isfinite(cap_w), cap_w, self.site.gpu_max_w)
        rising = new_w > old
        if not rising.any():
            return new_w
        _, up = ramp_step_w(lim, 1.0)
        at_cap = ~np.isfinite(gpu_power_w) | (gpu_power_w >= old - 0.05 * old)
        demand = np.where(at_cap, np.nan, gpu_power_w)
        to = np.where(rising, new_w, old)
        stepped, used = release_step(old, to, demand, self.site.gpu_priority, up, self.eff)
        total = float(np.sum(np.where(rising, (new_w - old) / self.eff, 0.0)))
        self.held_back_w += max(total - used, 0.0)
        return np.where(rising, stepped, new_w)
