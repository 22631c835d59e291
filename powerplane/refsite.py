"""The 100 MW reference site, generated from a few parameters instead of written by hand.

Default shape: 4 halls x 16 rows x 16 racks = 1,024 GB200 NVL72-class racks (73,728 GPUs), 2N power
(feeds A and B), one cooling zone per pair of rows. Every level of both trees has a rating, and the
ratings are oversubscribed the way real sites are: with both feeds up the whole site can run at full GPU
power, but each feed alone (one utility feed, its UPS lineups, busways and rack PDUs) can carry only
about three quarters of the site's peak at nameplate, and about 61% of it at the 80% continuous derating.
Losing a feed therefore forces shedding, which the power brake can always achieve (every GPU at
``gpu_min_w`` draws about half of the peak).

Every figure is a field of :class:`RefSiteParams`; its docstring gives each default's source in
``/work/shared/BRIEF.md`` or says "assumption". Ratings of shared levels are given per rack they serve
(``*_kw_per_rack``) so that they scale when the site is resized; only the utility feed is absolute.

The generator is deterministic: the priority mix is spread over racks (or servers) by a fixed
interleave, no randomness is involved. ``reference_site_dict`` returns the same structure a site TOML
file loads to, so ``to_toml(reference_site_dict())`` is a valid site file for ``load_site``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from powerplane.site import PRIORITIES, Site
from powerplane.site_file import site_from_dict

__all__ = ["RefSiteParams", "reference_site", "reference_site_dict", "to_toml"]


@dataclass(frozen=True)
class RefSiteParams:
    """Parameters of the generated reference site. Defaults describe the 100 MW reference site.

    Shape
      halls, rows_per_hall, racks_per_row: 4 x 16 x 16 = 1,024 racks (assumption; sized so that the
        GPU count, 73,728, is in the class of Meta's 83K-GB200 site in BRIEF.md "The problem").
      trays_per_rack, gpus_per_tray: 18 x 4 = 72 GPUs, the NVL72 rack (BRIEF.md: "GB200 ... NVL72").
        Each compute tray is one ``server`` of the site model.

    GPU (GB200-class)
      gpu_max_w 1200: GB200 rated power (BRIEF.md physical constants, "GB200 1200 W rated").
      gpu_min_w 400: lowest settable power limit (assumption; H100's min/max ratio is 200/700, BRIEF).
      gpu_idle_w 100: idle with no work (assumption; H100 idles at 60-70 W bare, BRIEF).
      gpu_max_sm_mhz, gpu_min_sm_mhz, gpu_slowdown_c, gpu_shutdown_c: the H100 figures from BRIEF.md
        (assumption: no GB200 figure in BRIEF).

    Compute tray
      other_w_per_tray 1800: 2 Grace CPUs with memory, NICs/DPU, the tray's share of the 9 NVLink
        switch trays, fans and pumps, at load (assumption). Chosen with psu_efficiency so that a rack at
        full GPU power draws 18 x (4 x 1200 + 1800) / 0.95 = 125.05 kW at the wall, inside the
        NVL72 ~120-132 kW of BRIEF.md.
      psu_efficiency 0.95: rack power shelves plus conversion (assumption).
      tray_rating_kw 7.5: compute tray nameplate, above its 6.95 kW peak (assumption).

    Power tree (per feed; 2N: every level below exists once on feed A and once on feed B)
      rack_rating_kw 132: rack nameplate, top of the NVL72 120-132 kW range (BRIEF.md).
      pdu_rating_kw 115: one rack PDU / power whip per rack per feed, 415 V three-phase 160 A
        (sqrt(3) x 415 x 160 = 115 kW; assumption). Carries the rack's 62.5 kW half-share easily; alone
        it carries 115 kW nameplate / 92 kW derated of the rack's 125 kW peak.
      rpp_kw_per_rack 100: one RPP/busway per row per feed, rated 100 kW per rack it serves (1.6 MW for
        16 racks). BRIEF.md's cost table provisions 50 kW/rack and 300 kW/row; scaled to 125 kW racks we
        provision 80% of rack peak per rack, the ratio of Meta's GB200 provisioning, 960 W of 1200 W
        (BRIEF.md, unconfirmed).
      rows_per_ups 2, ups_kw_per_rack 95: one UPS lineup per two rows per feed (8 per hall, 32 per
        feed), rated 95 kW per rack served (3.04 MW); more oversubscribed than the RPP because more
        racks share it (assumption, in the spirit of the multi-level oversubscription of Meta Dynamo
        and Thunderbolt in BRIEF.md).
      utility_mw 100: one utility feed per side, 100 MW nameplate, the "100 MW" of a 100 MW-class site
        (BRIEF.md). Absolute, not scaled with the rack count: lower it when you shrink the site.
      derating 0.8: breakers run at <= 80% continuous (BRIEF.md "Levels of a site").

    Cooling tree
      rows_per_zone 2, zone_kw_per_rack 110: one cooling zone (CDU/CRAH group) per row pair, capacity
        110 kW per rack served (3.52 MW for 32 racks): below the zone's 4.0 MW peak heat on purpose,
        like the lab site's CRAH, so that cooling can bind before power (assumption).
      supply_c 20.0: cooling supply temperature, inside ASHRAE's recommended 18-27 C (BRIEF.md).
      inlet_sensors 2 per rack (assumption).

    Workload
      priority_mix: fraction of racks (or trays) per class of powerplane.site.PRIORITIES; default
        20% inference-critical, 20% inference-batch, 50% training, 10% best-effort (assumption).
        Fractions must sum to 1; counts are rounded by largest remainder and spread evenly over the
        site in hall, row, rack order, so every row gets a mix.
      priority_granularity "rack": an NVL72 rack is one NVLink domain, so a job usually owns whole
        racks (assumption); "server" mixes classes within racks.
    """

    name: str = "ref-100mw"
    halls: int = 4
    rows_per_hall: int = 16
    racks_per_row: int = 16
    trays_per_rack: int = 18
    gpus_per_tray: int = 4
    gpu_model: str = "GB200"
    gpu_max_w: float = 1200.0
    gpu_min_w: float = 400.0
    gpu_idle_w: float = 100.0
    gpu_max_sm_mhz: float = 1980.0
    gpu_min_sm_mhz: float = 345.0
    gpu_slowdown_c: float = 89.0
    gpu_shutdown_c: float = 92.0
    other_w_per_tray: float = 1800.0
    psu_efficiency: float = 0.95
    tray_rating_kw: float = 7.5
    rack_rating_kw: float = 132.0
    pdu_rating_kw: float = 115.0
    rpp_kw_per_rack: float = 100.0
    rows_per_ups: int = 2
    ups_kw_per_rack: float = 95.0
    utility_mw: float = 100.0
    derating: float = 0.8
    rows_per_zone: int = 2
    zone_kw_per_rack: float = 110.0
    supply_c: float = 20.0
    inlet_sensors: int = 2
    priority_mix: tuple[tuple[str, float], ...] = (
        ("inference-critical", 0.2),
        ("inference-batch", 0.2),
        ("training", 0.5),
        ("best-effort", 0.1),
    )
    priority_granularity: Literal["rack", "server"] = "rack"

    def __post_init__(self) -> None:
        problems: list[str] = []
        for f in ("halls", "rows_per_hall", "racks_per_row", "trays_per_rack", "gpus_per_tray",
                  "rows_per_ups", "rows_per_zone"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{f} must be a whole number >= 1, got {v!r}")
        if self.inlet_sensors < 0:
            problems.append(f"inlet_sensors must be >= 0, got {self.inlet_sensors!r}")
        for f in ("gpu_max_w", "gpu_min_w", "other_w_per_tray", "tray_rating_kw", "rack_rating_kw",
                  "pdu_rating_kw", "rpp_kw_per_rack", "ups_kw_per_rack", "utility_mw", "zone_kw_per_rack"):
            if not getattr(self, f) > 0:
                problems.append(f"{f} must be > 0, got {getattr(self, f)!r}")
        if not 0 < self.psu_efficiency <= 1:
            problems.append(f"psu_efficiency must be in (0, 1], got {self.psu_efficiency!r}")
        if not 0 < self.derating <= 1:
            problems.append(f"derating must be in (0, 1], got {self.derating!r}")
        if self.gpu_min_w > self.gpu_max_w:
            problems.append(f"gpu_min_w {self.gpu_min_w} is above gpu_max_w {self.gpu_max_w}")
        names = [n for n, _ in self.priority_mix]
        for n, frac in self.priority_mix:
            if n not in PRIORITIES:
                problems.append(f"priority_mix: unknown class '{n}' (known: {', '.join(PRIORITIES)})")
            if not frac >= 0:
                problems.append(f"priority_mix: fraction of '{n}' must be >= 0, got {frac!r}")
        if len(set(names)) != len(names):
            problems.append("priority_mix: a class is listed twice")
        total = sum(frac for _, frac in self.priority_mix)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            problems.append(f"priority_mix: fractions must sum to 1, got {total:g}")
        if self.priority_granularity not in ("rack", "server"):
            problems.append("priority_granularity must be 'rack' or 'server', "
                            f"got {self.priority_granularity!r}")
        if problems:
            raise ValueError("invalid RefSiteParams: " + "; ".join(problems))

    # ---- derived figures (what the docstring promises) --------------------------------------
    @property
    def n_racks(self) -> int:
        return self.halls * self.rows_per_hall * self.racks_per_row

    @property
    def n_gpus(self) -> int:
        return self.n_racks * self.trays_per_rack * self.gpus_per_tray

    @property
    def rack_peak_w(self) -> float:
        """Wall power of one rack with every GPU at gpu_max_w."""
        tray_dc = self.gpus_per_tray * self.gpu_max_w + self.other_w_per_tray
        return self.trays_per_rack * tray_dc / self.psu_efficiency


def _spread(n: int, fractions: Sequence[float]) -> list[int]:
    """Class index for each of n items: counts by largest remainder, interleaved evenly.

    The j-th item of class k sits at position (j + 0.5) / count_k of the sequence; merging the classes by
    that position (ties by class order) spreads each class uniformly. No randomness.
    """
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(fractions)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    keyed = [((j + 0.5) / c, k) for k, c in enumerate(counts) for j in range(c)]
    keyed.sort()
    return [k for _, k in keyed]


def _kw(x: float) -> float:
    """A rating in kW, rounded to the watt so the TOML stays readable."""
    return round(float(x), 3)


_FEEDS = ("a", "b")  # the two sides of the 2N power tree, as they appear in ids


def _ups_id(s: str, h: int, row: int, p: RefSiteParams) -> str:
    """The UPS lineup of feed side s serving row `row` (1-based) of hall h."""
    return f"ups-{s}-h{h}-{(row - 1) // p.rows_per_ups + 1:02d}"


def _zone_id(h: int, row: int, p: RefSiteParams) -> str:
    return f"zone-h{h}-{(row - 1) // p.rows_per_zone + 1:02d}"


def _pdu_id(s: str, h: int, row: int, k: int) -> str:
    return f"pdu-{s}-h{h}-{row:02d}-{k:02d}"


def _server_type(p: RefSiteParams) -> dict[str, Any]:
    return {
        "gpus": p.gpus_per_tray,
        "gpu_model": p.gpu_model,
        "gpu_max_w": float(p.gpu_max_w),
        "gpu_min_w": float(p.gpu_min_w),
        "gpu_idle_w": float(p.gpu_idle_w),
        "gpu_max_sm_mhz": float(p.gpu_max_sm_mhz),
        "gpu_min_sm_mhz": float(p.gpu_min_sm_mhz),
        "gpu_slowdown_c": float(p.gpu_slowdown_c),
        "gpu_shutdown_c": float(p.gpu_shutdown_c),
        "other_w": float(p.other_w_per_tray),
        "psu_efficiency": float(p.psu_efficiency),
        "rating_kw": _kw(p.tray_rating_kw),
    }


def _power_tree(p: RefSiteParams) -> dict[str, list[dict[str, Any]]]:
    """Utility feeds, UPS lineups (one per rows_per_ups rows), RPPs (one per row) and rack PDUs (one per
    rack), each once per feed side; every list in hall, row, rack order."""
    halls, rows, racks = range(1, p.halls + 1), range(1, p.rows_per_hall + 1), range(1, p.racks_per_row + 1)
    return {
        "feeds": [{"id": f"util-{s}", "feed": s.upper(), "rating_kw": _kw(p.utility_mw * 1e3)} for s in _FEEDS],
        "ups": [
            {"id": _ups_id(s, h, r, p), "parent": f"util-{s}",
             "rating_kw": _kw(min(p.rows_per_ups, p.rows_per_hall - r + 1) * p.racks_per_row * p.ups_kw_per_rack)}
            for h in halls for r in range(1, p.rows_per_hall + 1, p.rows_per_ups) for s in _FEEDS
        ],
        "rpps": [
            {"id": f"rpp-{s}-h{h}-{r:02d}", "parent": _ups_id(s, h, r, p),
             "rating_kw": _kw(p.racks_per_row * p.rpp_kw_per_rack)}
            for h in halls for r in rows for s in _FEEDS
        ],
        "pdus": [
            {"id": _pdu_id(s, h, r, k), "parent": f"rpp-{s}-h{h}-{r:02d}", "rating_kw": _kw(p.pdu_rating_kw)}
            for h in halls for r in rows for k in racks for s in _FEEDS
        ],
    }


def _rack_priorities(p: RefSiteParams) -> list[dict[str, Any]]:
    """The priority entry of every rack in site order: `priority` when its trays share one class, else
    `priorities`, one per tray."""
    per_rack = p.priority_granularity == "rack"
    names = [name for name, _ in p.priority_mix]
    count = p.n_racks if per_rack else p.n_racks * p.trays_per_rack
    assign = [names[k] for k in _spread(count, [frac for _, frac in p.priority_mix])]
    if per_rack:
        return [{"priority": c} for c in assign]
    trays = [assign[i:i + p.trays_per_rack] for i in range(0, len(assign), p.trays_per_rack)]
    return [{"priority": t[0]} if len(set(t)) == 1 else {"priorities": t} for t in trays]


def _rack(p: RefSiteParams, h: int, row: int, k: int, tray_type: str, priority: dict[str, Any]) -> dict[str, Any]:
    """Rack k of row `row` of hall h (all 1-based), fed by its own PDU on each side."""
    return {
        "id": f"rack-h{h}-{row:02d}-{k:02d}",
        "pdu_a": _pdu_id("a", h, row, k),
        "pdu_b": _pdu_id("b", h, row, k),
        "server_type": tray_type,
        "servers": p.trays_per_rack,
        "rating_kw": _kw(p.rack_rating_kw),
        "inlet_sensors": p.inlet_sensors,
        **priority,
    }


def _hall(p: RefSiteParams, h: int, tray_type: str, priorities: list[dict[str, Any]]) -> dict[str, Any]:
    """Hall h: its cooling zones (one per rows_per_zone rows) and its rows of racks."""
    zones = [
        {"id": _zone_id(h, r, p),
         "capacity_kw": _kw(min(p.rows_per_zone, p.rows_per_hall - r + 1) * p.racks_per_row * p.zone_kw_per_rack),
         "supply_c": float(p.supply_c)}
        for r in range(1, p.rows_per_hall + 1, p.rows_per_zone)
    ]
    first_rack = (h - 1) * p.rows_per_hall * p.racks_per_row  # site-wide index of the hall's first rack
    rows = []
    for r in range(1, p.rows_per_hall + 1):
        racks = [_rack(p, h, r, k, tray_type, priorities[first_rack + (r - 1) * p.racks_per_row + k - 1])
                 for k in range(1, p.racks_per_row + 1)]
        rows.append({"id": f"row-h{h}-{r:02d}", "zone": _zone_id(h, r, p), "racks": racks})
    return {"id": f"hall-{h}", "zones": zones, "rows": rows}


def reference_site_dict(params: RefSiteParams | None = None) -> dict[str, Any]:
    """The reference site as the dict a site TOML file loads to (input of ``site_from_dict``)."""
    p = params if params is not None else RefSiteParams()
    tray_type = f"{p.gpu_model.lower()}-tray"
    priorities = _rack_priorities(p)
    return {
        "name": p.name,
        "derating": float(p.derating),
        "server_types": {tray_type: _server_type(p)},
        **_power_tree(p),
        "halls": [_hall(p, h, tray_type, priorities) for h in range(1, p.halls + 1)],
    }


def reference_site(params: RefSiteParams | None = None) -> Site:
    """The reference site, loaded and validated."""
    p = params if params is not None else RefSiteParams()
    return site_from_dict(reference_site_dict(p), source=f"<reference site {p.name}>")


# ======================================================================================
# TOML writer (the subset site files use: tables, arrays of tables, scalars, inline arrays)
# ======================================================================================

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(k: object) -> str:
    if not isinstance(k, str):
        raise TypeError(f"TOML keys must be strings, got {type(k).__name__} {k!r}")
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: object) -> str:
    """An inline TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # always has '.' or an exponent, so it reads back as a float, exactly
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _is_table_array(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _table(lines: list[str], d: Mapping[str, Any], path: list[str], header: str | None) -> None:
    """Write table d at path: its header (if given), plain keys, then sub-tables and arrays of tables."""
    plain = [(k, v) for k, v in d.items() if not isinstance(v, Mapping) and not _is_table_array(v)]
    nested = [(k, v) for k, v in d.items() if isinstance(v, Mapping) or _is_table_array(v)]
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in plain)
    for k, v in nested:
        sub = [*path, _key(k)]
        name = ".".join(sub)
        if isinstance(v, Mapping):
            # A table with only sub-tables gets no header of its own: they define it implicitly.
            has_own = not v or any(not isinstance(x, Mapping) and not _is_table_array(x) for x in v.values())
            _table(lines, v, sub, f"[{name}]" if has_own else None)
        else:
            for item in v:
                _table(lines, item, sub, f"[[{name}]]")


def to_toml(d: Mapping[str, Any]) -> str:
    """Write a dict of TOML-representable values (str, int, float, bool, lists, dicts) as TOML text.

    Lists of tables become ``[[a.b]]`` arrays of tables; other lists are inline arrays. The result reads
    back with ``tomllib.loads`` to a dict equal to ``d`` (NaN aside, which never equals itself).
    """
    lines: list[str] = []
    _table(lines, d, [], None)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m powerplane.refsite > ref-100mw.toml
    import sys

    sys.stdout.write(f"# {RefSiteParams().name}: generated by powerplane.refsite with default parameters\n")
    sys.stdout.write(to_toml(reference_site_dict()))
