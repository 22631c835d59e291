"""The Grafana dashboards in dashboards/json/: valid JSON that Grafana can provision, every panel wired
to the provisioned InfluxDB datasource with an InfluxQL query whose columns are all named, and in step
with dashboards/generate.py. (tests/integration/test_dashboards_influxql.py runs every query.)"""

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
    for a in dash["annotations"]["list"]:
        yield f"annotation '{a['name']}'", a.get("query", "")
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            yield f"variable {v['name']}", v.get("query", "")


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


def test_every_panel_has_the_provisioned_datasource_and_a_query() -> None:
    ds = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    for name, dash in DASHBOARDS.items():
        assert dash["panels"], f"{name}: no panels"
        ids = [p["id"] for p in dash["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for p in dash["panels"]:
            where = f"{name}: panel '{p['title']}'"
            assert p["datasource"] == {"type": "influxdb", "uid": uid}, where
            assert p["targets"], f"{where}: no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == uid, where
                assert t.get("rawQuery") is True and t.get("query", "").strip(), f"{where}: empty query"
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{where}: off the grid"
        for a in dash["annotations"]["list"]:
            assert a["datasource"]["uid"] == uid


def test_every_query_is_influxql_with_named_columns_and_known_variables() -> None:
    for name, dash in DASHBOARDS.items():
        defined = {v["name"] for v in dash["templating"]["list"]}
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
