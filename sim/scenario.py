"""Scenarios: events on a timeline, read from a TOML file, applied to the twin as it runs.

A scenario file::

    name = "feed-loss-and-cooling"
    site = "lab"            # optional: the site it was written for (checked)
    duration_s = 180        # optional: how long to run it
    description = "..."

    [[events]]
    at_s = 30
    kind = "lose_feed"
    feed = "A"
    duration_s = 60         # optional: undone after this long

Event kinds and their fields (``duration_s`` is optional on every kind except the explicit restores):

============================  ==========================================================================
``lose_feed``                 ``feed`` ("A"/"B"): every utility level of that feed goes dark
``lose_level``                ``level``: one utility feed, UPS lineup, RPP or rack PDU goes dark
``restore_level``             ``level``: brings it (or a tripped breaker) back
``cooling_failure``           ``zone``, ``capacity_frac`` (default 0): the zone removes only that share
``load_surge``                ``factor``; ``pools`` (names) or ``priority`` (class); neither: all pools
``telemetry_dropout``         ``racks``: every reading of those racks is missing (NaN)
``stuck_sensor``              ``rack``, ``sensor`` ("inlet", "pdu", "gpu_power", "gpu_temp"), ``index``
                              (sensor, feed 0/1, or GPU within the rack; default 0): reading frozen
``job_start`` / ``job_stop``  ``job``: a training job starts or stops now
============================  ==========================================================================

Parsing reports every problem at once with its path; ``check`` resolves names against a site and a
workload. No I/O beyond reading the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerplane.config import TomlFileError, read_toml
from powerplane.site import FEED_KINDS, FEEDS, KIND, KIND_NAMES, PRIORITIES, Site

KINDS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required fields, optional fields) besides at_s, kind, duration_s
    "lose_feed": ({"feed"}, set()),
    "lose_level": ({"level"}, set()),
    "restore_level": ({"level"}, set()),
    "cooling_failure": ({"zone"}, {"capacity_frac"}),
    "load_surge": ({"factor"}, {"pools", "priority"}),
    "telemetry_dropout": ({"racks"}, set()),
    "stuck_sensor": ({"rack", "sensor"}, {"index"}),
    "job_start": ({"job"}, set()),
    "job_stop": ({"job"}, set()),
}
NO_DURATION = {"restore_level", "job_start", "job_stop"}
SENSORS = ("inlet", "pdu", "gpu_power", "gpu_temp")


class ScenarioError(ValueError):
    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(self.errors))


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str
    duration_s: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass(frozen=True)
class Action:
    """One thing to do at one time: an event's start, or its end (undo)."""

    at_s: float
    seq: int
    event: Event
    start: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    events: tuple[Event, ...]
    site: str | None = None
    duration_s: float | None = None
    description: str = ""

    def actions(self) -> list[Action]:
        """Starts and ends of every event, in time order (ties: file order, ends before starts)."""
        out: list[Action] = []
        for i, e in enumerate(self.events):
            out.append(Action(e.at_s, 2 * i + 1, e, True))
            if e.duration_s is not None:
                out.append(Action(e.at_s + e.duration_s, 2 * i, e, False))
        out.sort(key=lambda a: (a.at_s, a.start, a.seq))
        return out

    def check(self, site: Site, pool_names: Sequence[str], job_names: Sequence[str]) -> None:
        """Resolve every name against the site and the workload; raise ScenarioError listing all misses."""
        errs: list[str] = []
        if self.site is not None and self.site != site.name:
            errs.append(f"site: scenario is for site '{self.site}', not '{site.name}'")
        zones = {site.level_ids[i] for i in site.levels_of_kind("zone")}
        racks = set(site.rack_ids)
        for i, e in enumerate(self.events):
            p = f"events[{i}]"
            if e.kind in ("lose_level", "restore_level"):
                lv = e.get("level")
                if lv not in site.level_index:
                    errs.append(f"{p}.level: unknown level '{lv}'")
                elif KIND_NAMES[site.level_kind[site.level_index[lv]]] not in FEED_KINDS:
                    errs.append(f"{p}.level: '{lv}' is a {KIND_NAMES[site.level_kind[site.level_index[lv]]]}; "
                                f"expected a utility feed, UPS lineup, RPP or PDU")
            elif e.kind == "cooling_failure" and e.get("zone") not in zones:
                errs.append(f"{p}.zone: unknown cooling zone '{e.get('zone')}'")
            elif e.kind == "load_surge":
                for name in e.get("pools", []):
                    if name not in pool_names:
                        errs.append(f"{p}.pools: unknown pool '{name}'")
            elif e.kind == "telemetry_dropout":
                for r in e.get("racks", []):
                    if r not in racks:
                        errs.append(f"{p}.racks: unknown rack '{r}'")
            elif e.kind == "stuck_sensor":
                r = e.get("rack")
                if r not in racks:
                    errs.append(f"{p}.rack: unknown rack '{r}'")
                else:
                    ri = site.rack_index(r)
                    idx = int(e.get("index", 0))
                    limit = {"inlet": int(site.rack_inlet_sensors[ri]), "pdu": 2,
                             "gpu_power": int(site.rack_gpu_start[ri + 1] - site.rack_gpu_start[ri])}
                    limit["gpu_temp"] = limit["gpu_power"]
                    if not 0 <= idx < limit[str(e.get("sensor"))]:
                        errs.append(f"{p}.index: {idx} out of range for {e.get('sensor')} of rack '{r}' "
                                    f"(0..{limit[str(e.get('sensor'))] - 1})")
            elif e.kind in ("job_start", "job_stop") and e.get("job") not in job_names:
                errs.append(f"{p}.job: unknown job '{e.get('job')}'")
        if errs:
            raise ScenarioError(self.name, errs)


