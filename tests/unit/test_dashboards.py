"""The Grafana dashboards in dashboards/json/: valid JSON that Grafana can provision and that an existing
Grafana's "Import dashboard" asks a datasource for; every panel wired to the datasource variable (never a
fixed datasource) with an InfluxQL query whose columns are all named; in step with dashboards/generate.py.
(tests/integration/test_dashboards_influxql.py runs every query.)"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
JSON_DIR = ROOT / "dashboards" / "json"
DASHBOARDS: dict[str, dict[str, Any]] = {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}
MACROS = {"timeFilter", "__interval"}


def queries_of(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, query) for every panel target, annotation and query variable of a dashboard."""
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield f"panel '{panel['title']}' target {t.get('refId')}", t.get("query", "")
    for a in annotations_of(dash):
        yield f"annotation '{a['name']}'", a["target"].get("query", "")
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            yield f"variable {v['name']}", v.get("query", "")


def annotations_of(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dash.get("annotations", {}).get("list", []))


def _top_level_select(q: str) -> str:
    """The projection of the outermost SELECT (between SELECT and its FROM, outside parentheses)."""
    m = re.match(r"\s*SELECT\s", q, re.IGNORECASE)
    assert m, f"not a SELECT: {q}"
    depth = 0
    for i in range(m.end(), len(q)):
        depth += {"(": 1, ")": -1}.get(q[i], 0)
        if depth == 0 and q[i:i + 6].upper() == " FROM ":
            return q[m.end():i]
    raise AssertionError(f"no FROM in: {q}")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def selected_columns(q: str) -> list[str]:
    """The column names a SELECT returns after time: each expression's alias."""
    out = []
    for expr in _split_top(_top_level_select(q)):
        m = re.search(r'\sAS\s+"([A-Za-z_][A-Za-z0-9_]*)"\s*$', expr)
        assert m, f"column without an alias ({expr.strip()}) in: {q}"
        out.append(m.group(1))
    return out


def test_there_are_the_five_dashboards() -> None:
    assert set(DASHBOARDS) == {"site-overview", "power-tree", "thermal", "controller-actions", "emergencies"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids), "two dashboards share a uid"


DS_VAR = {"type": "influxdb", "uid": "${datasource}"}


def test_every_panel_target_annotation_and_variable_uses_the_datasource_variable() -> None:
    """No fixed datasource uid anywhere: a Grafana whose InfluxDB has another uid still shows every panel."""
    for name, dash in DASHBOARDS.items():
        assert dash["panels"], f"{name}: no panels"
        ids = [p["id"] for p in dash["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for p in dash["panels"]:
            where = f"{name}: panel '{p['title']}'"
            assert p["datasource"] == DS_VAR, f"{where}: datasource {p['datasource']}"
            assert p["targets"], f"{where}: no query"
            for t in p["targets"]:
                assert t["datasource"] == DS_VAR, f"{where}: target {t['refId']} datasource {t['datasource']}"
                assert t.get("rawQuery") is True and t.get("query", "").strip(), f"{where}: empty query"
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{where}: off the grid"
        for a in annotations_of(dash):
            assert a["datasource"] == DS_VAR, f"{name}: annotation '{a['name']}'"
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                assert v["datasource"] == DS_VAR, f"{name}: variable {v['name']}"
        uids = {m for m in re.findall(r'"uid": "([^"]*)"', json.dumps(dash)) if m != "${datasource}"}
        assert uids == {dash["uid"]}, f"{name}: fixed datasource uid(s) {uids - {dash['uid']}}"


def test_import_asks_for_the_datasource_and_makes_it_the_variables_default() -> None:
    """What Grafana's "Import dashboard" does with the file: one datasource input, filled in wherever
    `${DS_INFLUXDB}` appears, which is the default of the datasource variable the panels use."""
    for name, dash in DASHBOARDS.items():
        inputs = dash["__inputs"]
        assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [("DS_INFLUXDB", "datasource", "influxdb")]
        assert {"type": "datasource", "id": "influxdb"}.items() <= next(
            r for r in dash["__requires"] if r["type"] == "datasource").items(), name
        ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
        assert [(v["name"], v["query"]) for v in ds_vars] == [("datasource", "influxdb")], name
        imported = json.loads(json.dumps(dash).replace("${DS_INFLUXDB}", "their-influx-uid"))
        assert imported["templating"]["list"][0]["current"]["value"] == "their-influx-uid", name
        assert "${DS_" not in json.dumps(imported), f"{name}: an input used but not declared"


def test_a_provisioned_grafana_picks_the_provisioned_datasource() -> None:
    """File provisioning fills in no inputs: the variable's default then matches the provisioned
    datasource by its name (Grafana matches a variable's current text when its value names nothing)."""
    ds = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    provisioned = ds["datasources"][0]
    assert provisioned["type"] == "influxdb"
    for name, dash in DASHBOARDS.items():
        current = dash["templating"]["list"][0]["current"]
        assert current["text"] == provisioned["name"], f"{name}: default {current['text']!r}"


def test_the_sdk_release_targets_composes_grafana() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    for name, dash in DASHBOARDS.items():
        grafana = next(r for r in dash["__requires"] if r["type"] == "grafana")
        assert image == f"grafana/grafana:{grafana['version']}", f"{name}: built for Grafana {grafana['version']}"


def test_every_query_is_influxql_with_named_columns_and_known_variables() -> None:
    for name, dash in DASHBOARDS.items():
        defined = {v["name"] for v in dash["templating"]["list"]}
        assert "datasource" in defined, name
        for where, q in queries_of(dash):
            assert "from(bucket" not in q and "|>" not in q, f"{name}: {where}: Flux, not InfluxQL"
            used = set(re.findall(r"\$(\w+)", q))
            assert used <= defined | MACROS, f"{name}: {where}: undefined variable(s) {used - defined - MACROS}"
            if not q.upper().startswith("SHOW "):
                assert selected_columns(q), where
                assert "$timeFilter" in q, f"{name}: {where}: not limited to the dashboard's time range"


def test_column_parser() -> None:
    q = 'SELECT sum("active") AS "open" FROM (SELECT last("active") AS "a" FROM "x") WHERE $timeFilter'
    assert selected_columns(q) == ["open"]
    assert selected_columns('SELECT percentile("l", 50) AS "p50", max("l") AS "m" FROM "y"') == ["p50", "m"]


def test_json_matches_the_generator() -> None:
    spec = importlib.util.spec_from_file_location("dash_generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rendered = mod.render()
    assert set(rendered) == {p.name for p in JSON_DIR.glob("*.json")}
    for fname, text in rendered.items():
        assert (JSON_DIR / fname).read_text() == text, f"{fname} differs: run python dashboards/generate.py"
