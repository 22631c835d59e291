"""Writes the Grafana dashboards in dashboards/json/ (run: python dashboards/generate.py).

The JSON files are what Grafana loads (compose/ mounts dashboards/json/); this script is how they are
edited, so every panel follows the same rules, which tests/unit/test_dashboards.py checks:
- InfluxQL only (InfluxDB 1.8+, 2.x through DBRP, 3.x all answer it), raw queries over the sink's
  measurements (streams/sinks/influx/points.py);
- every selected column has an alias (`AS "name"`): the alias is the column a panel shows, and the
  test against a real InfluxQL engine checks exactly those columns come back;
- every panel and target names the provisioned datasource (uid powerplane-influxdb).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "json"
DS = {"type": "influxdb", "uid": "powerplane-influxdb"}
SITE = '"site" =~ /^$site$/'
WHERE = f"{SITE} AND $timeFilter"
EVERY = "GROUP BY time($__interval)"


def site_var() -> dict[str, Any]:
    return query_var("site", "Site", 'SHOW TAG VALUES FROM "pp_level" WITH KEY = "site"')


def query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": query,
            "definition": query, "refresh": 2, "includeAll": False, "multi": False, "sort": 1,
            "current": {}, "options": [], "hide": 0}


def target(query: str, ref: str = "A", fmt: str = "time_series") -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "query": query, "rawQuery": True, "resultFormat": fmt}


class Layout:
    """Places panels left to right, 24 grid columns wide, wrapping to a new row."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.panels: list[dict[str, Any]] = []

    def add(self, kind: str, title: str, queries: list[str], *, w: int = 12, h: int = 8, unit: str = "",
            description: str = "", fmt: str | None = None, bars: bool = False, **extra: Any) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        fmt = fmt or ("table" if kind == "table" else "time_series")
        defaults: dict[str, Any] = {"unit": unit} if unit else {}
        if bars:
            defaults["custom"] = {"drawStyle": "bars", "fillOpacity": 80}
        if "thresholds" in extra:
            steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in extra.pop("thresholds")]
            defaults["thresholds"] = {"mode": "absolute", "steps": steps}
            defaults["color"] = {"mode": "thresholds"} if kind != "timeseries" else {"mode": "palette-classic"}
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [target(q, chr(ord("A") + i), fmt) for i, q in enumerate(queries)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": extra.pop("options", {}),
        }
        panel.update(extra)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict[str, Any]],
              annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["powerplane"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "timezone": "browser", "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": annotations or []},
        "panels": layout.panels,
        "links": [{"type": "dashboards", "tags": ["powerplane"], "asDropdown": True, "title": "powerplane"}],
    }


def events_annotation(extra_where: str = "") -> dict[str, Any]:
    q = (f'SELECT "summary" AS "summary", "kind" AS "kind" FROM "pp_event" WHERE "state" = \'open\'{extra_where} '
         f"AND {WHERE}")
    return {"name": "Emergencies opened", "datasource": DS, "enable": True, "iconColor": "red", "query": q,
            "textColumn": "summary", "tagsColumn": "kind"}


OPEN_NOW = (f'SELECT sum("active") AS "open" FROM (SELECT last("active") AS "active" FROM "pp_event" '
            f'WHERE {WHERE} GROUP BY "kind", "level")')
PCT: dict[str, Any] = {"options": {"reduceOptions": {"calcs": ["lastNotNull"]}}}
LOAD_THRESHOLDS = [(0.8, "orange"), (1.0, "red")]


def site_overview() -> dict[str, Any]:
    L = Layout()
    L.add("stat", "Site load (of derated limit)",
          [f'SELECT last("load_frac") AS "load_frac" FROM "pp_level" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, unit="percentunit", thresholds=LOAD_THRESHOLDS, **PCT)
    L.add("stat", "Site headroom (limit - p99 forecast)",
          [f'SELECT last("headroom_w") AS "headroom_w" FROM "pp_headroom" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, unit="watt", **PCT)
    L.add("stat", "Open emergencies", [OPEN_NOW], w=6, h=5, thresholds=[(1, "red")], **PCT)
    L.add("stat", "Telemetry: GPUs reporting / expected, stale racks",
          [f'SELECT last("gpus_reporting") AS "gpus_reporting", last("gpus_expected") AS "gpus_expected", '
           f'last("racks_stale") AS "racks_stale" FROM "pp_level" WHERE "kind" = \'site\' AND {WHERE}'],
          w=6, h=5, **PCT)
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
          options={"sortBy": [{"displayName": "load_frac", "desc": True}]},
          transformations=[{"id": "merge", "options": {}}])
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
          options={"sortBy": [{"displayName": "load_frac", "desc": True}]})
    L.add("table", "Every $kind: headroom now",
          [f'SELECT last("headroom_w") AS "headroom_w", last("forecast_p99_w") AS "forecast_p99_w", '
           f'last("limit_w") AS "limit_w" FROM "pp_headroom" WHERE "kind" =~ /^$kind$/ AND {WHERE} '
           f'GROUP BY "level"'], options={"sortBy": [{"displayName": "headroom_w", "desc": False}]})
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
          options={"sortBy": [{"displayName": "thermal_headroom_c", "desc": False}]})
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
          transformations=[{"id": "merge", "options": {}}])
    L.add("table", "Refused, expired and reverted commands",
          [f'SELECT "target" AS "target", "status" AS "status", "gpus" AS "gpus", "reason" AS "reason", '
           f'"command_id" AS "command_id" FROM "pp_ack" WHERE "status" =~ /^(rejected|expired|reverted)$/ '
           f'AND {WHERE} ORDER BY time DESC LIMIT 200'], w=24)
    return dashboard("pp-controller", "powerplane / Controller actions",
                     "Commands issued, what actuators applied, and how long it took.", L, [site_var()])


def emergencies() -> dict[str, Any]:
    L = Layout()
    L.add("stat", "Open emergencies", [OPEN_NOW], w=6, h=6, thresholds=[(1, "red")], **PCT)
    L.add("table", "Open now",
          [f'SELECT "active" AS "active", "summary" AS "summary", "deadline_in_s" AS "deadline_in_s" FROM '
           f'(SELECT last("active") AS "active", last("summary") AS "summary", last("deadline_in_s") AS '
           f'"deadline_in_s" FROM "pp_event" WHERE {WHERE} GROUP BY "kind", "level", "severity") '
           f'WHERE "active" = 1 GROUP BY "kind", "level", "severity"'], w=18, h=6,
          transformations=[{"id": "merge", "options": {}}])
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
           f'ORDER BY time DESC LIMIT 500'], w=24, h=10, transformations=[{"id": "merge", "options": {}}])
    return dashboard("pp-emergencies", "powerplane / Emergencies",
                     "Feed and UPS loss, breaker overload, cooling failure, GPU slowdown, telemetry loss.", L,
                     [site_var()], [events_annotation()])


DASHBOARDS = {"site-overview": site_overview, "power-tree": power_tree, "thermal": thermal,
              "controller-actions": controller, "emergencies": emergencies}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make(), indent=2) + "\n" for name, make in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
