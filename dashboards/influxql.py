"""InfluxQL for grafana-foundation-sdk, and the import inputs Grafana's "Export for sharing" writes.

The SDK builds dashboards, panels, variables and thresholds, but ships no query type for InfluxDB (it has
Prometheus, Loki, ...); `Query` and `AnnotationTarget` are that missing piece, in the SDK's own shape
(a model with `to_json` and a builder), so panels take them like any other target.
"""

from __future__ import annotations

import typing
from typing import Any

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

PLUGIN = "influxdb"
# The import input: Grafana's "Import dashboard" asks for an InfluxDB datasource and puts its uid
# wherever `${DS_INFLUXDB}` appears (only the datasource variable's default: panels use `${datasource}`).
INPUT = "DS_INFLUXDB"
# The name of the datasource compose provisions (dashboards/provisioning/datasources/influxdb.yaml): the
# variable's default names it, so a provisioned Grafana, which fills no inputs, picks it by name.
PROVISIONED_NAME = "powerplane InfluxDB"
DS = dashboard.DataSourceRef(type_val=PLUGIN, uid="${datasource}")
PANEL_NAMES = {"stat": "Stat", "table": "Table", "timeseries": "Time series"}


class Query(cogvariants.Dataquery):
    """A raw InfluxQL panel target (what Grafana's InfluxDB query editor saves in raw mode)."""

    def __init__(self, query: str, ref_id: str = "A", result_format: str = "time_series") -> None:
        self.query = query
        self.ref_id = ref_id
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": DS, "query": self.query, "rawQuery": True,
                "resultFormat": self.result_format}


class QueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: str, ref_id: str = "A", result_format: str = "time_series") -> None:
        self._internal = Query(query, ref_id, result_format)

    def build(self) -> Query:
        return self._internal


class AnnotationTarget(dashboard.AnnotationTarget):
    """An InfluxQL annotation query, in the `target` form Grafana's InfluxDB plugin migrates the legacy
    top-level `query`/`textColumn`/`tagsColumn` into; a target that has its query is kept as it is."""

    def __init__(self, name: str, query: str, text_column: str, tags_column: str) -> None:
        super().__init__()
        self.name, self.query, self.text_column, self.tags_column = name, query, text_column, tags_column

    def to_json(self) -> dict[str, object]:
        return {"refId": "Anno", "query": self.query, "rawQuery": True, "queryType": "tags",
                "fromAnnotations": True, "textColumn": self.text_column, "tagsColumn": self.tags_column,
                "name": self.name}


class AnnotationTargetBuilder(cogbuilder.Builder[dashboard.AnnotationTarget]):
    def __init__(self, name: str, query: str, text_column: str, tags_column: str) -> None:
        self._internal = AnnotationTarget(name, query, text_column, tags_column)

    def build(self) -> AnnotationTarget:
        return self._internal


def import_header(panel_types: typing.Iterable[str], grafana_version: str) -> dict[str, Any]:
    """`__inputs` and `__requires`, as Grafana's "Export for sharing externally" writes them."""
    requires = [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": grafana_version},
                {"type": "datasource", "id": PLUGIN, "name": "InfluxDB", "version": "1.0.0"}]
    requires += [{"type": "panel", "id": t, "name": PANEL_NAMES[t], "version": ""} for t in sorted(set(panel_types))]
    return {
        "__inputs": [{"name": INPUT, "label": "InfluxDB", "type": "datasource", "pluginId": PLUGIN,
                      "pluginName": "InfluxDB",
                      "description": "The InfluxDB (InfluxQL) datasource the powerplane sink writes to"}],
        "__requires": requires,
    }
