"""The shipped Prometheus config and rules (compose/prometheus/): the real promtool accepts them and their
unit tests pass, every metric they name is one a powerplane process exports, and every alert links to a
runbook section that exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "compose" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool missing: apt-get install prometheus (`make test` does: scripts/ensure-debian-packages)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=PROM)


def test_promtool_check_config() -> None:
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout  # the rules/*.yml glob finds the shipped rules


def test_promtool_check_rules() -> None:
    assert RULES
    res = promtool("check", "rules", *(str(p) for p in RULES))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    """Each alert fires on the failure it is for, and stays quiet next to it (compose/prometheus/tests/)."""
    assert RULE_TESTS
    res = promtool("test", "rules", *(str(p) for p in RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    tested = set(re.findall(r"alertname: (\w+)", "".join(p.read_text() for p in RULE_TESTS)))
    assert tested >= set(alerts()), f"alerts without a promtool test: {sorted(set(alerts()) - tested)}"


def rules() -> list[dict[str, str]]:
    return [r for p in RULES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict[str, str]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_rules_name_only_metrics_the_services_export() -> None:
    """A renamed metric must not leave an alert silently watching nothing."""
    exported = exported_names()
    recorded = {r["record"] for r in rules() if "record" in r}
    for r in rules():
        for name in re.findall(r"\b(powerplane[_:][a-zA-Z0-9_:]*)", re.sub(r'"[^"]*"', "", r["expr"])):
            assert name in exported or name in recorded, f"{r.get('alert') or r.get('record')}: no metric {name}"
        for pattern in re.findall(r'__name__=~"([^"]+)"', r["expr"]):
            hits = [n for n in exported if re.fullmatch(pattern, n)]
            assert len(hits) >= 2, f"{r.get('record')}: {pattern} matches {hits}"


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    headings = {h.lower() for h in re.findall(r"^## (\w+)", (ROOT / "docs" / "runbooks.md").read_text(), re.M)}
    assert alerts()
    for name, rule in alerts().items():
        assert re.fullmatch(r"[A-Z][A-Za-z]+", name), f"{name}: alert names are CamelCase"
        assert rule["labels"]["severity"] in ("critical", "warning"), name  # the two routes of alertmanager.yml
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://") and url.endswith(f"#{name.lower()}"), f"{name}: runbook_url {url}"
        assert name.lower() in headings, f"{name}: no '## {name}' section in docs/runbooks.md"
