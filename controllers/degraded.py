"""Degraded-mode rules of the controller: pure numpy, no I/O (docs/safety.md is the table they implement).

- Fail-static: an input is used only while it is fresh, by arrival (our clock) and by event time (the
  reading's own clock), and while the streams stage does not say it is behind. When the inputs the
  controller decides on are stale as a whole (nothing arrives, or what arrives is old), it holds what it
  has: no shed, no brake, no release, only renewals of the leases it holds, so a stale period neither
  escalates nor reverts.
- A window aggregate that counts many racks from old readings or at their rated power is an estimate, not
  evidence: the controller sums the level from its PDUs instead, or holds it.
- A level with nothing fresh is taken at a bounded estimate for a while: its last fresh load plus the
  forecast's p99 spread (never its rated power). It may shed by the normal thresholds on that estimate (as
  Thunderbolt caps predictively on missing telemetry); it never releases and never brakes on it. Past
  `estimate_max_age_s` the estimate says too little and the level is held.
- The power brake needs two independent sources over the brake threshold: the PDU meters beneath a level and
  the GPU-based power of the racks beneath it, each fresh and complete. One source over 100 % may still shed
  by the normal thresholds; it never brakes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from controllers.capping import BoolArray, Tree
from powerplane.site import FloatArray, IntArray, Site


@dataclass(frozen=True)
class Freshness:
    """Bounds on input age. A reading older than either bound is stale (not used)."""

    max_arrival_age_s: float = 10.0  # since it arrived (our clock)
    max_event_age_s: float = 10.0  # since it was measured (its event time; assumes NTP-synchronised clocks)
    max_estimated_share: float = 0.25  # a window counting more of its racks than this as stale is an estimate
    estimate_max_age_s: float = 60.0  # a silent level is estimated from its last fresh load this long, then held
    estimate_margin: float = 0.10  # a silent level's estimate is at least its last load plus this share of it


def fresh(now_s: float, seen_s: FloatArray, ts_s: FloatArray, f: Freshness) -> BoolArray:
    """Readings that arrived and were measured within the bounds."""
    return np.asarray((now_s - seen_s <= f.max_arrival_age_s) & (now_s - ts_s <= f.max_event_age_s))


def racks_under(tree: Tree) -> IntArray:
    """Per level, how many racks load it (on either feed side)."""
    return np.asarray(np.bincount(tree.level, minlength=tree.n_levels), dtype=np.int64)


def strict_level_sum(tree: Tree, per_triple: FloatArray) -> FloatArray:
    """Per level, the sum over the racks beneath; NaN where any term is unknown or no rack is beneath."""
    n = tree.n_levels
    known = np.isfinite(per_triple)
    total = np.bincount(tree.level, weights=np.where(known, per_triple, 0.0), minlength=n)
    missing = np.bincount(tree.level, weights=(~known).astype(np.float64), minlength=n)
    count = np.bincount(tree.level, minlength=n)
    return np.where((missing == 0) & (count > 0), total, np.nan)


def evidence_w(site: Site, tree: Tree, pdu_meter_w: FloatArray, rack_gpu_w: FloatArray,
               share: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per level, its load from two independent sources: (the PDU meters beneath it, the GPU-based power of
    the racks beneath it times their share on its feed). pdu_meter_w is level-indexed (NaN: no fresh meter
    reading), rack_gpu_w per rack (NaN: not fresh or not every GPU reported). A level is NaN for a source
    unless every rack beneath it is known to that source."""
    side_meter = pdu_meter_w[site.rack_pdu]  # (racks, 2)
    rack_meter = side_meter.sum(axis=1)
    side = np.maximum(tree.side, 0)
    meter = np.where(tree.side < 0, rack_meter[tree.rack], side_meter[tree.rack, side])
    gpu = rack_gpu_w[tree.rack] * tree.coef(share)
    return strict_level_sum(tree, meter), strict_level_sum(tree, gpu)


def bounded_estimate_w(now_s: float, last_w: FloatArray, last_ts_s: FloatArray, p50_w: FloatArray,
                       p99_w: FloatArray, forecast_ts_s: FloatArray, f: Freshness) -> FloatArray:
    """Per level, a conservative load for a level with nothing fresh: its last fresh load plus the spread of the
    forecast made around then (p99 - p50: what the load reaches at the 99th percentile from where it was), and
    at least that forecast's p99; the spread is at least `estimate_margin` of the last load (the only margin
    where there is no such forecast). NaN where the last fresh load is older than `estimate_max_age_s` or
    there was none (the level is then held)."""
    both = np.isfinite(forecast_ts_s) & np.isfinite(last_ts_s)
    gap_s = np.abs(np.where(both, forecast_ts_s, 0.0) - np.where(both, last_ts_s, 0.0))
    near = both & np.isfinite(p50_w) & np.isfinite(p99_w) & (gap_s <= f.max_event_age_s)
    # At least the margin: a forecast just restarted (after a feed change) has no spread yet.
    spread = np.fmax(np.where(near, np.nan_to_num(p99_w - p50_w), 0.0), f.estimate_margin * last_w)
    est = np.where(near, np.fmax(last_w + spread, p99_w), last_w + spread)
    recent = np.isfinite(last_w) & (now_s - last_ts_s <= f.estimate_max_age_s)
    return np.where(recent, est, np.nan)


def unsure_racks(tree: Tree, coef: FloatArray, stale_level: BoolArray, rack_silent: BoolArray) -> BoolArray:
    """Racks whose caps may not be released: their own GPU telemetry is silent or stale, or a level above
    them that has had readings has none fresh now (a level with nothing fresh is held, not released)."""
    above = tree.rack_max(coef, stale_level.astype(np.float64)) > 0
    return np.asarray(above | rack_silent)


def stale_inputs(now_s: float, seen_s: float, ts_s: float, stage_behind: bool, f: Freshness) -> str | None:
    """Why the controller's inputs as a whole are too stale to decide on (None: they are not), from the
    newest per-frame input's arrival and event time: nothing arrived within the bound (a broker or worker
    outage), the newest was measured longer ago than the bound (the worker is behind), or the streams stage
    says it is behind."""
    if not math.isfinite(seen_s):
        return None  # nothing to judge yet: every level is unknown, the per-level rules act on nothing stale
    if now_s - seen_s > f.max_arrival_age_s:
        return f"nothing arrived for {now_s - seen_s:.0f} s"
    if now_s - ts_s > f.max_event_age_s:
        return f"newest reading measured {now_s - ts_s:.0f} s ago"
    if stage_behind:
        return "streams stage behind"
    return None


def behind(record: Any, max_lag_s: float) -> bool:
    """Whether the streams stage says this output is behind (a `behind` flag, or a `lag_s` past the bound),
    where its version of the record carries either; an older record carries neither."""
    if bool(getattr(record, "behind", False)):
        return True
    lag = getattr(record, "lag_s", None)
    return isinstance(lag, (int, float)) and math.isfinite(lag) and lag > max_lag_s
