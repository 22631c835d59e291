"""The site TOML file: one pydantic model per table, the checks of names between tables, and the compile
into the numpy `Site` (powerplane/site.py).

A file is read in three steps so that one run reports every mistake in it, each as `path: message` with
the path as written in the file (`halls[0].rows[0].racks[1].pdu_a`):
1. the models check every table's keys, types and ranges;
2. a lenient view of the same data (`_SiteNames`, which always parses) holds only the names that tables
   use for each other, so dangling references, duplicate ids and PDUs on the wrong feed are reported
   even in a file that also has type errors;
3. only a file with no mistake at all is compiled into a `Site`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from powerplane.config import TomlFileError, read_toml
from powerplane.grid import GridLimits
from powerplane.site import FEEDS, KIND, PRIORITIES, FloatArray, ServerType, Site
from powerplane.validation import ConfigError, Model, Problems, validate

Id = Annotated[str, Field(min_length=1)]
Priority = Literal["inference-critical", "inference-batch", "training", "best-effort"]
Feed = Literal["A", "B"]
# The Literals spell out the tuples the rest of the product indexes by; they must not drift apart.
assert get_args(Priority) == PRIORITIES and get_args(Feed) == FEEDS


class _Table(Model):
    # TOML has real types: "57.5" or true where a number belongs is a mistake, not something to convert.
    model_config = ConfigDict(strict=True)


# ---- the file's tables ---------------------------------------------------------------------------


class ServerTypeSpec(_Table):
    """[server_types.ID]: one kind of server; every rack names one."""

    gpus: int = Field(ge=1, le=256)
    gpu_model: Id = "H100-SXM"
    gpu_max_w: float = Field(ge=1, le=5000)
    gpu_min_w: float = Field(ge=1, le=5000)
    gpu_idle_w: float = Field(ge=0, le=5000)
    gpu_max_sm_mhz: float = Field(1980.0, ge=1, le=10000)
    gpu_min_sm_mhz: float = Field(345.0, ge=1, le=10000)
    gpu_slowdown_c: float = Field(89.0, ge=0, le=150)
    gpu_shutdown_c: float = Field(92.0, ge=0, le=150)
    other_w: float = Field(ge=0, le=1e6)  # CPUs, NICs, fans, switches attributed to the server, at load
    psu_efficiency: float = Field(gt=0, le=1)
    rating_kw: float = Field(gt=0, le=1e4)  # PSU nameplate of the server

    @field_validator("gpu_min_w")
    @classmethod
    def _min_not_above_max(cls, v: float, info: ValidationInfo) -> float:
        top = info.data.get("gpu_max_w")  # absent when gpu_max_w itself is wrong (reported there)
        if top is not None and v > top:
            raise ValueError(f"{v:g} W is above gpu_max_w {top:g} W")
        return v


class UtilitySpec(_Table):
    """[[feeds]]: a utility feed, the top of one side of the 2N power tree."""

    id: Id
    feed: Feed
    rating_kw: float = Field(gt=0, le=1e6)
    grid: GridLimits | None = None  # [feeds.grid]: what the utility allows of the load on this feed


class FeedLevelSpec(_Table):
    """[[ups]], [[rpps]], [[pdus]]: a UPS lineup, RPP or rack PDU under its parent on the same feed."""

    id: Id
    parent: Id
    rating_kw: float = Field(gt=0, le=1e6)
    feed: None = None  # only so that setting it gets a useful message instead of "unknown key"

    @field_validator("feed", mode="before")
    @classmethod
    def _feed_is_inherited(cls, v: object) -> None:
        raise ValueError("set on the utility feed only; it is inherited from the parent")


class ZoneSpec(_Table):
    """[[halls.zones]]: a cooling zone (CRAH/CDU group); its capacity is a heat figure, not derated."""

    id: Id
    capacity_kw: float = Field(gt=0, le=1e6)
    supply_c: float = Field(18.0, ge=0, le=60)


class RackSpec(_Table):
    """[[halls.rows.racks]]: a rack fed by one PDU per feed, holding `servers` servers of one type."""

    id: Id
    pdu_a: Id
    pdu_b: Id
    server_type: Id
    servers: int = Field(ge=1, le=256)
    priority: Priority = "best-effort"
    priorities: list[Priority] | None = None  # one per server, instead of `priority`
    rating_kw: float = Field(gt=0, le=1e4)
    zone: Id | None = None  # default: the row's zone
    inlet_sensors: int = Field(1, ge=0, le=64)

    @field_validator("priorities")
    @classmethod
    def _one_per_server(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        n = info.data.get("servers")
        if v is not None and n is not None and len(v) != n:
            raise ValueError(f"expected {n} priority classes (one per server), got {len(v)}")
        return v


class RowSpec(_Table):
    id: Id
    zone: Id | None = None
    racks: list[RackSpec] = Field(default_factory=list)
    rating_kw: float = Field(0.0, ge=0)  # 0: bounded by its racks only


class HallSpec(_Table):
    id: Id
    zones: list[ZoneSpec] = Field(default_factory=list, validate_default=True)
    rows: list[RowSpec] = Field(default_factory=list)
    rating_kw: float = Field(0.0, ge=0)  # 0: bounded by its racks only

    @field_validator("zones")
    @classmethod
    def _has_zone(cls, v: list[ZoneSpec]) -> list[ZoneSpec]:
        if not v:
            raise ValueError("a hall needs at least one cooling zone")
        return v


class SiteSpec(_Table):
    """The whole site file."""

    name: Id
    derating: float = Field(0.8, gt=0, le=1)  # breakers run at this share of nameplate continuously
    server_types: dict[str, ServerTypeSpec] = Field(default_factory=dict, validate_default=True)
    feeds: list[UtilitySpec] = Field(default_factory=list)
    ups: list[FeedLevelSpec] = Field(default_factory=list)
    rpps: list[FeedLevelSpec] = Field(default_factory=list)
    pdus: list[FeedLevelSpec] = Field(default_factory=list)
    halls: list[HallSpec] = Field(default_factory=list)
    grid: GridLimits | None = None  # [grid]: what the utility allows of the whole site's load

    @field_validator("server_types")
    @classmethod
    def _has_type(cls, v: dict[str, ServerTypeSpec]) -> dict[str, ServerTypeSpec]:
        if not v:
            raise ValueError("at least one server type is required")
        return v


# ---- names between tables -----------------------------------------------------------------------


def _name(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _keys(v: object) -> list[object]:
    return list(v) if isinstance(v, dict) else []


def _tables(v: object) -> list[object]:
    # A non-table keeps its place (as an empty table) so that later items keep their index in paths.
    return [x if isinstance(x, dict) else {} for x in v] if isinstance(v, list) else []


_Name = Annotated[str | None, BeforeValidator(_name)]
_TABLES = BeforeValidator(_tables)


class _Lenient(BaseModel):
    """Never fails: a wrong or missing value reads as None (the models above report it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _LevelNames(_Lenient):
    id: _Name = None
    parent: _Name = None
    feed: _Name = None


class _RackNames(_Lenient):
    id: _Name = None
    pdu_a: _Name = None
    pdu_b: _Name = None
    server_type: _Name = None
    zone: _Name = None


class _RowNames(_Lenient):
    id: _Name = None
    zone: _Name = None
    racks: Annotated[list[_RackNames], _TABLES] = Field(default_factory=list)


class _HallNames(_Lenient):
    id: _Name = None
    zones: Annotated[list[_LevelNames], _TABLES] = Field(default_factory=list)
    rows: Annotated[list[_RowNames], _TABLES] = Field(default_factory=list)


class _SiteNames(_Lenient):
    name: _Name = None
    server_types: Annotated[list[str], BeforeValidator(_keys)] = Field(default_factory=list)
    feeds: Annotated[list[_LevelNames], _TABLES] = Field(default_factory=list)
    ups: Annotated[list[_LevelNames], _TABLES] = Field(default_factory=list)
    rpps: Annotated[list[_LevelNames], _TABLES] = Field(default_factory=list)
    pdus: Annotated[list[_LevelNames], _TABLES] = Field(default_factory=list)
    halls: Annotated[list[_HallNames], _TABLES] = Field(default_factory=list)


@dataclass
class _Declared:
    kind: str
    where: str  # path of the table that declared the id
    feed: int = -1  # index into FEEDS once known; -1 while unknown (or for levels carrying both feeds)


_CHAIN = (("ups", "ups", "utility"), ("rpps", "rpp", "ups"), ("pdus", "pdu", "rpp"))  # key, kind, parent kind


def _declare_all(n: _SiteNames, problems: Problems) -> dict[str, _Declared]:
    """Every level id of the site (the site's own name included), with duplicates reported."""
    ids: dict[str, _Declared] = {}

    def declare(lid: str | None, kind: str, where: str, feed: str | None = None) -> None:
        if lid is None:
            return
        if lid in ids:
            problems.add(f"{where}.id", f"duplicate id '{lid}' (first used at {ids[lid].where})")
            return
        ids[lid] = _Declared(kind, where, FEEDS.index(feed) if feed in FEEDS else -1)

    declare(n.name, "site", "name")
    for i, u in enumerate(n.feeds):
        declare(u.id, "utility", f"feeds[{i}]", u.feed)
    for key, kind, _ in _CHAIN:
        for i, lv in enumerate(getattr(n, key)):
            declare(lv.id, kind, f"{key}[{i}]")
    for h, hall in enumerate(n.halls):
        declare(hall.id, "hall", f"halls[{h}]")
        for z, zone in enumerate(hall.zones):
            declare(zone.id, "zone", f"halls[{h}].zones[{z}]")
        for r, row in enumerate(hall.rows):
            declare(row.id, "row", f"halls[{h}].rows[{r}]")
            for k, rack in enumerate(row.racks):
                declare(rack.id, "rack", f"halls[{h}].rows[{r}].racks[{k}]")
    return ids


def _check_feed_chain(n: _SiteNames, ids: dict[str, _Declared], problems: Problems) -> None:
    """Every UPS lineup, RPP and PDU names a parent of the level above; each inherits its parent's feed
    (parents are in an earlier list, so one pass in list order carries the feed down)."""
    for key, _, parent_kind in _CHAIN:
        for i, lv in enumerate(getattr(n, key)):
            if lv.parent is None:
                continue
            parent = ids.get(lv.parent)
            if parent is None:
                problems.add(f"{key}[{i}].parent", f"unknown {parent_kind} '{lv.parent}'")
            elif parent.kind != parent_kind:
                problems.add(f"{key}[{i}].parent", f"'{lv.parent}' is a {parent.kind}, expected a {parent_kind}")
            elif lv.id is not None and ids[lv.id].where == f"{key}[{i}]":  # not a duplicate (reported)
                ids[lv.id].feed = parent.feed


def _check_rack(rack: _RackNames, path: str, row_zone: str | None, zones: list[str],
                types: list[str], ids: dict[str, _Declared], problems: Problems) -> None:
    for f, key in enumerate(("pdu_a", "pdu_b")):
        pid: str | None = getattr(rack, key)
        pdu = ids.get(pid) if pid is not None else None
        if pid is None or (pdu is not None and pdu.kind == "pdu" and pdu.feed in (-1, f)):
            continue  # missing (reported by the models), fine, or its own feed chain is broken (reported there)
        if pdu is None or pdu.kind != "pdu":
            problems.add(f"{path}.{key}", f"unknown PDU '{pid}'")
        else:
            problems.add(f"{path}.{key}", f"PDU '{pid}' is on feed {FEEDS[pdu.feed]}, expected feed {FEEDS[f]}")
    if rack.server_type is not None and rack.server_type not in types:
        problems.add(f"{path}.server_type",
                     f"unknown server type '{rack.server_type}' (known: {', '.join(sorted(types)) or 'none'})")
    zone = rack.zone or row_zone
    known = ", ".join(zones) or "none"
    if zone is None:
        problems.add(f"{path}.zone", f"no cooling zone: set zone on the rack or its row (known in this hall: {known})")
    elif zone not in zones:
        problems.add(f"{path}.zone", f"unknown cooling zone '{zone}' in this hall (known: {known})")


def check_names(data: Mapping[str, Any], problems: Problems) -> None:
    """Every reference between tables resolves, ids are unique and each rack's PDUs are on their feeds."""
    n = _SiteNames.model_validate(data if isinstance(data, dict) else {})
    ids = _declare_all(n, problems)
    _check_feed_chain(n, ids, problems)
    for h, hall in enumerate(n.halls):
        zones = [z.id for z in hall.zones if z.id is not None]
        for r, row in enumerate(hall.rows):
            for k, rack in enumerate(row.racks):
                _check_rack(rack, f"halls[{h}].rows[{r}].racks[{k}]", row.zone, zones, n.server_types, ids,
                            problems)


# ---- compile into the numpy Site ---------------------------------------------------------------


@dataclass
class _Build:
    """The level table and the rack and server lists of a Site under construction, in file order."""

    ids: list[str] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    feed: list[int] = field(default_factory=list)
    rated_w: list[float] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    rack_level: list[int] = field(default_factory=list)
    rack_pdu: list[tuple[int, int]] = field(default_factory=list)
    rack_row: list[int] = field(default_factory=list)
    rack_hall: list[int] = field(default_factory=list)
    rack_zone: list[int] = field(default_factory=list)
    rack_inlets: list[int] = field(default_factory=list)
    server_ids: list[str] = field(default_factory=list)
    server_rack: list[int] = field(default_factory=list)
    server_type: list[str] = field(default_factory=list)
    server_prio: list[int] = field(default_factory=list)
    zone_supply_c: dict[str, float] = field(default_factory=dict)

    def level(self, lid: str, kind: str, rating_kw: float, feed: int = -1, parent: int = -1) -> int:
        self.index[lid] = len(self.ids)
        self.ids.append(lid)
        self.kind.append(KIND[kind])
        self.feed.append(feed)
        self.rated_w.append(rating_kw * 1e3)
        self.parent.append(parent)
        return len(self.ids) - 1

    def rack(self, rack: RackSpec, row: int, hall: int, zone: int) -> None:
        r = len(self.rack_level)
        self.rack_level.append(self.level(rack.id, "rack", rack.rating_kw, parent=row))
        # Rows and zones hang under their hall once they hold a rack.
        self.parent[row] = hall
        self.parent[zone] = hall
        self.rack_row.append(row)
        self.rack_hall.append(hall)
        self.rack_zone.append(zone)
        self.rack_pdu.append((self.index[rack.pdu_a], self.index[rack.pdu_b]))
        self.rack_inlets.append(rack.inlet_sensors)
        prios = rack.priorities if rack.priorities is not None else [rack.priority] * rack.servers
        for s, prio in enumerate(prios):
            self.server_ids.append(f"{rack.id}-s{s:02d}")
            self.server_rack.append(r)
            self.server_type.append(rack.server_type)
            self.server_prio.append(PRIORITIES.index(prio))


def _server_type(tid: str, t: ServerTypeSpec) -> ServerType:
    return ServerType(id=tid, gpus=t.gpus, gpu_model=t.gpu_model, gpu_max_w=t.gpu_max_w, gpu_min_w=t.gpu_min_w,
                      gpu_idle_w=t.gpu_idle_w, gpu_max_sm_mhz=t.gpu_max_sm_mhz, gpu_min_sm_mhz=t.gpu_min_sm_mhz,
                      gpu_slowdown_c=t.gpu_slowdown_c, gpu_shutdown_c=t.gpu_shutdown_c, other_w=t.other_w,
                      psu_efficiency=t.psu_efficiency, rating_w=t.rating_kw * 1e3)


def _build(spec: SiteSpec) -> _Build:
    """Levels in the order the Site has always listed them: the site, the power tree list by list, then
    each hall followed by its zones and by each row followed by its racks."""
    b = _Build()
    b.level(spec.name, "site", 0.0)
    for u in spec.feeds:
        b.level(u.id, "utility", u.rating_kw, feed=FEEDS.index(u.feed))
    for key, kind, _ in _CHAIN:
        items: list[FeedLevelSpec] = getattr(spec, key)
        for lv in items:
            parent = b.index[lv.parent]
            b.level(lv.id, kind, lv.rating_kw, feed=b.feed[parent], parent=parent)
    for hall in spec.halls:
        h = b.level(hall.id, "hall", hall.rating_kw)
        zones = {z.id: b.level(z.id, "zone", z.capacity_kw) for z in hall.zones}
        b.zone_supply_c.update({z.id: z.supply_c for z in hall.zones})
        for row in hall.rows:
            r = b.level(row.id, "row", row.rating_kw)
            for rack in row.racks:
                b.rack(rack, r, h, zones[rack.zone or row.zone or ""])
    return b


def compile_site(spec: SiteSpec) -> Site:
    """The numpy Site of a file whose tables and names have all been checked."""
    b = _build(spec)
    types = {tid: _server_type(tid, t) for tid, t in spec.server_types.items()}
    s_rack = np.asarray(b.server_rack, dtype=np.int64)
    n_gpus_per_server = np.array([types[t].gpus for t in b.server_type], dtype=np.int64)
    gpu_server = np.repeat(np.arange(len(b.server_ids)), n_gpus_per_server)
    gpu_slot = np.arange(gpu_server.size) - np.repeat(np.cumsum(n_gpus_per_server) - n_gpus_per_server,
                                                      n_gpus_per_server)
    gpu_rack = s_rack[gpu_server]

    def per_gpu(attr: str) -> FloatArray:
        vals = np.array([getattr(types[t], attr) for t in b.server_type], dtype=np.float64)
        return np.repeat(vals, n_gpus_per_server)

    n_racks = len(b.rack_level)
    rack_gpu_start = np.zeros(n_racks + 1, dtype=np.int64)
    rack_gpu_start[1:] = np.cumsum(np.bincount(gpu_rack, minlength=n_racks))
    rack_server_start = np.zeros(n_racks + 1, dtype=np.int64)
    rack_server_start[1:] = np.cumsum(np.bincount(s_rack, minlength=n_racks))
    server_prio = np.asarray(b.server_prio, dtype=np.int64)
    return Site(
        name=spec.name,
        derating=spec.derating,
        server_types=types,
        level_ids=b.ids,
        level_kind=np.asarray(b.kind, dtype=np.int64),
        level_parent=np.asarray(b.parent, dtype=np.int64),
        level_feed=np.asarray(b.feed, dtype=np.int64),
        level_rated_w=np.asarray(b.rated_w, dtype=np.float64),
        rack_level=np.asarray(b.rack_level, dtype=np.int64),
        rack_pdu=np.asarray(b.rack_pdu, dtype=np.int64).reshape(-1, 2),
        rack_row=np.asarray(b.rack_row, dtype=np.int64),
        rack_hall=np.asarray(b.rack_hall, dtype=np.int64),
        rack_zone=np.asarray(b.rack_zone, dtype=np.int64),
        rack_inlet_sensors=np.asarray(b.rack_inlets, dtype=np.int64),
        server_ids=b.server_ids,
        server_rack=s_rack,
        server_type=b.server_type,
        server_priority=server_prio,
        gpu_server=gpu_server,
        gpu_rack=gpu_rack,
        gpu_slot=gpu_slot.astype(np.int64),
        gpu_priority=server_prio[gpu_server],
        gpu_max_w=per_gpu("gpu_max_w"),
        gpu_min_w=per_gpu("gpu_min_w"),
        gpu_idle_w=per_gpu("gpu_idle_w"),
        rack_gpu_start=rack_gpu_start,
        rack_server_start=rack_server_start,
        zone_supply_c=b.zone_supply_c,
        grid=spec.grid,
        feed_grid={u.id: u.grid for u in spec.feeds if u.grid is not None},
    )


def site_from_dict(data: Mapping[str, Any], source: str = "<site>") -> Site:
    """A Site from the parsed site file, or ConfigError listing every mistake in it."""
    lines: list[str] = []
    spec: SiteSpec | None = None
    try:
        spec = validate(SiteSpec, data)
    except ConfigError as e:
        lines = e.errors
    problems = Problems()
    check_names(data, problems)
    lines += problems.lines
    if spec is not None and not lines and not any(row.racks for hall in spec.halls for row in hall.rows):
        lines.append("halls: the site has no racks")
    if lines or spec is None:
        raise ConfigError(lines, source)
    return compile_site(spec)


def load_site(path: str | Path) -> Site:
    """Load and check a site file; ConfigError lists every mistake in it as `path: message`."""
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError(str(e), str(path)) from None
    return site_from_dict(data, source=str(path))
