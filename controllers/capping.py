"""Hierarchical, priority-aware power capping: pure numpy, no I/O.

Every breaker of the power tree (PDU, RPP, UPS lineup, utility feed; rows and halls with a busway rating
of their own) is held under its derated limit in the current feed state, with POLCA's two thresholds:

- above `cap_threshold` (80 %) of a level's limit, low-priority work (every class but the most
  important) is shed until the level is back at `cap_threshold - target_margin`;
- above `high_threshold` (89 %), every class may be shed, lowest priority first, until the level is at
  `high_threshold - target_margin`: the excess goes to the low-priority GPUs of every rack under the level
  first, and only what they cannot give to inference-critical ones (issue 14);
- above `brake_threshold` (100 %) for `brake_after_s`, the power brake: every GPU under the level goes
  to its minimum limit at once (the targeted caps did not hold it: wrong readings, a stuck GPU), well
  inside the ~10 s a UPS rides through. The controller brakes only on two fresh, independent sources that
  agree (controllers.degraded): one reading over 100 % sheds by the thresholds above, never brakes.

Budgets flow down the tree: a level's excess is split among the racks under it in proportion to what
each can still give up in the tier being shed (their "demand" above the floor), weighted by how much
of the rack's load the level carries (half on each feed in 2N, all of it on the surviving feed after a
loss, as the rack's own PDU meters say). Each rack then sheds the largest share any of its ancestors
asked of it, so every level gets at least its excess back even when every child is under its own
limit. Caps come off highest priority first, only while every level above a rack is under that class's
uncap threshold (5 % under its cap threshold: the hysteresis that stops flapping), a fraction of the
room per step. (The controller takes each level at its reading plus the changes still to show in it, so
nothing is shed or released twice.)

Unknown loads (NaN: no meter, stale) neither shed nor release: the level is skipped, its children's
own meters still govern. A GPU with no reading counts as drawing its cap: never as zero.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from powerplane.site import KIND, PRIORITIES, FloatArray, IntArray, Site

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CapSettings:
    cap_threshold: float = 0.80  # POLCA T1: shed low priority
    uncap_threshold: float = 0.75  # low priority comes back below this
    high_threshold: float = 0.89  # POLCA T2: shed every class, lowest first
    high_uncap_threshold: float = 0.84
    brake_threshold: float = 1.0
    brake_after_s: float = 2.0  # over 100 % this long despite caps: brake (UPS ride-through is ~10 s)
    # Shed a little below the threshold so noise does not bring the level straight back over it.
    target_margin: float = 0.03
    release_frac: float = 0.5  # give back this share of the room per step: restore gradually
    min_change_w: float = 5.0  # smaller changes are not worth a command
    high_classes: int = 1  # the first N classes of PRIORITIES are "high priority" (inference-critical)


# Levels held under their limits: the breakers of the power tree, plus rows and halls that have a rating
# of their own (a busway). A rack's own rating, and rows, halls and the site bounded only by the sum of
# their racks, are planning figures, not breakers: the PDUs and feeds above them already bound them.
# Zones are cooling capacity: the thermal policy gives them a heat budget when it has to.
BREAKER_KINDS = ("utility", "ups", "rpp", "pdu")


@dataclass
class Tree:
    """Which levels each rack loads, as flat (level, rack, feed side) triples; built once per site.

    side is 0/1 for the feed-specific levels above the rack's A/B PDU and -1 for levels that carry the
    whole rack (the rack itself, its row, hall, cooling zone and the site)."""

    level: IntArray
    rack: IntArray
    side: IntArray
    n_levels: int
    n_racks: int

    @classmethod
    def of(cls, site: Site) -> Tree:
        lv: list[int] = []
        rk: list[int] = []
        sd: list[int] = []
        site_lv = site.levels_of_kind("site").tolist()
        for r in range(site.n_racks):
            whole = [int(site.rack_level[r]), int(site.rack_row[r]), int(site.rack_hall[r]), int(site.rack_zone[r]),
                     *site_lv]
            for w in whole:
                if w >= 0:
                    lv.append(w)
                    rk.append(r)
                    sd.append(-1)
            for f in (0, 1):
                node = int(site.rack_pdu[r, f])
                while node >= 0:
                    lv.append(node)
                    rk.append(r)
                    sd.append(f)
                    node = int(site.level_parent[node])
        return cls(np.array(lv, np.int64), np.array(rk, np.int64), np.array(sd, np.int64),
                   len(site.level_ids), site.n_racks)

    def coef(self, share: FloatArray) -> FloatArray:
        """Per triple: the fraction of the rack's load its level carries, given per-rack feed shares."""
        s = share[self.rack, np.maximum(self.side, 0)]
        return np.where(self.side < 0, 1.0, s)

    def level_sum(self, coef: FloatArray, per_rack: FloatArray) -> FloatArray:
        return _bincount(self.level, coef * per_rack[self.rack], self.n_levels)

    def rack_max(self, coef: FloatArray, per_level: FloatArray) -> FloatArray:
        """Per rack, the largest per-level value over the levels that carry some of its load."""
        out = np.zeros(self.n_racks)
        v = np.where(coef > 1e-3, per_level[self.level], 0.0)
        np.maximum.at(out, self.rack, v)
        return out

    def rack_min(self, coef: FloatArray, per_level: FloatArray) -> FloatArray:
        out = np.full(self.n_racks, np.inf)
        v = np.where(coef > 1e-3, per_level[self.level], np.inf)
        np.minimum.at(out, self.rack, v)
        return out

    def racks_under(self, levels: BoolArray, coef: FloatArray) -> BoolArray:
        out = np.zeros(self.n_racks, dtype=bool)
        hit = levels[self.level] & (coef > 1e-3)
        out[self.rack[hit]] = True
        return out


