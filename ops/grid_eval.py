"""evaluate's grid metrics (issue 16): how a run's load looked to its utility, from the twin's ground truth.

For a site with grid limits (its own [grid] and [feeds.grid], or the scenario's) and for each demand-response
event of the scenario, scored with the measures of powerplane.grid on the 1 s series of the site's power and
of each limited utility feed's:

- ramp: seconds whose ramp (over the limit's window) exceeds the limit, up and down, and the worst excess;
- dynamic range: the widest max - min over the limit's window, and seconds over the limit;
- oscillation: each band's amplitude (MW, peak) over sliding windows of `band_window_s` (hop: half a window),
  the worst window against the band's limit. A 1 s series resolves up to 0.5 Hz: a band above it is reported
  as not resolved (NaN, never as a pass), a band straddling it is measured only below 0.5 Hz ('partial');
- demand response: time to the target, share of the hold within it, met or not, and the restore's worst ramp
  up against the ramp limit;
- training: iterations completed per job (the report sets them against the no-control run's);
- floor energy: what the power floors burnt beyond what the GPUs would have drawn without them (the twin's
  sum over GPUs of max(0, drawn - natural), each second, at the wall through the PSUs' nominal efficiency),
  over the whole run and as a share of the site's energy: the price of smoothing by floors.

The twin starts every pool and job at once from a cold state; the first `settle_s` seconds (the scenario's
`measure_from_s`, default 10) are that start, not the plant's behaviour, and are left out of the ramp, range
and band measures (not of the demand-response ones, which are timed by their events).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from powerplane.grid import (
    DemandResponse,
    GridLimits,
    band_amplitude_mw,
    band_resolved,
    dr_outcome,
    dynamic_range_mw,
    ramp_mw_per_s,
    ramp_violations,
)
from powerplane.site import PRIORITIES, FloatArray, Site

__all__ = ["GridTally", "band_report", "limits_report"]

SETTLE_S = 10.0


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def limits_report(power_w: FloatArray, dt_s: float, limits: GridLimits) -> dict[str, Any]:
    """Ramp, dynamic range and band figures of one series against one set of limits."""
    r = ramp_mw_per_s(power_w, dt_s, limits.ramp_window_s)
    up, down = ramp_violations(power_w, dt_s, limits)
    out: dict[str, Any] = {
        "ramp_window_s": limits.ramp_window_s,
        "ramp_up_limit_mw_per_s": limits.ramp_up_mw_per_s, "ramp_down_limit_mw_per_s": limits.ramp_down_mw_per_s,
        "max_ramp_up_mw_per_s": _num(float(np.nanmax(r))) if np.isfinite(r).any() else None,
        "max_ramp_down_mw_per_s": _num(float(-np.nanmin(r))) if np.isfinite(r).any() else None,
        "seconds_over_ramp_up": float((up > 0).sum() * dt_s), "seconds_over_ramp_down": float((down > 0).sum() * dt_s),
        "worst_over_ramp_up_mw_per_s": float(up.max(initial=0.0)),
        "worst_over_ramp_down_mw_per_s": float(down.max(initial=0.0)),
    }
    rng = dynamic_range_mw(power_w, dt_s, limits.range_window_s)
    fin = rng[np.isfinite(rng)]
    out["range_window_s"] = limits.range_window_s
    out["range_limit_mw"] = limits.range_mw
    out["max_range_mw"] = float(fin.max()) if fin.size else None  # None: the run is shorter than the window
    out["seconds_over_range"] = float((fin > limits.range_mw).sum() * dt_s) if limits.range_mw is not None else 0.0
    out["bands"] = band_report(power_w, dt_s, limits)
    return out


def band_report(power_w: FloatArray, dt_s: float, limits: GridLimits) -> list[dict[str, Any]]:
    """Each band's worst amplitude over sliding windows of band_window_s (the whole series if shorter)."""
    p = np.asarray(power_w, dtype=np.float64)
    k = max(4, round(limits.band_window_s / dt_s))
    starts = range(0, max(p.size - k, 0) + 1, max(1, k // 2)) if p.size >= k else [0]
    spans = [(lo, hi) for lo, hi in ((b.lo_hz, b.hi_hz) for b in limits.bands)]
    amps = np.array([band_amplitude_mw(p[s:s + k], dt_s, spans) for s in starts]) if spans else np.zeros((0, 0))
    out = []
    for i, b in enumerate(limits.bands):
        col = amps[:, i] if amps.size else np.full(1, np.nan)
        seen = band_resolved(b.lo_hz, b.hi_hz, dt_s)
        worst = float(np.nanmax(col)) if np.isfinite(col).any() else math.nan
        out.append({"lo_hz": b.lo_hz, "hi_hz": b.hi_hz, "limit_mw": b.limit_mw, "resolved": seen,
                    "window_s": min(p.size, k) * dt_s, "max_amplitude_mw": _num(worst),
                    "windows_over": int((col > b.limit_mw).sum()), "windows": int(col.size),
                    "within_limit": None if math.isnan(worst) else bool(worst <= b.limit_mw)})
    return out


def _restore(power_w: FloatArray, t_s: FloatArray, ev: DemandResponse, limits: GridLimits | None) -> dict[str, Any]:
    """The worst ramp up once the hold is over (the restore), against the ramp-up limit where there is one."""
    end = ev.start_s + ev.within_s + ev.hold_s
    window = limits.ramp_window_s if limits is not None else 1.0
    r = ramp_mw_per_s(power_w, float(t_s[1] - t_s[0]) if t_s.size > 1 else 1.0, window)
    after = (t_s >= end) & np.isfinite(r)
    if not after.any():
        return {"restore_observed": False, "restore_max_ramp_up_mw_per_s": None, "restore_within_limit": None}
    worst = float(max(r[after].max(), 0.0))
    limit = limits.ramp_up_mw_per_s if limits is not None else None
    return {"restore_observed": True, "restore_max_ramp_up_mw_per_s": worst,
            "restore_within_limit": None if limit is None else bool(worst <= limit)}


@dataclass
class GridTally:
    """Per-second site and utility-feed power of one run, scored at the end."""

    site: Site
    demand_response: tuple[DemandResponse, ...] = ()
    settle_s: float = SETTLE_S
    t_s: list[float] = field(default_factory=list)
    site_w: list[float] = field(default_factory=list)
    feed_w: list[FloatArray] = field(default_factory=list)
    iterations: dict[str, float] = field(default_factory=dict)
    job_priority: dict[str, str] = field(default_factory=dict)
    focus_job: str | None = None  # the scenario's own training job, reported on its own
    floor_j: float = 0.0  # wall energy the power floors burnt beyond the GPUs' own draw (1 s per add)
    floor_gpu_j: float = 0.0  # the same at the GPUs (DC)

    def __post_init__(self) -> None:
        self.feeds = self.site.levels_of_kind("utility")

    @property
    def active(self) -> bool:
        return self.site.grid is not None or bool(self.site.feed_grid) or bool(self.demand_response)

    def add(self, fr: Any, t_s: float) -> None:
        self.t_s.append(t_s)
        self.site_w.append(float(fr.site_power_w))
        self.floor_j += float(fr.floor_extra_w)
        self.floor_gpu_j += float(fr.floor_extra_gpu_w)
        self.feed_w.append(np.asarray(fr.level_power_w, dtype=np.float64)[self.feeds])
        js = fr.jobs
        for i, name in enumerate(js.names):
            self.iterations[name] = float(js.iterations[i])
            self.job_priority[name] = PRIORITIES[int(js.priority[i])]

    def _series(self, feed: str | None) -> FloatArray:
        if feed is None:
            return np.asarray(self.site_w, dtype=np.float64)
        col = [self.site.level_ids[int(i)] for i in self.feeds].index(feed)
        return np.asarray([f[col] for f in self.feed_w], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        t = np.asarray(self.t_s, dtype=np.float64)
        settled = t > self.settle_s
        out: dict[str, Any] = {"settle_s": self.settle_s, "dt_s": 1.0,
                               "resolves_up_to_hz": 0.5, "training_iterations": dict(self.iterations),
                               "training_iterations_total": sum(v for k, v in self.iterations.items()
                                                                if self.job_priority.get(k) == "training")}
        site_j = float(np.sum(self.site_w))
        out["floor_energy"] = {"kwh": self.floor_j / 3.6e6, "gpu_kwh": self.floor_gpu_j / 3.6e6,
                               "site_kwh": site_j / 3.6e6, "share": self.floor_j / site_j if site_j > 0 else 0.0}
        if self.focus_job is not None:
            out["training_job"] = {"name": self.focus_job, "iterations": self.iterations.get(self.focus_job)}
        if not self.active or t.size < 2:
            return out
        if self.site.grid is not None:
            out["site"] = limits_report(self._series(None)[settled], 1.0, self.site.grid)
        out["feeds"] = {f: limits_report(self._series(f)[settled], 1.0, lim) for f, lim in self.site.feed_grid.items()}
        drs = []
        for ev in self.demand_response:
            p = self._series(ev.feed)
            limits = self.site.feed_grid.get(ev.feed) if ev.feed is not None else self.site.grid
            res = dr_outcome(p, 1.0, float(t[0]), ev)
            drs.append({"id": ev.id, "feed": ev.feed, **res, "met": bool(res["met"]),
                        "time_to_target_s": _num(res["time_to_target_s"]), "hold_share": _num(res["hold_share"]),
                        "hold_ends_in_run": bool(t[-1] >= ev.start_s + ev.within_s + ev.hold_s),
                        **_restore(p, t, ev, limits)})
        out["demand_response"] = drs
        return out


def prepare(site: Site, workload: Any, scenario: Any) -> tuple[Site, Any, GridTally]:
    """The site with the scenario's utility limits, the workload with its training job (the site's default
    workload where none is given), and the tally that scores them."""
    if scenario is None:
        return site, workload, GridTally(site)
    site = scenario.site_for(site)
    if scenario.training_job is not None:
        from sim.workload import default_workload

        workload = scenario.workload_for(site, workload if workload is not None else default_workload(site))
    job = scenario.training_job.name if scenario.training_job is not None else None
    return site, workload, GridTally(site, tuple(scenario.demand_response), settle_s=scenario.measure_from_s,
                                     focus_job=job)


def dr_markers(tally: GridTally) -> list[tuple[float, str]]:
    """The charts' event lines for each demand-response request: its arrival, deadline and end of hold."""
    out = []
    for ev in tally.demand_response:
        target = f"-{ev.reduce_by_pct:g} %" if ev.reduce_by_pct is not None else f"to {ev.reduce_to_mw:g} MW"
        out += [(ev.start_s, f"demand response {ev.id}: {target} within {ev.within_s:g} s"),
                (ev.start_s + ev.within_s + ev.hold_s, f"demand response {ev.id}: hold ends")]
    return out
