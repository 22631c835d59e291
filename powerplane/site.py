"""Site model: the power tree, the cooling tree and every GPU, loaded from one TOML file.

The model is flattened into numpy index arrays so that roll-ups and policies over tens of
thousands of GPUs are a handful of vectorized operations (np.bincount over parent indices),
not Python loops over objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PRIORITIES: tuple[str, ...] = ("inference-critical", "inference-batch", "training", "best-effort")
"""Workload priority classes, most important first; a server's class is its index here."""

FEEDS: tuple[str, ...] = ("A", "B")

# Share of a server's non-GPU nameplate (CPUs, NICs, fans) drawn while its GPUs idle (assumption, the same
# figure the digital twin uses); it rises linearly to all of it with GPU utilization.
OTHER_IDLE_FRAC = 0.5

# Level kinds. Feed-specific kinds carry one side of a 2N pair; the others see the whole load.
KIND_NAMES: tuple[str, ...] = ("site", "utility", "ups", "rpp", "pdu", "hall", "row", "rack", "zone")
KIND = {name: i for i, name in enumerate(KIND_NAMES)}
FEED_KINDS = frozenset({"utility", "ups", "rpp", "pdu"})

Mode = Literal["normal", "A-lost", "B-lost"]
MODES: tuple[Mode, ...] = ("normal", "A-lost", "B-lost")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class SiteError(ValueError):
    """All problems found in a site file, each a line `path: what is wrong`."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(self.errors))


@dataclass(frozen=True)
class ServerType:
    id: str
    gpus: int
    gpu_model: str
    gpu_max_w: float
    gpu_min_w: float
    gpu_idle_w: float
    gpu_max_sm_mhz: float
    gpu_min_sm_mhz: float
    gpu_slowdown_c: float
    gpu_shutdown_c: float
    other_w: float  # CPUs, NICs, fans, switches attributed to the server, at load
    psu_efficiency: float
    rating_w: float  # PSU nameplate of the server


@dataclass
class Site:
    """A loaded, validated site. Index arrays are aligned with the id lists."""

    name: str
    derating: float
    server_types: dict[str, ServerType]
    # Levels (power tree above the rack, the rack itself, rows, halls, zones, the site).
    level_ids: list[str]
    level_kind: IntArray
    level_parent: IntArray  # power-tree parent for feed kinds, row for racks, hall for rows; -1 at top
    level_feed: IntArray  # 0 = A, 1 = B, -1 = carries both feeds
    level_rated_w: FloatArray  # nameplate; cooling capacity for zones
    # Racks.
    rack_level: IntArray  # rack -> its level index
    rack_pdu: IntArray  # (n_racks, 2): level index of the rack PDU on feed A and on feed B
    rack_row: IntArray  # level index
    rack_hall: IntArray  # level index
    rack_zone: IntArray  # level index
    rack_inlet_sensors: IntArray
    # Servers.
    server_ids: list[str]
    server_rack: IntArray  # rack index (not level index)
    server_type: list[str]
    server_priority: IntArray  # index into PRIORITIES
    # GPUs, ordered by rack then server, so a rack's GPUs are a contiguous slice.
    gpu_server: IntArray
    gpu_rack: IntArray
    gpu_slot: IntArray  # index of the GPU within its server
    gpu_priority: IntArray
    gpu_max_w: FloatArray
    gpu_min_w: FloatArray
    gpu_idle_w: FloatArray
    rack_gpu_start: IntArray  # CSR offsets: rack r owns gpus [start[r], start[r+1])
    rack_server_start: IntArray
    zone_supply_c: dict[str, float]  # cooling supply air temperature per zone
    level_index: dict[str, int] = field(default_factory=dict)
    server_other_w: FloatArray = field(default_factory=lambda: np.zeros(0))
    server_psu_eff: FloatArray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.level_index = {lid: i for i, lid in enumerate(self.level_ids)}
        self._rack_of = {self.level_ids[lvl]: r for r, lvl in enumerate(self.rack_level.tolist())}
        # Per-server constants used on every roll-up, computed once.
        self.server_other_w = np.array([self.server_types[t].other_w for t in self.server_type], dtype=np.float64)
        self.server_psu_eff = np.array([self.server_types[t].psu_efficiency for t in self.server_type],
                                       dtype=np.float64)

    # ---- sizes and lookups -------------------------------------------------------------
    @property
    def n_gpus(self) -> int:
        return int(self.gpu_server.size)

    @property
    def n_racks(self) -> int:
        return int(self.rack_level.size)

    @property
    def rack_ids(self) -> list[str]:
        return [self.level_ids[i] for i in self.rack_level]

    def level(self, level_id: str) -> int:
        try:
            return self.level_index[level_id]
        except KeyError:
            raise KeyError(f"unknown level '{level_id}' in site '{self.name}'") from None

    def levels_of_kind(self, kind: str) -> IntArray:
        return np.flatnonzero(self.level_kind == KIND[kind])

    def rack_index(self, rack_id: str) -> int:
        try:
            return self._rack_of[rack_id]  # on every telemetry frame: a dict lookup, not a scan
        except KeyError:
            raise KeyError(f"'{rack_id}' is not a rack of site '{self.name}'") from None

    def gpu_id(self, gpu: int) -> str:
        return f"{self.server_ids[int(self.gpu_server[gpu])]}/gpu{int(self.gpu_slot[gpu])}"

    # ---- tree queries --------------------------------------------------------------------
    def children(self, level_id: str) -> list[str]:
        """Direct children of a level: racks of a PDU or row, PDUs of an RPP, and so on."""
        i = self.level(level_id)
        kids = np.flatnonzero(self.level_parent == i).tolist()
        if self.level_kind[i] == KIND["pdu"]:
            kids = [int(self.rack_level[r]) for r in np.flatnonzero((self.rack_pdu == i).any(axis=1))]
        if self.level_kind[i] == KIND["zone"]:
            kids = [int(self.rack_level[r]) for r in np.flatnonzero(self.rack_zone == i)]
        if self.level_kind[i] == KIND["site"]:
            kids = np.flatnonzero(
                (self.level_parent == -1) & np.isin(self.level_kind, [KIND["utility"], KIND["hall"]])
            ).tolist()
        return [self.level_ids[k] for k in kids]

    def path_to_root(self, gpu: int, feed: str = "A") -> list[str]:
        """GPU -> server -> rack -> PDU -> RPP -> UPS -> utility on one feed."""
        f = FEEDS.index(feed)
        rack = int(self.gpu_rack[gpu])
        out = [self.gpu_id(gpu), self.server_ids[int(self.gpu_server[gpu])], self.level_ids[self.rack_level[rack]]]
        node = int(self.rack_pdu[rack, f])
        while node >= 0:
            out.append(self.level_ids[node])
            node = int(self.level_parent[node])
        return out

    # ---- limits ---------------------------------------------------------------------------
    def feed_share(self, mode: Mode) -> FloatArray:
        """Fraction of every rack's load drawn on feed A and on feed B."""
        return {
            "normal": np.array([0.5, 0.5]),
            "A-lost": np.array([0.0, 1.0]),
            "B-lost": np.array([1.0, 0.0]),
        }[mode]

    def limits_w(self, mode: Mode = "normal") -> tuple[FloatArray, FloatArray]:
        """(rated, derated) limit of every level in a feed state.

        Feed-specific levels keep their own rating; a lost feed's levels get 0 (they carry nothing).
        A rack can draw at most what its live PDUs can deliver, capped by its own nameplate. Rows,
        halls and the site are bounded by the sum of their racks. Zones are cooling capacity, not
        derated: it is a heat-removal figure, not a breaker.
        """
        dark = np.zeros(len(self.level_ids), dtype=bool)
        if mode != "normal":
            dark = self.level_feed == FEEDS.index(mode[0])
        return self.limits_dark_w(dark)

    def dark_below(self, dark: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Feed levels that carry nothing because they or a level above them on their feed are dark."""
        out = dark.copy()
        for kind in ("ups", "rpp", "pdu"):  # top-down, so darkness flows from a utility to its PDUs
            lv = self.levels_of_kind(kind)
            parents = self.level_parent[lv]
            ok = parents >= 0
            out[lv[ok]] |= out[parents[ok]]
        return out

    def limits_dark_w(self, dark: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
        """(rated, derated) limits when the given feed levels (and everything below them) are dark:
        a whole feed, one UPS lineup, one RPP or one PDU lost."""
        rated = self.level_rated_w.copy()
        rated[self.dark_below(dark)] = 0.0
        rack_lvls = self.rack_level
        pdu_cap = rated[self.rack_pdu]  # (n_racks, 2)
        rack_rated = np.minimum(self.level_rated_w[rack_lvls], pdu_cap.sum(axis=1))
        rated[rack_lvls] = rack_rated
        for kind in ("row", "hall"):
            lv = self.levels_of_kind(kind)
            member = self.rack_row if kind == "row" else self.rack_hall
            sums = np.bincount(member, weights=rack_rated, minlength=len(self.level_ids))
            rated[lv] = np.minimum(np.where(self.level_rated_w[lv] > 0, self.level_rated_w[lv], np.inf), sums[lv])
        site_lv = self.levels_of_kind("site")
        utils = self.levels_of_kind("utility")
        # The site can draw no more than its racks can take nor than its live utility feeds deliver.
        rated[site_lv] = min(rack_rated.sum(), rated[utils].sum()) if utils.size else rack_rated.sum()
        derated = rated * self.derating
        zones = self.levels_of_kind("zone")
        derated[zones] = rated[zones]
        return rated, derated

    # ---- roll-up --------------------------------------------------------------------------
    def rollup_w(self, rack_power_w: FloatArray, mode: Mode = "normal") -> FloatArray:
        """Load of every level from the input power of every rack (NaN racks count as unknown)."""
        n = len(self.level_ids)
        out = np.zeros(n)
        share = self.feed_share(mode)
        out[self.rack_level] = rack_power_w
        for f in (0, 1):
            out += np.bincount(self.rack_pdu[:, f], weights=rack_power_w * share[f], minlength=n)
        out = self.feed_up(out)
        out += np.bincount(self.rack_row, weights=rack_power_w, minlength=n)
        out += np.bincount(self.rack_hall, weights=rack_power_w, minlength=n)
        out += np.bincount(self.rack_zone, weights=rack_power_w, minlength=n)
        out[self.levels_of_kind("site")] = rack_power_w.sum()
        return out

    def feed_up(self, values: FloatArray) -> FloatArray:
        """Add every PDU's, RPP's and UPS lineup's value into its parent on the feed chain, deepest kinds
        first, so each RPP, lineup and utility ends up with its own value plus everything beneath it."""
        out = np.array(values, dtype=np.float64)
        n = len(self.level_ids)
        for kind in ("pdu", "rpp", "ups"):
            lv = self.levels_of_kind(kind)
            parents = self.level_parent[lv]
            ok = parents >= 0
            out += np.bincount(parents[ok], weights=out[lv][ok], minlength=n)
        return out

    def server_input_w(self, gpu_power_w: FloatArray) -> FloatArray:
        """Wall power of every server: (GPUs + other load) / PSU efficiency."""
        gsum = np.bincount(self.gpu_server, weights=gpu_power_w, minlength=len(self.server_ids))
        return np.asarray((gsum + self.server_other_w) / self.server_psu_eff, dtype=np.float64)

    def rack_input_w(self, rack: int, gpu_power_w: FloatArray, gpu_util: FloatArray | None = None) -> float:
        """Wall power of one rack from its own GPUs' readings (the slice a telemetry frame carries).

        With utilization, a server's other load (CPUs, NICs, fans) follows its GPUs' activity between
        OTHER_IDLE_FRAC of its nameplate and all of it; without, it is taken at nameplate (conservative)."""
        s0, s1 = int(self.rack_server_start[rack]), int(self.rack_server_start[rack + 1])
        g0 = int(self.rack_gpu_start[rack])
        local = self.gpu_server[g0:g0 + gpu_power_w.size] - s0
        gsum = np.bincount(local, weights=gpu_power_w, minlength=s1 - s0)
        other = self.server_other_w[s0:s1]
        if gpu_util is not None:
            u = np.where(np.isfinite(gpu_util), gpu_util, 1.0)  # unknown activity: nameplate, conservative
            n = np.bincount(local, minlength=s1 - s0)
            busy = np.bincount(local, weights=u, minlength=s1 - s0) / np.maximum(n, 1)
            other = other * (OTHER_IDLE_FRAC + (1.0 - OTHER_IDLE_FRAC) * busy)
        return float(((gsum + other) / self.server_psu_eff[s0:s1]).sum())


# ======================================================================================
# Loading and validation
# ======================================================================================


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}")


def _num(errs: _Errors, obj: Mapping[str, Any], key: str, path: str, *, lo: float = 0.0,
         hi: float = float("inf"), required: bool = True, default: float | None = None,
         open_lo: bool = False) -> float:
    if key not in obj:
        if required:
            errs.add(f"{path}.{key}", "missing")
        return float(default if default is not None else 0.0)
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        errs.add(f"{path}.{key}", f"expected a number, got {type(v).__name__} {v!r}")
        return 0.0
    fv = float(v)
    if (fv <= lo if open_lo else fv < lo) or fv > hi:
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        errs.add(f"{path}.{key}", f"{fv:g} out of range {bound}")
    return fv


def _str(errs: _Errors, obj: Mapping[str, Any], key: str, path: str, *, required: bool = True,
         default: str = "") -> str:
    if key not in obj:
        if required:
            errs.add(f"{path}.{key}", "missing")
        return default
    v = obj[key]
    if not isinstance(v, str) or not v:
        errs.add(f"{path}.{key}", f"expected a non-empty string, got {v!r}")
        return default
    return v


def _list(errs: _Errors, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    v = obj.get(key, [])
    if not isinstance(v, list):
        errs.add(f"{path}.{key}", f"expected a list of tables, got {type(v).__name__}")
        return []
    return v


def _unknown_keys(errs: _Errors, obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for k in obj:
        if k not in allowed:
            errs.add(f"{path}.{k}", "unknown field")


def load_site(path: str | Path) -> Site:
    """Load and validate a site file; raise SiteError listing every problem with its path."""
    from powerplane.config import TomlFileError, read_toml

    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise SiteError(str(path), [str(e)]) from None
    return site_from_dict(data, source=str(path))


def site_from_dict(data: Mapping[str, Any], source: str = "<site>") -> Site:
    errs = _Errors()
    _unknown_keys(errs, data, {"name", "derating", "server_types", "feeds", "ups", "rpps", "pdus",
                               "halls", "hall_rating_kw"}, "site")
    name = _str(errs, data, "name", "site", default="site")
    derating = _num(errs, data, "derating", "site", lo=0.0, hi=1.0, required=False, default=0.8,
                    open_lo=True)

    # Server types.
    stypes: dict[str, ServerType] = {}
    raw_types = data.get("server_types", {})
    if not isinstance(raw_types, dict) or not raw_types:
        errs.add("server_types", "at least one server type is required")
        raw_types = {}
    st_fields = {"gpus", "gpu_model", "gpu_max_w", "gpu_min_w", "gpu_idle_w", "gpu_max_sm_mhz",
                 "gpu_min_sm_mhz", "gpu_slowdown_c", "gpu_shutdown_c", "other_w", "psu_efficiency",
                 "rating_kw"}
    for tid, t in raw_types.items():
        tp = f"server_types.{tid}"
        if not isinstance(t, dict):
            errs.add(tp, "expected a table")
            continue
        _unknown_keys(errs, t, st_fields, tp)
        gpus = _num(errs, t, "gpus", tp, lo=1, hi=256)
        if gpus != int(gpus):
            errs.add(f"{tp}.gpus", f"expected a whole number, got {gpus}")
        st = ServerType(
            id=tid,
            gpus=int(gpus),
            gpu_model=_str(errs, t, "gpu_model", tp, required=False, default="H100-SXM"),
            gpu_max_w=_num(errs, t, "gpu_max_w", tp, lo=1, hi=5000),
            gpu_min_w=_num(errs, t, "gpu_min_w", tp, lo=1, hi=5000),
            gpu_idle_w=_num(errs, t, "gpu_idle_w", tp, lo=0, hi=5000),
            gpu_max_sm_mhz=_num(errs, t, "gpu_max_sm_mhz", tp, lo=1, hi=10000, required=False, default=1980),
            gpu_min_sm_mhz=_num(errs, t, "gpu_min_sm_mhz", tp, lo=1, hi=10000, required=False, default=345),
            gpu_slowdown_c=_num(errs, t, "gpu_slowdown_c", tp, lo=0, hi=150, required=False, default=89),
            gpu_shutdown_c=_num(errs, t, "gpu_shutdown_c", tp, lo=0, hi=150, required=False, default=92),
            other_w=_num(errs, t, "other_w", tp, lo=0, hi=1e6),
            psu_efficiency=_num(errs, t, "psu_efficiency", tp, lo=0.0, hi=1.0, open_lo=True),
            rating_w=_num(errs, t, "rating_kw", tp, lo=0.0, hi=1e4, open_lo=True) * 1e3,
        )
        if st.gpu_min_w > st.gpu_max_w:
            errs.add(f"{tp}.gpu_min_w", f"{st.gpu_min_w:g} W is above gpu_max_w {st.gpu_max_w:g} W")
        stypes[tid] = st

    level_ids: list[str] = []
    kind: list[int] = []
    parent_ids: list[tuple[str | None, str, str]] = []  # (parent id, expected parent kind, path)
    feed: list[int] = []
    rated: list[float] = []
    seen: dict[str, str] = {}

    def add_level(lid: str, k: str, f: int, r: float, path: str) -> int:
        if lid in seen:
            errs.add(f"{path}.id", f"duplicate id '{lid}' (first used at {seen[lid]})")
        seen.setdefault(lid, path)
        level_ids.append(lid)
        kind.append(KIND[k])
        feed.append(f)
        rated.append(r)
        parent_ids.append((None, "", path))
        return len(level_ids) - 1

    add_level(name, "site", -1, 0.0, "site")

    chain = (("feeds", "utility", None), ("ups", "ups", "utility"), ("rpps", "rpp", "ups"),
             ("pdus", "pdu", "rpp"))
    for key, k, pkind in chain:
        for i, item in enumerate(_list(errs, data, key, "site")):
            ip = f"{key}[{i}]"
            if not isinstance(item, dict):
                errs.add(ip, "expected a table")
                continue
            _unknown_keys(errs, item, {"id", "feed", "parent", "rating_kw"}, ip)
            lid = _str(errs, item, "id", ip, default=f"?{ip}")
            f = -1
            if pkind is None:
                fv = _str(errs, item, "feed", ip, default="A")
                if fv not in FEEDS:
                    errs.add(f"{ip}.feed", f"expected one of {', '.join(FEEDS)}, got '{fv}'")
                f = FEEDS.index(fv) if fv in FEEDS else 0
            elif "feed" in item:
                errs.add(f"{ip}.feed", "set on the utility feed only; it is inherited from the parent")
            r = _num(errs, item, "rating_kw", ip, lo=0.0, hi=1e6, open_lo=True) * 1e3
            idx = add_level(lid, k, f, r, ip)
            if pkind is not None:
                parent_ids[idx] = (_str(errs, item, "parent", ip, default=""), pkind, f"{ip}.parent")

    # Halls, zones, rows, racks.
    rack_level: list[int] = []
    rack_pdu: list[tuple[int, int]] = []
    rack_row: list[int] = []
    rack_hall: list[int] = []
    rack_zone: list[int] = []
    rack_inlets: list[int] = []
    server_ids: list[str] = []
    server_rack: list[int] = []
    server_type: list[str] = []
    server_prio: list[int] = []
    pending_pdu: list[tuple[int, str, str, int]] = []  # rack index, pdu id, path, feed
    pending_zone: list[tuple[int, str, str, dict[str, int]]] = []
    zone_supply_c: dict[str, float] = {}

    for hi_, hall in enumerate(_list(errs, data, "halls", "site")):
        hp = f"halls[{hi_}]"
        if not isinstance(hall, dict):
            errs.add(hp, "expected a table")
            continue
        _unknown_keys(errs, hall, {"id", "zones", "rows", "rating_kw"}, hp)
        hall_idx = add_level(_str(errs, hall, "id", hp, default=f"?{hp}"), "hall", -1,
                             _num(errs, hall, "rating_kw", hp, required=False, default=0.0) * 1e3, hp)
        zones: dict[str, int] = {}
        for zi, zone in enumerate(_list(errs, hall, "zones", hp)):
            zp = f"{hp}.zones[{zi}]"
            if not isinstance(zone, dict):
                errs.add(zp, "expected a table")
                continue
            _unknown_keys(errs, zone, {"id", "capacity_kw", "supply_c"}, zp)
            zid = _str(errs, zone, "id", zp, default=f"?{zp}")
            zidx = add_level(zid, "zone", -1, _num(errs, zone, "capacity_kw", zp, lo=0, hi=1e6,
                                                   open_lo=True) * 1e3, zp)
            zone_supply_c[zid] = _num(errs, zone, "supply_c", zp, lo=0, hi=60, required=False, default=18.0)
            parent_ids[zidx] = (None, "", zp)
            zones[zid] = zidx
        if not zones:
            errs.add(f"{hp}.zones", "a hall needs at least one cooling zone")
        for ri, row in enumerate(_list(errs, hall, "rows", hp)):
            rp = f"{hp}.rows[{ri}]"
            if not isinstance(row, dict):
                errs.add(rp, "expected a table")
                continue
            _unknown_keys(errs, row, {"id", "zone", "racks", "rating_kw"}, rp)
            row_idx = add_level(_str(errs, row, "id", rp, default=f"?{rp}"), "row", -1,
                                _num(errs, row, "rating_kw", rp, required=False, default=0.0) * 1e3, rp)
            row_zone = _str(errs, row, "zone", rp, required=False, default="")
            for ki, rack in enumerate(_list(errs, row, "racks", rp)):
                kp = f"{rp}.racks[{ki}]"
                if not isinstance(rack, dict):
                    errs.add(kp, "expected a table")
                    continue
                _unknown_keys(errs, rack, {"id", "pdu_a", "pdu_b", "server_type", "servers", "priority",
                                           "priorities", "rating_kw", "zone", "inlet_sensors"}, kp)
                rid = _str(errs, rack, "id", kp, default=f"?{kp}")
                ridx = add_level(rid, "rack", -1, _num(errs, rack, "rating_kw", kp, lo=0, hi=1e4,
                                                      open_lo=True) * 1e3, kp)
                rack_no = len(rack_level)
                rack_level.append(ridx)
                rack_row.append(row_idx)
                rack_hall.append(hall_idx)
                rack_pdu.append((-1, -1))
                rack_zone.append(-1)
                for f, key in enumerate(("pdu_a", "pdu_b")):
                    pending_pdu.append((rack_no, _str(errs, rack, key, kp, default=""), f"{kp}.{key}", f))
                pending_zone.append((rack_no, str(rack.get("zone", row_zone)), f"{kp}.zone", zones))
                rack_inlets.append(int(_num(errs, rack, "inlet_sensors", kp, lo=0, hi=64, required=False,
                                            default=1)))
                tid = _str(errs, rack, "server_type", kp, default="")
                if tid and tid not in stypes:
                    errs.add(f"{kp}.server_type", f"unknown server type '{tid}'"
                             f" (known: {', '.join(sorted(stypes)) or 'none'})")
                n_srv = _num(errs, rack, "servers", kp, lo=1, hi=256)
                n_srv_i = int(n_srv)
                prio = _str(errs, rack, "priority", kp, required=False, default="best-effort")
                prios: list[Any] = rack.get("priorities", [prio] * n_srv_i)
                if not isinstance(prios, list) or len(prios) != n_srv_i:
                    errs.add(f"{kp}.priorities", f"expected a list of {n_srv_i} priority classes")
                    prios = [prio] * n_srv_i
                for si in range(n_srv_i):
                    pcls = prios[si]
                    if pcls not in PRIORITIES:
                        where = f"{kp}.priorities[{si}]" if "priorities" in rack else f"{kp}.priority"
                        errs.add(where, f"unknown priority class '{pcls}' (known: {', '.join(PRIORITIES)})")
                        if "priorities" not in rack:
                            prios = [PRIORITIES[-1]] * n_srv_i
                        pcls = PRIORITIES[-1]
                    server_ids.append(f"{rid}-s{si:02d}")
                    server_rack.append(rack_no)
                    server_type.append(tid)
                    server_prio.append(PRIORITIES.index(pcls))

    # Resolve references now that every id is known.
    index = {lid: i for i, lid in enumerate(level_ids)}
    parent = np.full(len(level_ids), -1, dtype=np.int64)
    for i, (pid, pkind, ppath) in enumerate(parent_ids):
        if pid is None:
            continue
        if pid not in index:
            errs.add(ppath, f"unknown {pkind} '{pid}'")
        elif kind[index[pid]] != KIND[pkind]:
            errs.add(ppath, f"'{pid}' is a {KIND_NAMES[kind[index[pid]]]}, expected a {pkind}")
        else:
            parent[i] = index[pid]
    # Feeds flow down the chain (parents are always declared in an earlier list).
    for i in range(len(level_ids)):
        if parent[i] >= 0 and KIND_NAMES[kind[i]] in FEED_KINDS:
            feed[i] = feed[int(parent[i])]
    for rack_no, pid, ppath, f in pending_pdu:
        if not pid:
            continue
        if pid not in index or kind[index[pid]] != KIND["pdu"]:
            errs.add(ppath, f"unknown PDU '{pid}'")
            continue
        if feed[index[pid]] < 0:
            continue  # the PDU's own parent chain is broken (reported there), so its feed is unknown
        if feed[index[pid]] != f:
            errs.add(ppath, f"PDU '{pid}' is on feed {FEEDS[feed[index[pid]]]}, expected feed {FEEDS[f]}")
            continue
        a, b = rack_pdu[rack_no]
        rack_pdu[rack_no] = (index[pid], b) if f == 0 else (a, index[pid])
    for rack_no, zid, zpath, zones in pending_zone:
        if zid not in zones:
            errs.add(zpath, f"unknown cooling zone '{zid}' in this hall (known: {', '.join(zones) or 'none'})")
        else:
            rack_zone[rack_no] = zones[zid]
    if not rack_level and not errs.items:
        errs.add("halls", "the site has no racks")
    if errs.items:
        raise SiteError(source, errs.items)

    # Parent links for the cooling/physical hierarchy: rows -> hall, zones -> hall.
    for r, row_idx in enumerate(rack_row):
        parent[rack_level[r]] = row_idx
        parent[row_idx] = rack_hall[r]
    for zones in {id(z): z for _, _, _, z in pending_zone}.values():
        for zidx in zones.values():
            hall_of = [rack_hall[r] for r in range(len(rack_zone)) if rack_zone[r] == zidx]
            if hall_of:
                parent[zidx] = hall_of[0]

    s_rack = np.asarray(server_rack, dtype=np.int64)
    n_gpus_per_server = np.array([stypes[t].gpus for t in server_type], dtype=np.int64)
    gpu_server = np.repeat(np.arange(len(server_ids)), n_gpus_per_server)
    gpu_slot = np.arange(gpu_server.size) - np.repeat(np.cumsum(n_gpus_per_server) - n_gpus_per_server,
                                                      n_gpus_per_server)
    gpu_rack = s_rack[gpu_server]

    def per_gpu(attr: str) -> FloatArray:
        vals = np.array([getattr(stypes[t], attr) for t in server_type], dtype=np.float64)
        return np.repeat(vals, n_gpus_per_server)

    n_racks = len(rack_level)
    rack_gpu_start = np.zeros(n_racks + 1, dtype=np.int64)
    rack_gpu_start[1:] = np.cumsum(np.bincount(gpu_rack, minlength=n_racks))
    rack_server_start = np.zeros(n_racks + 1, dtype=np.int64)
    rack_server_start[1:] = np.cumsum(np.bincount(s_rack, minlength=n_racks))
    return Site(
        name=name,
        derating=derating,
        server_types=stypes,
        level_ids=level_ids,
        level_kind=np.asarray(kind, dtype=np.int64),
        level_parent=parent,
        level_feed=np.asarray(feed, dtype=np.int64),
        level_rated_w=np.asarray(rated, dtype=np.float64),
        rack_level=np.asarray(rack_level, dtype=np.int64),
        rack_pdu=np.asarray(rack_pdu, dtype=np.int64).reshape(-1, 2),
        rack_row=np.asarray(rack_row, dtype=np.int64),
        rack_hall=np.asarray(rack_hall, dtype=np.int64),
        rack_zone=np.asarray(rack_zone, dtype=np.int64),
        rack_inlet_sensors=np.asarray(rack_inlets, dtype=np.int64),
        server_ids=server_ids,
        server_rack=s_rack,
        server_type=server_type,
        server_priority=np.asarray(server_prio, dtype=np.int64),
        gpu_server=gpu_server,
        gpu_rack=gpu_rack,
        gpu_slot=gpu_slot.astype(np.int64),
        gpu_priority=np.asarray(server_prio, dtype=np.int64)[gpu_server],
        gpu_max_w=per_gpu("gpu_max_w"),
        gpu_min_w=per_gpu("gpu_min_w"),
        gpu_idle_w=per_gpu("gpu_idle_w"),
        rack_gpu_start=rack_gpu_start,
        rack_server_start=rack_server_start,
        zone_supply_c=zone_supply_c,
    )