_TREES: dict[int, tuple[weakref.ref[Site], Tree]] = {}


def tree_of(site: Site) -> Tree:
    """The site's Tree, built once per site object (a weak reference checks that an id was not reused)."""
    hit = _TREES.get(id(site))
    if hit is not None and hit[0]() is site:
        return hit[1]
    for k in [k for k, (ref, _) in _TREES.items() if ref() is None]:
        del _TREES[k]
    t = Tree.of(site)
    _TREES[id(site)] = (weakref.ref(site), t)
    return t


def _bincount(idx: IntArray, weights: FloatArray, n: int) -> FloatArray:
    return np.asarray(np.bincount(idx, weights=weights, minlength=n), dtype=np.float64)


def gpu_efficiency(site: Site) -> FloatArray:
    return np.asarray(site.server_psu_eff[site.gpu_server], dtype=np.float64)


def feed_share(site: Site, level_power_w: FloatArray) -> FloatArray:
    """Per rack, the share of its load on feed A and B from its own PDU meters (0.5/0.5 if unknown)."""
    pw = level_power_w[site.rack_pdu]
    pw0 = np.where(np.isfinite(pw), np.maximum(pw, 0.0), 0.0)
    tot = pw0.sum(axis=1, keepdims=True)
    known = np.isfinite(pw).all(axis=1, keepdims=True) & (tot > 0)
    return np.where(known, pw0 / np.where(tot > 0, tot, 1.0), 0.5)


def power_levels(site: Site) -> BoolArray:
    rated_busway = np.isin(site.level_kind, [KIND["row"], KIND["hall"]]) & (site.level_rated_w > 0)
    return np.isin(site.level_kind, [KIND[k] for k in BREAKER_KINDS]) | rated_busway


def brake_levels(level_power_w: FloatArray, limit_w: FloatArray, over_since_s: FloatArray, now_s: float,
                 s: CapSettings, confirm_w: FloatArray | None = None) -> tuple[BoolArray, FloatArray]:
    """(levels to brake now, updated over-since times). A level is braked when it is over brake_threshold of
    its limit now and has been since over_since for brake_after_s. With confirm_w (a second, independent
    source for the same levels: controllers.degraded.evidence_w) both must read over: one source alone never
    brakes. An unknown load keeps its clock running but brakes nothing until it is known and over again."""
    def over_of(w: FloatArray) -> BoolArray:
        return np.asarray(np.isfinite(w) & (w > s.brake_threshold * limit_w) & (limit_w > 0))

    over = over_of(level_power_w)
    unknown = ~np.isfinite(level_power_w)
    if confirm_w is not None:
        over = over & over_of(confirm_w)
        unknown = unknown | ~np.isfinite(confirm_w)
    since = np.where(over, np.minimum(over_since_s, now_s), np.where(unknown, over_since_s, np.inf))
    return over & np.isfinite(since) & (now_s - since >= s.brake_after_s), since


