"""Oversubscription planning: how many more racks each level could host, with and without capping.

Pure numpy, no I/O (`powerplane plan` is the shell). The input is a (seconds x racks) matrix of rack
wall power. Adding k racks to a level is modelled by a seeded bootstrap of whole rack time series: the
new racks are copies of racks already under the level (same time series, so correlation over time and
with the rest of the site is kept, a conservative choice) placed where their source rack is, so they load
every level their source loads. Per-rack gear is the exception: a new rack brings its own rack and rack
PDUs, so those are not loaded, except when the level being planned is that PDU.

A level hosts k more racks
- without control if, at every level the new racks load, the fraction of seconds above the derated
  limit (nominal feed state) is <= risk;
- with capping if (a) the capped floor of every loaded level (each rack at most at its floor: GPUs at
  their minimum power limit plus the rest of the server) stays under its limit in every second, in the
  nominal state and, with `n_minus_1`, in both single-feed states; and (b) the fraction of seconds in
  which shedding low-priority work down to its floor is not enough (so high-priority work must be
  capped) is <= risk. The expected throttled fraction of low-priority work (energy shed / energy
  demanded) is reported, and can be bounded too (`max_throttle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from powerplane.site import KIND, KIND_NAMES, MODES, PRIORITIES, FloatArray, IntArray, Site

BoolArray = npt.NDArray[np.bool_]
HOURS_PER_YEAR = 8760.0
K_MAX = 1_000_000  # a search past this many racks means no finite limit binds


@dataclass(frozen=True)
class Costs:
    """Cost figures (BRIEF.md, from the Azure AI-Lifecycle-Compass configs)."""

    power_usd_per_w: float = 7.0
    cooling_usd_per_w: float = 2.5
    energy_usd_per_kwh: float = 0.04
    pue: float = 1.2
    rack_kw: float = 50.0  # provisioned power per rack, for the capital avoided


@dataclass
class PlanInputs:
    """Everything the planner needs, as arrays. `plan_inputs(site, ...)` builds it from a site model.

    share[m] is (racks x levels): the fraction of each rack's power that a level carries in feed state m
    (MODES order: normal, A-lost, B-lost); limit_w[m] the level limits in that state (inf = none).
    """

    power_w: FloatArray  # (T, R) rack wall power per second
    floor_w: FloatArray  # (R,) rack power with every GPU at its minimum power limit
    low_frac: FloatArray  # (R,) share of the rack's sheddable power that is low-priority work
    share: list[FloatArray]
    limit_w: list[FloatArray]
    level_ids: list[str]
    level_kind: list[str]
    own_gear: BoolArray  # (levels,) racks and rack PDUs: a new rack brings its own
    _stack: FloatArray = field(init=False, repr=False)
    _base: FloatArray = field(init=False, repr=False)
    _base_floor: dict[int, FloatArray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t, r = self.power_w.shape
        if t < 1 or r < 1:
            raise ValueError(f"rack power matrix is {t} s x {r} racks: need at least one second and one rack")
        if not np.isfinite(self.power_w).all():
            raise ValueError("rack power matrix has missing (NaN) values: fill them before planning")
        p = self.power_w
        # One stacked matrix, so a bootstrap sample costs one matmul: load, capped load, low-priority
        # sheddable, high-priority sheddable, low-priority demand.
        shed = np.maximum(p - self.floor_w, 0.0)
        self._stack = np.concatenate([p, np.minimum(p, self.floor_w), shed * self.low_frac,
                                      shed * (1.0 - self.low_frac), p * self.low_frac])
        self._base = self._stack @ self.share[0]
        self._base_floor = {}

    def base_floor(self, mode: int) -> FloatArray:
        """Capped floor of every level per second in a single-feed state (computed on first use)."""
        if mode not in self._base_floor:
            self._base_floor[mode] = np.minimum(self.power_w, self.floor_w) @ self.share[mode]
        return self._base_floor[mode]

    @property
    def seconds(self) -> int:
        return int(self.power_w.shape[0])

    def members(self, level: int) -> IntArray:
        """Racks whose load reaches a level (in the nominal state)."""
        return np.flatnonzero(self.share[0][:, level] > 0)

    def loaded_levels(self, level: int) -> IntArray:
        """Levels that copies of the level's racks load: all their levels but other per-rack gear."""
        touched = (self.share[0][self.members(level)] > 0).any(axis=0)
        for s in self.share[1:]:
            touched |= (s[self.members(level)] > 0).any(axis=0)
        touched &= ~self.own_gear
        touched[level] = True
        return np.flatnonzero(touched)