def _num(errs: list[str], d: Mapping[str, Any], key: str, path: str, lo: float = -math.inf,
         hi: float = math.inf) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= float(v) <= hi:
        errs.append(f"{path}.{key}: expected a number in [{lo:g}, {hi:g}], got {v!r}")
        return None
    return float(v)


def scenario_from_dict(d: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    errs: list[str] = []
    for k in d:
        if k not in ("name", "site", "duration_s", "description", "events"):
            errs.append(f"{k}: unknown field")
    name = d.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        errs.append("name: expected a non-empty string")
        name = "scenario"
    site = d.get("site")
    if site is not None and not isinstance(site, str):
        errs.append("site: expected a string")
        site = None
    duration = _num(errs, d, "duration_s", "scenario", lo=0.0)
    raw = d.get("events", [])
    if not isinstance(raw, list):
        errs.append("events: expected a list of tables ([[events]])")
        raw = []
    events: list[Event] = []
    for i, ev in enumerate(raw):
        p = f"events[{i}]"
        if not isinstance(ev, dict):
            errs.append(f"{p}: expected a table")
            continue
        kind = ev.get("kind")
        if kind not in KINDS:
            errs.append(f"{p}.kind: unknown event kind {kind!r} (known: {', '.join(KINDS)})")
            continue
        req, opt = KINDS[kind]
        allowed = req | opt | {"at_s", "kind"} | (set() if kind in NO_DURATION else {"duration_s"})
        for k in ev:
            if k not in allowed:
                errs.append(f"{p}.{k}: unknown field for a '{kind}' event")
        for k in sorted(req):
            if k not in ev:
                errs.append(f"{p}.{k}: missing")
        at = _num(errs, ev, "at_s", p, lo=0.0)
        if "at_s" not in ev:
            errs.append(f"{p}.at_s: missing")
        dur = _num(errs, ev, "duration_s", p, lo=0.0)
        params = {k: v for k, v in ev.items() if k not in ("at_s", "kind", "duration_s")}
        if kind == "lose_feed" and params.get("feed") not in FEEDS:
            errs.append(f"{p}.feed: expected one of {', '.join(FEEDS)}, got {params.get('feed')!r}")
        if kind == "cooling_failure":
            _num(errs, ev, "capacity_frac", p, lo=0.0, hi=1.0)
        if kind == "load_surge":
            _num(errs, ev, "factor", p, lo=0.0)
            if "pools" in params and (not isinstance(params["pools"], list)
                                      or not all(isinstance(x, str) for x in params["pools"])):
                errs.append(f"{p}.pools: expected a list of pool names")
            if "priority" in params and params["priority"] not in PRIORITIES:
                errs.append(f"{p}.priority: unknown priority class {params['priority']!r}")
            if "pools" in params and "priority" in params:
                errs.append(f"{p}: give pools or priority, not both")
        if kind == "telemetry_dropout" and (not isinstance(params.get("racks"), list) or not params.get("racks")):
            errs.append(f"{p}.racks: expected a non-empty list of rack ids")
        if kind == "stuck_sensor":
            if params.get("sensor") not in SENSORS:
                errs.append(f"{p}.sensor: expected one of {', '.join(SENSORS)}, got {params.get('sensor')!r}")
            _num(errs, ev, "index", p, lo=0.0)
        if at is not None:
            events.append(Event(at, kind, dur, params))
    if errs:
        raise ScenarioError(source, errs)
    return Scenario(name, tuple(events), site, duration, str(d.get("description", "")))


def load_scenario(path: str | Path) -> Scenario:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ScenarioError(str(path), [str(e)]) from None
    return scenario_from_dict(data, source=str(path))


def feed_levels(site: Site, feed: str) -> list[str]:
    """The utility levels of one feed."""
    f = FEEDS.index(feed)
    return [site.level_ids[i] for i in range(len(site.level_ids))
            if site.level_kind[i] == KIND["utility"] and site.level_feed[i] == f]