def _take(site: Site, classes: range | list[int], need_dc: FloatArray, draw: FloatArray, avail: FloatArray,
          new: FloatArray) -> FloatArray:
    """Shed need_dc (per rack, DC W) from the given classes, lowest priority first, each GPU in
    proportion to what it can still give. Updates new and avail in place; returns the unmet need."""
    rack = site.gpu_rack
    for prio in sorted(classes, reverse=True):
        m = (site.gpu_priority == prio) & (need_dc[rack] > 0)
        if not m.any():
            continue
        a = np.bincount(rack[m], weights=avail[m], minlength=site.n_racks)
        take = np.minimum(need_dc, a)
        frac = np.divide(take, a, out=np.zeros(site.n_racks), where=a > 0)
        cut = frac[rack[m]] * avail[m]
        new[m] = np.where(cut > 0, np.minimum(new[m], draw[m] - cut), new[m])  # others keep their cap
        avail[m] -= cut
        need_dc = need_dc - take
    return need_dc


def decide_caps(site: Site, gpu_power_w: FloatArray, cap_w: FloatArray, level_power_w: FloatArray,
                limit_w: FloatArray, s: CapSettings, brake: BoolArray | None = None,
                heat_budget_w: FloatArray | None = None) -> FloatArray:
    """New per-GPU power limits (W).

    level_power_w and limit_w are indexed by level (Site.level_ids): the latest load of every level
    (NaN: unknown) and its derated limit in the current feed state. `brake` marks levels whose every GPU
    goes to its minimum now. heat_budget_w (level-indexed, NaN elsewhere) holds a
    cooling zone to a heat load, as the thermal policy asks when a zone runs out of cooling: low priority
    in the zone is shed down to the budget (inference-critical only if the zone is far above it, past the
    high threshold of the limit the budget implies). Uncapped GPUs hold gpu_max_w.
    """
    tree = tree_of(site)
    lo, hi = site.gpu_min_w, site.gpu_max_w
    rack = site.gpu_rack
    n_r = site.n_racks
    eff = gpu_efficiency(site)
    rack_eff = np.bincount(rack, weights=eff, minlength=n_r) / np.maximum(np.bincount(rack, minlength=n_r), 1)
    cap = np.clip(np.where(np.isfinite(cap_w), cap_w, hi), lo, hi)
    draw = np.minimum(np.where(np.isfinite(gpu_power_w), gpu_power_w, cap), cap)
    avail = np.maximum(draw - lo, 0.0)  # DC W each GPU can still give up
    high = site.gpu_priority < s.high_classes
    coef = tree.coef(feed_share(site, level_power_w))

    load = np.asarray(level_power_w, dtype=np.float64)
    capped_levels = power_levels(site)
    if heat_budget_w is not None:
        budget = np.isfinite(heat_budget_w)
        capped_levels = capped_levels | budget
        # The limit whose low-priority target is the budget: above it low priority is shed down to it;
        # inference-critical only if the zone runs far above it (the high threshold of that limit).
        limit_w = np.where(budget, np.nan_to_num(heat_budget_w) / (s.cap_threshold - s.target_margin), limit_w)
    ok = np.isfinite(load) & capped_levels & (limit_w > 0)
    load0 = np.where(ok, load, 0.0)

    def per_rack_share(excess: FloatArray, rack_give_w: FloatArray) -> FloatArray:
        """Per rack (wall W): the largest share of any ancestor's excess, split by what racks can give."""
        denom = tree.level_sum(coef, rack_give_w)
        ratio = np.divide(excess, denom, out=np.where(excess > 0, np.inf, 0.0), where=denom > 0)
        return rack_give_w * np.minimum(tree.rack_max(coef, ratio), 1e9)

    # ---- shed -------------------------------------------------------------------------------------
    give_low = _bincount(rack[~high], (avail / eff)[~high], n_r)
    give_high = _bincount(rack[high], (avail / eff)[high], n_r)
    t1 = ok & (load0 > s.cap_threshold * limit_w)
    t2 = ok & (load0 > s.high_threshold * limit_w)
    ex1 = np.where(t1, load0 - (s.cap_threshold - s.target_margin) * limit_w, 0.0)
    ex2 = np.where(t2, load0 - (s.high_threshold - s.target_margin) * limit_w, 0.0)
    need1 = per_rack_share(ex1, give_low)  # from low priority only
    # Over the high threshold anyone may be shed, but low priority first across every rack under the level,
    # not rack by rack: a level's excess goes to its racks' low-priority GPUs first, and only what they cannot
    # give to inference-critical ones (in proportion to what those can give). Split by everyone's room, a rack
    # of critical GPUs would be cut while another rack under the same RPP still had batch work to shed.
    low_room = tree.level_sum(coef, give_low)
    need2_low = per_rack_share(np.minimum(ex2, low_room), give_low)
    need2_high = per_rack_share(np.maximum(ex2 - low_room, 0.0), give_high)
    new = cap.copy()
    low_classes = list(range(s.high_classes, len(PRIORITIES)))
    want_low = np.maximum(need1, need2_low)
    left = _take(site, low_classes, want_low * rack_eff, draw, avail, new)
    # What low priority could not give of its share of the high-threshold excess falls to critical as well.
    short = np.maximum(need2_low * rack_eff - (want_low * rack_eff - left), 0.0)
    _take(site, list(range(s.high_classes)), need2_high * rack_eff + short, draw, avail, new)
    # Nothing is released under a level over its high threshold, even on a rack that was asked for nothing.
    need_any = (need1 > 0) | tree.racks_under(ex2 > 0, coef)

    # ---- brake --------------------------------------------------------------------------------------
    if brake is not None and brake.any():
        braked = tree.racks_under(brake & capped_levels, coef)
        new = np.where(braked[rack], lo, new)
        need_any |= braked

    # ---- release: highest priority first, only racks nothing above asks to shed ----------------------
    new = _release(site, tree, coef, s, ok, limit_w, load0, new, eff, need_any)
    new = np.clip(new, lo, hi)
    # Ignore dithering: keep the old cap where the change is too small to matter.
    small = np.abs(new - cap) < s.min_change_w
    near_max = new > hi - s.min_change_w
    return np.where(small & ~near_max, cap, np.where(near_max, hi, new))