def plan_inputs(site: Site, power_w: FloatArray, high_priority: Sequence[str] = ("inference-critical",),
                cooling: bool = False) -> PlanInputs:
    """Build the planner's arrays from a site model and a (seconds x racks) matrix in site rack order.

    Cooling zones bind only with `cooling`: a zone's capacity is a heat-removal rate with minutes of thermal
    inertia, so holding it second by second like a breaker is a conservative extra, not the default."""
    if power_w.ndim != 2 or power_w.shape[1] != site.n_racks:
        raise ValueError(f"rack power matrix has shape {power_w.shape}, expected (seconds, {site.n_racks} racks)")
    bad = [p for p in high_priority if p not in PRIORITIES]
    if bad:
        raise ValueError(f"unknown priority class {', '.join(bad)} (known: {', '.join(PRIORITIES)})")
    n_r = site.n_racks
    eye = np.eye(n_r)
    # Site.rollup_w is linear in rack power: rolling up unit vectors gives each rack's share of each level.
    share = [np.stack([site.rollup_w(eye[r], mode) for r in range(n_r)]) for mode in MODES]
    floor_srv = site.server_input_w(site.gpu_min_w)
    floor_w = np.bincount(site.server_rack, weights=floor_srv, minlength=n_r).astype(np.float64)
    # Sheddable GPU range per rack and the part of it in low-priority classes.
    rng_w = site.gpu_max_w - site.gpu_min_w
    low = ~np.isin(site.gpu_priority, [PRIORITIES.index(p) for p in high_priority])
    tot = np.bincount(site.gpu_rack, weights=rng_w, minlength=n_r)
    low_w = np.bincount(site.gpu_rack, weights=rng_w * low, minlength=n_r)
    low_frac = np.divide(low_w, tot, out=np.zeros(n_r), where=tot > 0)
    kinds = [KIND_NAMES[k] for k in site.level_kind]
    limits = []
    for mode in MODES:
        _, der = site.limits_w(mode)
        lim = der.copy()
        # Rows and halls without their own rating, and the site, are bounded in Site.limits_w by the sum of
        # their racks; new racks bring their own rating, so only a real breaker or the utility binds.
        rows_halls = np.isin(site.level_kind, [KIND["row"], KIND["hall"]])
        lim[rows_halls & (site.level_rated_w <= 0)] = np.inf
        utils = site.levels_of_kind("utility")
        lim[site.levels_of_kind("site")] = der[utils].sum() if utils.size else np.inf
        if not cooling:
            lim[site.levels_of_kind("zone")] = np.inf
        limits.append(lim)
    own = np.isin(site.level_kind, [KIND["rack"], KIND["pdu"]])
    return PlanInputs(power_w=np.asarray(power_w, dtype=np.float64), floor_w=floor_w, low_frac=low_frac,
                      share=share, limit_w=limits, level_ids=list(site.level_ids), level_kind=kinds, own_gear=own)


@dataclass
class Check:
    """Outcome of one candidate k at one level."""

    ok: bool
    binding: str | None = None  # first loaded level that fails
    over_frac: float = 0.0  # worst fraction of seconds over a limit (no control) / needing high-priority caps
    throttled_low_frac: float = 0.0  # low-priority energy shed / demanded, worst loaded level (capping)


@dataclass
class LevelPlan:
    level: str
    kind: str
    limit_w: float
    p99_load_w: float
    racks_under: int
    extra_none: int | None  # None: no finite limit binds
    extra_capped: int | None
    binding_none: str | None
    binding_capped: str | None
    over_frac_none: float  # at extra_none
    high_cap_frac: float  # seconds needing high-priority caps, at extra_capped
    throttled_low_frac: float  # at extra_capped
    mean_rack_w: float  # mean power of one of the level's racks (the added racks draw like them)
    pct_more: float | None  # capped vs no control; None when no control hosts 0 or either is unbounded
    value: dict[str, float] = field(default_factory=dict)


