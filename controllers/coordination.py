"""Coordination of the pool reconfiguration (controllers.reconfig) with capping and the thermal policy.

Reconfiguration must never undo what capping is holding down. A plan's change to a pool *raises* power
when it starts instances, raises a clock above the lowest one its GPUs run locked at now (a clock lock
set by the thermal policy included), or its predicted power at the forecast exceeds the current one
(a TP change). Such a change is refused - deferred to a later decision, with its reason - while:

- the pool's level or an ancestor is capped: some GPU under any power-tree level above the pool's racks
  runs at an enforced limit under its maximum (capping is shedding there);
- the site runs on one feed (a feed lost, or a feed level dead above the pool): the derated limits are
  the single-feed ones and the transfer has left no margin to spend;
- a cooling zone of the pool's racks is under a thermal action (routing, slowed clocks, a heat budget).

Otherwise changes are staged: those that lower power go first, and each raising change goes only if its
predicted increase, added to the levels above the pool's racks, keeps every one within its derated
limit; what does not fit waits for a later decision. Pure numpy: the caller passes the frame's level
loads and the GPUs' limits and clock locks (``ops.reconfigure`` does, in the evaluation loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray, IntArray, Site

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PlantState:
    """What the coordination needs to know about the plant this second."""

    level_power_w: FloatArray  # every level's load (Site.level_ids order)
    level_alive: BoolArray  # levels that carry power
    gpu_limit_w: FloatArray  # enforced power limit of every GPU
    gpu_lock_mhz: FloatArray  # locked SM clock of every GPU (its max where unlocked)
    zone_stage: IntArray | None = None  # thermal stage per zone (Site.levels_of_kind("zone") order); 0 = normal


@dataclass
class Verdict:
    """Which pools may change now, and why the others wait."""

    allow: BoolArray
    reasons: dict[int, str] = field(default_factory=dict)  # pool index -> why its change was deferred


def _levels_above(site: Site, racks: IntArray) -> BoolArray:
    """Power-tree levels carrying any of the racks (either feed), the racks' own included."""
    ind = np.zeros(site.n_racks)
    ind[racks] = 1.0
    return np.asarray(site.rollup_w(ind, "normal") > 0, dtype=bool)


def _single_feed(site: Site, alive: BoolArray, above: BoolArray) -> str:
    """A reason if a feed level above the pool is dead (a feed, a UPS lineup, an RPP or a PDU lost)."""
    feed_lv = (site.level_feed >= 0) & above & (site.level_rated_w > 0)
    dead = np.flatnonzero(feed_lv & ~alive)
    if dead.size == 0:
        return ""
    return f"single-feed operation ({site.level_ids[int(dead[0])]} carries no power)"


def _capped(site: Site, st: PlantState, above: BoolArray) -> str:
    capped_gpu = st.gpu_limit_w < site.gpu_max_w - 1.0
    if not capped_gpu.any():
        return ""
    racks = np.unique(site.gpu_rack[capped_gpu])
    hit = np.flatnonzero(_levels_above(site, racks) & above & (site.level_rated_w > 0))
    if hit.size == 0:
        return ""
    return f"{site.level_ids[int(hit[-1])]} is capped"


def _thermal(site: Site, st: PlantState, racks: IntArray) -> str:
    if st.zone_stage is None:
        return ""
    zones = site.levels_of_kind("zone")
    hot = zones[np.asarray(st.zone_stage) > 0]
    mine = np.intersect1d(hot, site.rack_zone[racks])
    return f"thermal action in {site.level_ids[int(mine[0])]}" if mine.size else ""


def hold_reason(site: Site, st: PlantState, pool_gpus: IntArray) -> str:
    """Why a pool may not raise its power now ("" if it may)."""
    racks = np.unique(site.gpu_rack[pool_gpus])
    above = _levels_above(site, racks)
    for why in (_single_feed(site, st.level_alive, above), _capped(site, st, above), _thermal(site, st, racks)):
        if why:
            return why
    return ""


def raises_power(cur_instances: int, new_instances: int, new_freq_mhz: float, gpu_lock_mhz: FloatArray,
                 cur_power_w: float, new_power_w: float) -> bool:
    """Whether a pool's change raises its power: more instances, a clock above the lowest one its GPUs
    run locked at now, or a higher predicted power (a TP change)."""
    if new_instances > cur_instances:
        return True
    if gpu_lock_mhz.size and new_freq_mhz > float(gpu_lock_mhz.min()) + 1.0:
        return True
    return bool(np.isfinite(cur_power_w) and np.isfinite(new_power_w) and new_power_w > cur_power_w)


def coordinate(site: Site, st: PlantState, pool_gpus: list[IntArray], raising: BoolArray,
               increase_w: FloatArray, mode_limits_w: FloatArray) -> Verdict:
    """Which pools' changes go now. Lowering changes always go; a raising change goes only where no hold
    applies and its increase, added level by level after the changes admitted before it, stays within
    `mode_limits_w` (the derated limits in the present feed state)."""
    allow = np.ones(len(pool_gpus), dtype=bool)
    reasons: dict[int, str] = {}
    extra = np.zeros(len(site.level_ids))
    for i in np.flatnonzero(raising).tolist():
        why = hold_reason(site, st, pool_gpus[i])
        if not why:
            racks = np.unique(site.gpu_rack[pool_gpus[i]])
            w = np.zeros(site.n_racks)
            np.add.at(w, site.gpu_rack[pool_gpus[i]], max(float(increase_w[i]), 0.0) / max(pool_gpus[i].size, 1))
            add = site.rollup_w(w, "normal")
            lim = (mode_limits_w > 0) & _levels_above(site, racks)
            over = np.flatnonzero(lim & (st.level_power_w + extra + add > mode_limits_w))
            if over.size:
                why = f"would take {site.level_ids[int(over[-1])]} over its limit"
            else:
                extra += add
        if why:
            allow[i] = False
            reasons[i] = why
    return Verdict(allow, reasons)