def _release(site: Site, tree: Tree, coef: FloatArray, s: CapSettings, ok: BoolArray, limit_w: FloatArray,
             load0: FloatArray, new: FloatArray, eff: FloatArray, need_any: BoolArray) -> FloatArray:
    """Give room back, highest priority first, and only to racks that nothing above asks to shed: each
    class up to its uncap threshold of every level above it, `release_frac` of the room per decision."""
    hi, rack, n_r = site.gpu_max_w, site.gpu_rack, site.n_racks
    gap = np.where(new < hi, hi - new, 0.0) / eff  # wall W each GPU would add if fully released
    released_w = np.zeros(n_r)
    for classes, threshold in ((range(s.high_classes), s.high_uncap_threshold),
                               (range(s.high_classes, len(PRIORITIES)), s.uncap_threshold)):
        m_cls = np.isin(site.gpu_priority, list(classes)) & (gap > 0)
        g_rack = _bincount(rack[m_cls], gap[m_cls], n_r)
        if not g_rack.any():
            continue
        room = np.where(ok, threshold * limit_w - load0 - tree.level_sum(coef, released_w), np.inf)
        room = np.maximum(room, 0.0)
        denom = tree.level_sum(coef, g_rack)
        ratio = np.divide(room, denom, out=np.full(tree.n_levels, np.inf), where=denom > 0)
        share = tree.rack_min(coef, ratio)
        give = np.where(g_rack > 0, np.minimum(g_rack * np.minimum(share, 1.0), g_rack), 0.0)
        give = np.where(need_any | ~np.isfinite(give), 0.0, give) * s.release_frac
        frac = np.divide(give, g_rack, out=np.zeros(n_r), where=g_rack > 0)
        # Only where some level above the rack is actually known: with no reading at all, hold.
        frac = np.where(tree.rack_min(coef, np.where(ok, 0.0, np.inf)) == 0.0, frac, 0.0)
        new = np.where(m_cls, new + frac[rack] * gap * eff, new)
        released_w += give * (frac > 0)
    return new


def worst_level(site: Site, level_power_w: FloatArray, limit_w: FloatArray) -> tuple[IntArray, FloatArray]:
    """Per rack, the power level above it closest to (or furthest over) its limit, and that load/limit
    ratio: what a command's reason names. -1 and NaN where nothing above the rack is known."""
    tree = tree_of(site)
    coef = tree.coef(feed_share(site, level_power_w))
    ok = np.isfinite(level_power_w) & power_levels(site) & (limit_w > 0)
    ratio = np.where(ok, np.divide(level_power_w, limit_w, out=np.zeros_like(limit_w), where=limit_w > 0), -np.inf)
    v = np.where(coef > 1e-3, ratio[tree.level], -np.inf)
    order = np.lexsort((-v, tree.rack))  # per rack, the largest ratio first
    first = np.r_[True, tree.rack[order][1:] != tree.rack[order][:-1]]
    idx = order[first]
    lvl = np.full(site.n_racks, -1, dtype=np.int64)
    out = np.full(site.n_racks, np.nan)
    good = np.isfinite(v[idx])
    lvl[tree.rack[idx][good]] = tree.level[idx][good]
    out[tree.rack[idx][good]] = v[idx][good]
    return lvl, out