class Sampler:
    """A seeded, growing sequence of source racks for one level: k racks are its first k draws, so more
    racks only ever add load and the search over k is monotone."""

    def __init__(self, members: IntArray, seed: int) -> None:
        self.members = members
        self.rng = np.random.default_rng(seed)
        self.seq = np.zeros(0, dtype=np.int64)

    def counts(self, k: int, n_racks: int) -> FloatArray:
        while self.seq.size < k:
            more = self.rng.integers(0, self.members.size, size=max(64, self.seq.size))
            self.seq = np.concatenate([self.seq, self.members[more]])
        return np.bincount(self.seq[:k], minlength=n_racks).astype(np.float64)


def check(inp: PlanInputs, level: int, loaded: IntArray, counts: FloatArray, risk: float, capped: bool,
          n_minus_1: bool, max_throttle: float | None = None) -> Check:
    """Whether the site with `counts` copies of each rack stays within the rules at every loaded level."""
    t = inp.seconds
    src = np.flatnonzero(counts)
    w = counts[src, None]
    stack = inp._base[:, loaded]
    if src.size:
        stack = stack + inp._stack[:, src] @ (w * inp.share[0][np.ix_(src, loaded)])
    load, floor, shed_lo = stack[:t], stack[t:2 * t], stack[2 * t:3 * t]
    lim = inp.limit_w[0][loaded]
    tol = 1e-6 * np.where(np.isfinite(lim), lim, 0.0) + 1e-9
    excess = load - lim
    if not capped:
        frac = (excess > tol).mean(axis=0)
        bad = np.flatnonzero(frac > risk)
        return Check(not bad.size, inp.level_ids[loaded[bad[0]]] if bad.size else None, float(frac.max()))
    floors = [(floor, lim)]
    if n_minus_1:
        for m in (1, 2):
            f = inp.base_floor(m)[:, loaded]
            if src.size:
                f = f + np.minimum(inp.power_w[:, src], inp.floor_w[src]) @ (w * inp.share[m][np.ix_(src, loaded)])
            floors.append((f, inp.limit_w[m][loaded]))
    for f, lm in floors:
        bad = np.flatnonzero((f > lm + tol).any(axis=0))
        if bad.size:
            return Check(False, inp.level_ids[loaded[bad[0]]], 1.0)
    need_high = excess - shed_lo > tol
    frac = need_high.mean(axis=0)
    bad = np.flatnonzero(frac > risk)
    # Low-priority energy shed / demanded, at the loaded level that sheds the largest share of it.
    demand = stack[4 * t:].sum(axis=0)
    shed = np.clip(excess, 0.0, shed_lo).sum(axis=0)
    throttled = np.divide(shed, demand, out=np.zeros_like(shed), where=demand > 0)
    if not bad.size and max_throttle is not None:
        bad = np.flatnonzero(throttled > max_throttle)
    return Check(not bad.size, inp.level_ids[loaded[bad[0]]] if bad.size else None, float(frac.max()),
                 float(throttled.max()))


def max_extra(inp: PlanInputs, level: int, risk: float, capped: bool, n_minus_1: bool, seed: int,
              max_throttle: float | None = None) -> tuple[int | None, Check, Check | None]:
    """Largest k that passes (exponential then binary search), the check at k, and the failing one at k+1."""
    loaded = inp.loaded_levels(level)
    if not np.isfinite(inp.limit_w[0][loaded]).any():
        return None, Check(True), None
    sampler = Sampler(inp.members(level), seed)
    n_r = inp.power_w.shape[1]

    def at(k: int) -> Check:
        return check(inp, level, loaded, sampler.counts(k, n_r), risk, capped, n_minus_1, max_throttle)

    first = at(0)
    if not first.ok:
        return 0, first, first
    lo, lo_chk, hi = 0, first, 1
    while True:
        c = at(hi)
        if not c.ok:
            hi_chk = c
            break
        lo, lo_chk = hi, c
        if hi >= K_MAX:
            return None, c, None
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = at(mid)
        if c.ok:
            lo, lo_chk = mid, c
        else:
            hi, hi_chk = mid, c
    return lo, lo_chk, hi_chk


