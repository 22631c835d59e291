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
``false_trap``                ``lineup`` (a UPS lineup): its UPS card sends an on-battery trap although
                              its feed is fine (no ``duration_s``)
============================  ==========================================================================

An optional ``[ups]`` table sets the UPS signal (trap latency and loss, poll interval, battery; see
``sim.scenario_config.UpsConfig`` and docs/twin.md)::

    [ups]
    trap_latency_ms = [50, 300]
    trap_loss = 0.0
    poll_interval_s = 10

The grid side of a scenario (issue 16: ``[training_job]``, one large synchronous job; ``[grid]`` and
``[feed_grid.ID]``, the utility's limits for this run; ``[[demand_response]]`` requests; ``measure_from_s``,
where evaluate's grid measures start) is documented in ``sim.grid_scenario``.

The schema (ranges, defaults, one model per kind) is ``sim.scenario_config``. Loading reports every
mistake at once as ``path: message`` (one ``ConfigError``); given a site (and the workload's pool and job
names) it also resolves every name in the same pass. ``Scenario.check`` resolves them later, when the
twin is built. No I/O beyond reading the file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerplane.config import TomlFileError, read_toml
from powerplane.grid import DemandResponse, GridLimits
from powerplane.site import FEED_KINDS, FEEDS, KIND, KIND_NAMES, Site
from powerplane.validation import ConfigError, Problems, parse_into
from sim.grid_scenario import TrainingJob, grid_site, with_training_job
from sim.scenario_config import EVENT_KINDS, SENSORS, ScenarioConfig, UpsConfig
from sim.workload_config import WorkloadSpec

__all__ = ["EVENT_KINDS", "SENSORS", "Action", "Event", "Scenario", "ScenarioConfig", "UpsConfig", "check_names",
           "feed_levels", "load_scenario", "scenario_from_dict"]


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
    ups: UpsConfig = field(default_factory=UpsConfig)
    training_job: TrainingJob | None = None
    grid: GridLimits | None = None  # replaces the site's [grid] for this run
    feed_grid: Mapping[str, GridLimits] = field(default_factory=dict)  # replaces those feeds' [feeds.grid]
    demand_response: tuple[DemandResponse, ...] = ()
    measure_from_s: float = 10.0  # evaluate's grid measures start here (the twin's cold start before it)
    job_notice_s: float | None = None  # the scheduler announces each job's start this far ahead (None: never)
    gpu_power_floor: bool = True  # False: the twin's GPUs refuse power floors, as H100s (its actuator rejects them)

    def site_for(self, site: Site) -> Site:
        """The site with this scenario's utility limits in place of its own where given."""
        return grid_site(site, self.grid, self.feed_grid)

    def workload_for(self, site: Site, workload: WorkloadSpec) -> WorkloadSpec:
        """The workload with this scenario's training job in it (unchanged without one)."""
        return workload if self.training_job is None else with_training_job(site, workload, self.training_job)

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
        """Resolve every name against the site and the workload; one ConfigError listing all misses."""
        problems = Problems()
        check_names(problems, self.site, [{"kind": e.kind, **e.params} for e in self.events], site, pool_names,
                    job_names)
        check_feeds(problems, {"feed_grid": dict(self.feed_grid),
                               "demand_response": [{"feed": e.feed} for e in self.demand_response]}, site)
        problems.raise_if_any(self.name)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _check_level(problems: Problems, path: str, lv: Any, site: Site) -> None:
    if _str(lv) is None:
        return  # not a string: the schema reported it
    if lv not in site.level_index:
        problems.add(path, f"unknown level '{lv}'")
        return
    kind = KIND_NAMES[site.level_kind[site.level_index[lv]]]
    if kind not in FEED_KINDS:
        problems.add(path, f"'{lv}' is a {kind}; expected a utility feed, UPS lineup, RPP or PDU")


def _check_lineup(problems: Problems, path: str, lv: Any, site: Site) -> None:
    if _str(lv) is None:
        return  # not a string: the schema reported it
    if lv not in site.level_index or int(site.level_kind[site.level_index[lv]]) != KIND["ups"]:
        lineups = ", ".join(site.level_ids[i] for i in site.levels_of_kind("ups")) or "none"
        problems.add(path, f"'{lv}' is not a UPS lineup of site '{site.name}' (lineups: {lineups})")


def _check_sensor(problems: Problems, path: str, ev: Mapping[str, Any], site: Site, racks: Collection[str]) -> None:
    r = ev.get("rack")
    if not isinstance(r, str):
        return
    if r not in racks:
        problems.add(f"{path}.rack", f"unknown rack '{r}'")
        return
    ri = site.rack_index(r)
    gpus = int(site.rack_gpu_start[ri + 1] - site.rack_gpu_start[ri])
    limit = {"inlet": int(site.rack_inlet_sensors[ri]), "pdu": 2, "gpu_power": gpus, "gpu_temp": gpus}
    idx, sensor = ev.get("index", 0), ev.get("sensor")
    if sensor in limit and isinstance(idx, int) and not isinstance(idx, bool) and not 0 <= idx < limit[sensor]:
        problems.add(f"{path}.index", f"{idx} out of range for {sensor} of rack '{r}' (0..{limit[sensor] - 1})")


def _check_each(problems: Problems, path: str, names: Any, known: Collection[str], what: str) -> None:
    for j, name in enumerate(names if isinstance(names, list) else []):
        if isinstance(name, str) and name not in known:
            problems.add(f"{path}[{j}]", f"unknown {what} '{name}'")


def check_names(problems: Problems, scenario_site: Any, events: Sequence[Any], site: Site,
                pool_names: Collection[str] | None = None, job_names: Collection[str] | None = None) -> None:
    """Add a line for every name the site (and the workload, where its names are given) lacks.

    Reads the events as plain tables, so it also runs on a file that failed validation: a wrong value
    is the schema's to report, a dangling name is reported here, both in the same pass.
    """
    if isinstance(scenario_site, str) and scenario_site != site.name:
        problems.add("site", f"scenario is for site '{scenario_site}', not '{site.name}'")
    zones = {site.level_ids[i] for i in site.levels_of_kind("zone")}
    racks = set(site.rack_ids)
    for i, ev in enumerate(events):
        if not isinstance(ev, Mapping):
            continue
        p, kind = f"events[{i}]", ev.get("kind")
        if kind in ("lose_level", "restore_level"):
            _check_level(problems, f"{p}.level", ev.get("level"), site)
        elif kind == "cooling_failure" and _str(ev.get("zone")) is not None and ev["zone"] not in zones:
            problems.add(f"{p}.zone", f"unknown cooling zone '{ev['zone']}'")
        elif kind == "load_surge" and pool_names is not None:
            _check_each(problems, f"{p}.pools", ev.get("pools"), pool_names, "pool")
        elif kind == "telemetry_dropout":
            _check_each(problems, f"{p}.racks", ev.get("racks"), racks, "rack")
        elif kind == "stuck_sensor":
            _check_sensor(problems, p, ev, site, racks)
        elif kind == "false_trap":
            _check_lineup(problems, f"{p}.lineup", ev.get("lineup"), site)
        elif (kind in ("job_start", "job_stop") and job_names is not None and _str(ev.get("job")) is not None
              and ev["job"] not in job_names):
            problems.add(f"{p}.job", f"unknown job '{ev['job']}'")


def check_feeds(problems: Problems, d: Mapping[str, Any], site: Site) -> None:
    """A line for every utility feed id ([feed_grid.X], a demand response's feed) the site lacks."""
    feeds = [site.level_ids[i] for i in site.levels_of_kind("utility")]
    fg = d.get("feed_grid")
    for name in fg if isinstance(fg, Mapping) else {}:
        if name not in feeds:
            problems.add(f"feed_grid.{name}", f"unknown utility feed '{name}' (feeds: {', '.join(feeds)})")
    drs = d.get("demand_response")
    for i, ev in enumerate(drs if isinstance(drs, list) else []):
        f = ev.get("feed") if isinstance(ev, Mapping) else None
        if isinstance(f, str) and f not in feeds:
            problems.add(f"demand_response[{i}].feed", f"unknown utility feed '{f}' (feeds: {', '.join(feeds)})")


def scenario_from_dict(d: Mapping[str, Any], source: str = "<scenario>", *, site: Site | None = None,
                       pool_names: Collection[str] | None = None, job_names: Collection[str] | None = None
                       ) -> Scenario:
    """The scenario a parsed file describes, or one ConfigError with every mistake. Given a site, names
    are resolved too (pools and jobs only where their names are given)."""
    problems = Problems()
    cfg = parse_into(ScenarioConfig, d, problems)
    if site is not None and isinstance(d, Mapping):
        events = d.get("events")
        check_names(problems, d.get("site"), events if isinstance(events, list) else [], site, pool_names,
                    job_names)
        check_feeds(problems, d, site)
    problems.raise_if_any(source)
    assert cfg is not None
    raw = d.get("events", [])
    # params keep the values as written (an int stays an int): the twin's event log prints them.
    events = tuple(Event(ev.at_s, ev.kind, getattr(ev, "duration_s", None),
                         {k: v for k, v in raw[i].items() if k not in ("at_s", "kind", "duration_s")})
                   for i, ev in enumerate(cfg.events))
    return Scenario(cfg.name or Path(source).stem, events, cfg.site, cfg.duration_s, cfg.description, cfg.ups,
                    cfg.training_job, cfg.grid, dict(cfg.feed_grid), cfg.demand_response, cfg.measure_from_s,
                    cfg.job_notice_s, cfg.gpu_power_floor)


def load_scenario(path: str | Path, *, site: Site | None = None, pool_names: Collection[str] | None = None,
                  job_names: Collection[str] | None = None) -> Scenario:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError([str(e)], str(path)) from None
    return scenario_from_dict(data, str(path), site=site, pool_names=pool_names, job_names=job_names)


def feed_levels(site: Site, feed: str) -> list[str]:
    """The utility levels of one feed."""
    f = FEEDS.index(feed)
    return [site.level_ids[i] for i in range(len(site.level_ids))
            if site.level_kind[i] == KIND["utility"] and site.level_feed[i] == f]
