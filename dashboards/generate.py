"""Writes the Grafana dashboards in dashboards/json/ (run: .venv/bin/python -m dashboards.generate).

The JSON files are what Grafana loads (compose/ mounts dashboards/json/) and what an existing Grafana
imports; this script is how they are edited. They are built with Grafana's own Python SDK
(grafana-foundation-sdk, a dev dependency: only regenerating needs it), plus dashboards/influxql.py for
InfluxQL, which the SDK has no query type for. Every panel follows the same rules, which
tests/unit/test_dashboards.py checks:
- InfluxQL only (InfluxDB 1.8+, 2.x through DBRP, 3.x all answer it), raw queries over the sink's
  measurements (streams/sinks/influx/points.py);
- every selected column has an alias (`AS "name"`): the alias is the column a panel shows, and the
  test against a real InfluxQL engine checks exactly those columns come back;
- every panel, target, annotation and query variable names the datasource variable `${datasource}`,
  whose default is the import input `${DS_INFLUXDB}` (filled in by Grafana's "Import dashboard") or, on
  a provisioned Grafana, the provisioned datasource by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import DS, INPUT, PROVISIONED_NAME, AnnotationTargetBuilder, QueryBuilder, import_header

OUT = Path(__file__).resolve().parent / "json"
GRAFANA_VERSION = "11.3.0"  # compose's image; the SDK release pinned in pyproject.toml targets it
SITE = '"site" =~ /^$site$/'
WHERE = f"{SITE} AND $timeFilter"
EVERY = "GROUP BY time($__interval)"
Thresholds = list[tuple[float, str]]


def datasource_var() -> dash_b.DatasourceVariable:
    # Value: the import input; text: the provisioned datasource's name, which Grafana matches when the
    # value names no datasource (a provisioned dashboard's inputs are never filled in).
    return (dash_b.DatasourceVariable("datasource").label("InfluxDB").type("influxdb")
            .current(model.VariableOption(text=PROVISIONED_NAME, value=f"${{{INPUT}}}")))


def site_var() -> dash_b.QueryVariable:
    return query_var("site", "Site", 'SHOW TAG VALUES FROM "pp_level" WITH KEY = "site"')


def query_var(name: str, label: str, query: str) -> dash_b.QueryVariable:
    return (dash_b.QueryVariable(name).label(label).datasource(DS).query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC)
            .include_all(False).multi(False))


PanelBuilder = stat.Panel | table.Panel | timeseries.Panel
KINDS: dict[str, Callable[[], PanelBuilder]] = {"stat": stat.Panel, "table": table.Panel,
                                               "timeseries": timeseries.Panel}


class Layout:
    """The panels of one dashboard, numbered in order; the SDK's dashboard builder places them left to
    right on the 24-column grid, wrapping to a new row."""

    def __init__(self) -> None:
        self.panels: list[PanelBuilder] = []

    def add(self, kind: str, title: str, queries: list[str], *, w: int = 12, h: int = 8, unit: str = "",
            description: str = "", bars: bool = False, thresholds: Thresholds | None = None,
            sort_by: tuple[str, bool] | None = None, reduce_last: bool = False, merge: bool = False) -> None:
        fmt = "table" if kind == "table" else "time_series"
        p = KINDS[kind]().id(len(self.panels) + 1).title(title).datasource(DS).span(w).height(h)
        p = p.targets([QueryBuilder(q, chr(ord("A") + i), fmt) for i, q in enumerate(queries)])
        if description:
            p = p.description(description)
        if unit:
            p = p.unit(unit)
        if thresholds:
            steps = [model.Threshold(None, "green")] + [model.Threshold(v, c) for v, c in thresholds]
            p = p.thresholds(dash_b.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
            # A time series colours each series apart; a stat or table cell takes its threshold's colour.
            mode = model.FieldColorModeId.PALETTE_CLASSIC if kind == "timeseries" else model.FieldColorModeId.THRESHOLDS
            p = p.color_scheme(dash_b.FieldColor().mode(mode))
        if bars and isinstance(p, timeseries.Panel):
            p = p.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
        if reduce_last and isinstance(p, stat.Panel):
            p = p.reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        if sort_by and isinstance(p, table.Panel):
            p = p.sort_by([common_b.TableSortByFieldState().display_name(sort_by[0]).desc(sort_by[1])])
        if merge:
            p = p.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        self.panels.append(p)


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dash_b.QueryVariable],
              annotations: list[Builder[model.AnnotationQuery]] | None = None) -> dict[str, Any]:
    d = (dash_b.Dashboard(title).uid(uid).description(description).tags(["powerplane"]).editable()
         .version(1).refresh("10s").timezone("browser").tooltip(model.DashboardCursorSync.CROSSHAIR)
         .time("now-1h", "now").variables([datasource_var(), *variables]).annotations(annotations or [])
         .link(dash_b.DashboardLink("powerplane").type(model.DashboardLinkType.DASHBOARDS).tags(["powerplane"])
               .as_dropdown(True)))
    for p in layout.panels:
        d = d.with_panel(p)
    built: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return {**import_header((p["type"] for p in built["panels"]), GRAFANA_VERSION), **built}


def events_annotation(extra_where: str = "") -> dash_b.AnnotationQuery:
    q = (f'SELECT "summary" AS "summary", "kind" AS "kind" FROM "pp_event" WHERE "state" = \'open\'{extra_where} '
         f"AND {WHERE}")
    name = "Emergencies opened"
    return (dash_b.AnnotationQuery().name(name).datasource(DS).enable(True).icon_color("red")
            .target(AnnotationTargetBuilder(name, q, text_column="summary", tags_column="kind")))


OPEN_NOW = (f'SELECT sum("active") AS "open" FROM (SELECT last("active") AS "active" FROM "pp_event" '
            f'WHERE {WHERE} GROUP BY "kind", "level")')
LOAD_THRESHOLDS: Thresholds = [(0.8, "orange"), (1.0, "red")]


def site_overview() -> dict[str, Any]:
    L = Layout()
    L.add("stat", "Site load (of derated limit)",
          [f'SELECT last("load_frac") AS "load_frac" FROM "pp_level" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, unit="percentunit", thresholds=LOAD_THRESHOLDS, reduce_last=True)
    L.add("stat", "Site headroom (limit - p99 forecast)",
          [f'SELECT last("headroom_w") AS "headroom_w" FROM "pp_headroom" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, unit="watt", reduce_last=True)
    L.add("stat", "Open emergencies", [OPEN_NOW], w=6, h=5, thresholds=[(1, "red")], reduce_last=True)
    L.add("stat", "Telemetry: GPUs reporting / expected, stale racks",
          [f'SELECT last("gpus_reporting") AS "gpus_reporting", last("gpus_expected") AS "gpus_expected", '
           f'last("racks_stale") AS "racks_stale" FROM "pp_level" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, reduce_last=True)
    L.add("timeseries", "Site power vs limit",
          [f'SELECT mean("power_w") AS "power_w", mean("limit_w") AS "limit_w", mean("rated_w") AS "rated_w" '
           f'FROM "pp_level" WHERE "kind" = \'site\' AND {WHERE} {EVERY} fill(null)'], w=12, unit="watt")
    L.add("timeseries", "Utility feeds: load (of derated limit)",
          [f'SELECT mean("load_frac") AS "load_frac" FROM "pp_level" WHERE "kind" = \'utility\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], w=12, unit="percentunit", thresholds=LOAD_THRESHOLDS)
    L.add("timeseries", "UPS lineups: headroom (limit - p99 forecast)",
          [f'SELECT mean("headroom_w") AS "headroom_w" FROM "pp_headroom" WHERE "kind" = \'ups\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], w=12, unit="watt",
          description="Below zero means the p99 forecast exceeds the derated limit in the current feed state.")
    L.add("timeseries", "PDU meter gap (meter - sum of racks)",
          [f'SELECT max("gap_w") AS "gap_w" FROM "pp_level" WHERE "kind" = \'pdu\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], w=12, unit="watt",
          description="A growing gap is a bad meter or unmonitored load.")
    L.add("table", "PDUs now (hottest first)",
          [f'SELECT last("load_frac") AS "load_frac", last("power_w") AS "power_w", last("limit_w") AS "limit_w" '
           f'FROM "pp_level" WHERE "kind" = \'pdu\' AND {WHERE} GROUP BY "level", "mode"'], w=24, h=9,
          sort_by=("load_frac", True),
          merge=True)
    return dashboard("pp-site-overview", "powerplane / Site overview",
                     "Load, headroom and emergencies of one site at a glance.", L, [site_var()],
                     [events_annotation()])


def power_tree() -> dict[str, Any]:
    L = Layout()
    lvl = f'"level" =~ /^$level$/ AND {WHERE}'
    L.add("timeseries", "$level: load vs limit",
          [f'SELECT mean("power_w") AS "power_w", mean("limit_w") AS "limit_w", mean("rated_w") AS "rated_w", '
           f'mean("metered_w") AS "metered_w" FROM "pp_level" WHERE {lvl} {EVERY} fill(null)'], unit="watt")
    L.add("timeseries", "$level: load (of derated limit)",
          [f'SELECT mean("load_frac") AS "load_frac" FROM "pp_level" WHERE {lvl} {EVERY} fill(null)'],
          unit="percentunit", thresholds=LOAD_THRESHOLDS)
    L.add("timeseries", "$level: forecast vs actual",
          [f'SELECT mean("power_w") AS "power_w", mean("forecast_p50_w") AS "forecast_p50_w", '
           f'mean("forecast_p99_w") AS "forecast_p99_w", mean("plan_p99_w") AS "plan_p99_w", '
           f'mean("limit_w") AS "limit_w" FROM "pp_headroom" WHERE {lvl} {EVERY} fill(null)'], unit="watt")
    L.add("timeseries", "$level: headroom",
          [f'SELECT mean("headroom_w") AS "headroom_w" FROM "pp_headroom" WHERE {lvl} {EVERY} fill(null)'],
          unit="watt", thresholds=[(0, "red")])
    L.add("timeseries", "$level: GPUs reporting",
          [f'SELECT min("gpus_reporting") AS "gpus_reporting", max("gpus_expected") AS "gpus_expected" '
           f'FROM "pp_level" WHERE {lvl} {EVERY} fill(null)'], w=8)
    L.add("timeseries", "$level: stale racks and oldest reading",
          [f'SELECT max("racks_stale") AS "racks_stale", max("age_s") AS "age_s" FROM "pp_level" WHERE {lvl} '
           f'{EVERY} fill(null)'], w=8)
    L.add("timeseries", "$level: meter gap",
          [f'SELECT mean("gap_w") AS "gap_w" FROM "pp_level" WHERE {lvl} {EVERY} fill(null)'], w=8, unit="watt")
    L.add("table", "Every $kind now",
          [f'SELECT last("load_frac") AS "load_frac", last("power_w") AS "power_w", last("limit_w") AS "limit_w" '
           f'FROM "pp_level" WHERE "kind" =~ /^$kind$/ AND {WHERE} GROUP BY "level"'],
          sort_by=("load_frac", True))
    L.add("table", "Every $kind: headroom now",
          [f'SELECT last("headroom_w") AS "headroom_w", last("forecast_p99_w") AS "forecast_p99_w", '
           f'last("limit_w") AS "limit_w" FROM "pp_headroom" WHERE "kind" =~ /^$kind$/ AND {WHERE} '
           f'GROUP BY "level"'], sort_by=("headroom_w", False))
    variables = [
        site_var(),
        query_var("kind", "Level kind", 'SHOW TAG VALUES FROM "pp_level" WITH KEY = "kind" WHERE "site" =~ /^$site$/'),
        query_var("level", "Level", 'SHOW TAG VALUES FROM "pp_level" WITH KEY = "level" '
                                    'WHERE "site" =~ /^$site$/ AND "kind" =~ /^$kind$/'),
    ]
    return dashboard("pp-power-tree", "powerplane / Power tree drill-down",
                     "One level of the power tree: load, limit, forecast, headroom and telemetry health.", L,
                     variables, [events_annotation(' AND "level" =~ /^$level$/')])


def thermal() -> dict[str, Any]:
    L = Layout()
    L.add("timeseries", "Hottest inlet per zone",
          [f'SELECT max("inlet_c") AS "inlet_c" FROM "pp_level" WHERE "kind" = \'zone\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], unit="celsius", thresholds=[(27, "orange"), (32, "red")],
          description="ASHRAE recommends 18-27 C; class A1 allows up to 32 C.")
    L.add("timeseries", "Zone load (of cooling capacity)",
          [f'SELECT mean("load_frac") AS "load_frac" FROM "pp_level" WHERE "kind" = \'zone\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], unit="percentunit", thresholds=LOAD_THRESHOLDS)
    L.add("timeseries", "Thermal headroom per zone (inlet limit - forecast inlet)",
          [f'SELECT min("thermal_headroom_c") AS "thermal_headroom_c" FROM "pp_headroom" WHERE "kind" = \'zone\' '
           f'AND {WHERE} {EVERY}, "level" fill(null)'], unit="celsius", thresholds=[(0, "red")])
    L.add("timeseries", "Time to inlet limit (at the current slope)",
          [f'SELECT min("time_to_limit_s") AS "time_to_limit_s" FROM "pp_headroom" WHERE "kind" =~ /^(zone|rack)$/ '
           f'AND {WHERE} {EVERY}, "level" fill(null)'], unit="s")
    L.add("timeseries", "Hottest GPU per hall",
          [f'SELECT max("gpu_temp_max_c") AS "gpu_temp_max_c" FROM "pp_level" WHERE "kind" = \'hall\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'], unit="celsius", thresholds=[(87, "orange"), (89, "red")],
          description="H100: slowdown at 89 C, shutdown at 92 C.")
    L.add("timeseries", "GPUs in thermal or power slowdown, per hall",
          [f'SELECT max("gpus_throttled") AS "gpus_throttled" FROM "pp_level" WHERE "kind" = \'hall\' AND {WHERE} '
           f'{EVERY}, "level" fill(null)'])
    L.add("timeseries", "$zone: inlet vs forecast and limit",
          [f'SELECT mean("inlet_c") AS "inlet_c", mean("forecast_inlet_c") AS "forecast_inlet_c", '
           f'mean("inlet_limit_c") AS "inlet_limit_c" FROM "pp_headroom" WHERE "level" =~ /^$zone$/ AND {WHERE} '
           f'{EVERY} fill(null)'], unit="celsius")
    L.add("table", "Racks closest to their inlet limit",
          [f'SELECT last("thermal_headroom_c") AS "thermal_headroom_c", last("inlet_c") AS "inlet_c", '
           f'last("forecast_inlet_c") AS "forecast_inlet_c", last("time_to_limit_s") AS "time_to_limit_s" '
           f'FROM "pp_headroom" WHERE "kind" = \'rack\' AND {WHERE} GROUP BY "level"'],
          sort_by=("thermal_headroom_c", False))
    variables = [site_var(), query_var("zone", "Cooling zone", 'SHOW TAG VALUES FROM "pp_level" WITH KEY = "level" '
                                                               'WHERE "site" =~ /^$site$/ AND "kind" = \'zone\'')]
    return dashboard("pp-thermal", "powerplane / Thermal",
                     "Inlet temperatures, cooling load, thermal headroom and GPU slowdowns.", L, variables,
                     [events_annotation(' AND "kind" =~ /^(cooling_failure|thermal_slowdown)$/')])


def controller() -> dict[str, Any]:
    L = Layout()
    # fill(0): a count over an interval without commands really is zero.
    L.add("timeseries", "Commands by action",
          [f'SELECT count("gpus") AS "commands" FROM "pp_command" WHERE {WHERE} {EVERY}, "action" fill(0)'],
          bars=True)
    L.add("timeseries", "GPUs commanded by action",
          [f'SELECT sum("gpus") AS "gpus" FROM "pp_command" WHERE {WHERE} {EVERY}, "action" fill(0)'])
    L.add("timeseries", "Power caps set",
          [f'SELECT mean("value_mean") AS "mean_cap_w", min("value_min") AS "lowest_cap_w" FROM "pp_command" '
           f'WHERE "action" = \'power_cap\' AND {WHERE} {EVERY} fill(null)'], unit="watt")
    L.add("timeseries", "Acknowledgements by status",
          [f'SELECT count("gpus") AS "acks" FROM "pp_ack" WHERE {WHERE} {EVERY}, "status" fill(0)'])
    L.add("timeseries", "Command to acknowledgement latency",
          [f'SELECT percentile("latency_s", 50) AS "p50_s", percentile("latency_s", 99) AS "p99_s", '
           f'max("latency_s") AS "max_s" FROM "pp_ack" WHERE {WHERE} {EVERY} fill(null)'], unit="s")
    L.add("table", "Latest command per rack",
          [f'SELECT last("gpus") AS "gpus", last("value_mean") AS "value_mean", last("reason") AS "reason" '
           f'FROM "pp_command" WHERE {WHERE} GROUP BY "target", "action"'],
          merge=True)
    L.add("table", "Refused, expired and reverted commands",
          [f'SELECT "target" AS "target", "status" AS "status", "gpus" AS "gpus", "reason" AS "reason", '
           f'"command_id" AS "command_id" FROM "pp_ack" WHERE "status" =~ /^(rejected|expired|reverted)$/ '
           f'AND {WHERE} ORDER BY time DESC LIMIT 200'], w=24)
    return dashboard("pp-controller", "powerplane / Controller actions",
                     "Commands issued, what actuators applied, and how long it took.", L, [site_var()])


def emergencies() -> dict[str, Any]:
    L = Layout()
    L.add("stat", "Open emergencies", [OPEN_NOW], w=6, h=6, thresholds=[(1, "red")], reduce_last=True)
    L.add("table", "Open now",
          [f'SELECT "active" AS "active", "summary" AS "summary", "deadline_in_s" AS "deadline_in_s" FROM '
           f'(SELECT last("active") AS "active", last("summary") AS "summary", last("deadline_in_s") AS '
           f'"deadline_in_s" FROM "pp_event" WHERE {WHERE} GROUP BY "kind", "level", "severity") '
           f'WHERE "active" = 1 GROUP BY "kind", "level", "severity"'], w=18, h=6,
          merge=True)
    L.add("timeseries", "Open (1) or resolved (0), per kind and level",
          [f'SELECT max("active") AS "active" FROM "pp_event" WHERE {WHERE} {EVERY}, "kind", "level" '
           f'fill(previous)'])
    L.add("timeseries", "Time left to act (deadline)",
          [f'SELECT min("deadline_in_s") AS "deadline_in_s" FROM "pp_event" WHERE "state" = \'open\' AND {WHERE} '
           f'{EVERY}, "kind", "level" fill(null)'], unit="s", thresholds=[(0, "red")])
    L.add("timeseries", "Breaker overload: estimated time to trip",
          [f'SELECT min("time_to_trip_s") AS "time_to_trip_s" FROM "pp_event" WHERE "kind" = \'breaker_overload\' '
           f'AND "state" = \'open\' AND {WHERE} {EVERY}, "level" fill(null)'], unit="s")
    L.add("timeseries", "Load at the affected level",
          [f'SELECT max("load_frac") AS "load_frac" FROM "pp_event" WHERE "state" = \'open\' AND {WHERE} '
           f'{EVERY}, "kind", "level" fill(null)'], unit="percentunit", thresholds=LOAD_THRESHOLDS)
    L.add("table", "Event log",
          [f'SELECT "summary" AS "summary", "active" AS "active", "deadline_in_s" AS "deadline_in_s", '
           f'"event_id" AS "event_id" FROM "pp_event" WHERE {WHERE} GROUP BY "kind", "level", "severity", "state" '
           f'ORDER BY time DESC LIMIT 500'], w=24, h=10, merge=True)
    return dashboard("pp-emergencies", "powerplane / Emergencies",
                     "Feed and UPS loss, breaker overload, cooling failure, GPU slowdown, telemetry loss.", L,
                     [site_var()], [events_annotation()])


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "site-overview": site_overview, "power-tree": power_tree, "thermal": thermal, "controller-actions": controller,
    "emergencies": emergencies}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make(), indent=2) + "\n" for name, make in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