def value_of(extra_racks: int | None, mean_rack_w: float, costs: Costs) -> dict[str, float]:
    """Capital avoided by hosting the racks in existing capacity, and the yearly energy cost of their load."""
    k = float(extra_racks or 0)
    return {
        "extra_kw_provisioned": k * costs.rack_kw,
        "capital_avoided_usd": k * costs.rack_kw * 1e3 * (costs.power_usd_per_w + costs.cooling_usd_per_w),
        "extra_mean_load_kw": k * mean_rack_w / 1e3,
        "energy_cost_usd_per_year": k * mean_rack_w / 1e3 * HOURS_PER_YEAR * costs.energy_usd_per_kwh * costs.pue,
    }


def plan_level(inp: PlanInputs, level: int, risk: float, n_minus_1: bool = False, seed: int = 0,
               costs: Costs | None = None, max_throttle: float | None = None) -> LevelPlan:
    costs = costs or Costs()
    members = inp.members(level)
    k_none, c_none, f_none = max_extra(inp, level, risk, False, False, seed)
    k_cap, c_cap, f_cap = max_extra(inp, level, risk, True, n_minus_1, seed, max_throttle)
    load = inp._base[:inp.seconds, level]
    mean_rack_w = float(inp.power_w[:, members].mean()) if members.size else 0.0
    pct = None
    if k_none is not None and k_cap is not None and k_none > 0:
        pct = 100.0 * (k_cap - k_none) / k_none
    v_none, v_cap = value_of(k_none, mean_rack_w, costs), value_of(k_cap, mean_rack_w, costs)
    val = {f"{key}_no_control": x for key, x in v_none.items()} | {f"{key}_capped": x for key, x in v_cap.items()}
    val["capital_avoided_by_capping_usd"] = v_cap["capital_avoided_usd"] - v_none["capital_avoided_usd"]
    return LevelPlan(
        level=inp.level_ids[level], kind=inp.level_kind[level], limit_w=float(inp.limit_w[0][level]),
        p99_load_w=float(np.percentile(load, 99)), racks_under=int(members.size),
        extra_none=k_none, extra_capped=k_cap,
        binding_none=f_none.binding if f_none else None, binding_capped=f_cap.binding if f_cap else None,
        over_frac_none=c_none.over_frac, high_cap_frac=c_cap.over_frac, throttled_low_frac=c_cap.throttled_low_frac,
        mean_rack_w=mean_rack_w, pct_more=pct, value=val)


# Bottom-up order of the kinds for planning (power tree first, then the physical and cooling levels).
ORDER: tuple[str, ...] = ("pdu", "rpp", "ups", "utility", "row", "zone", "hall", "site")


def levels_to_plan(inp: PlanInputs, kinds: Sequence[str]) -> list[int]:
    unknown = [k for k in kinds if k not in ORDER]
    if unknown:
        raise ValueError(f"cannot plan level kind {', '.join(unknown)} (choose from {', '.join(ORDER)})")
    return [i for k in ORDER if k in kinds for i, kk in enumerate(inp.level_kind) if kk == k]


def work_of(inp: PlanInputs, level: int) -> float:
    """Relative cost of planning a level (for progress estimates)."""
    return float(inp.members(level).size * inp.loaded_levels(level).size + 10)


def plan(inp: PlanInputs, levels: Sequence[int], risk: float, n_minus_1: bool = False, seed: int = 0,
         costs: Costs | None = None, on_level: Callable[[int, LevelPlan], None] | None = None,
         max_throttle: float | None = None) -> list[LevelPlan]:
    """Plan every level in `levels` (seeded per level, so a level's answer does not depend on the others).

    `max_throttle`, if given, is a further rule for capping: at most this fraction of low-priority energy
    shed at any loaded level."""
    if not 0.0 <= risk < 1.0:
        raise ValueError(f"risk must be in [0, 1), got {risk:g}")
    out = []
    for i in levels:
        lp = plan_level(inp, i, risk, n_minus_1, seed * 1_000_003 + i, costs, max_throttle)
        out.append(lp)
        if on_level is not None:
            on_level(i, lp)
    return out
