"""The shipped Alertmanager config: the real `amtool check-config` accepts it, its inhibit rules are the
sink's cause table, and every alert the sink raises has a runbook section its link lands on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.sinks.alertmanager.causes import ALERT_NAMES, INHIBITS, SITE_TELEMETRY_LOSS

ROOT = Path(__file__).resolve().parents[2]
# Every Alertmanager config in the repository (compose/alertmanager.yml today), wherever one is added.
SHIPPED = sorted(p for p in ROOT.rglob("alertmanager*.y*ml")
                 if not {".venv", ".git", "node_modules", ".powerplane"} & set(p.relative_to(ROOT).parts))


def test_every_shipped_config_passes_amtool_check_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool missing: apt-get install prometheus-alertmanager (`make test` does: "
                    "scripts/ensure-debian-packages)")
    assert SHIPPED, "no alertmanager*.yml found"
    for path in SHIPPED:
        res = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{path.relative_to(ROOT)}: amtool check-config failed:\n{res.stdout}{res.stderr}"
        assert "SUCCESS" in res.stdout


def _names(matcher: str) -> set[str]:
    m = re.fullmatch(r'alertname\s*(=~|=)\s*"([^"]*)"', matcher.strip())
    assert m is not None, f"not an alertname matcher: {matcher}"
    return set(m.group(2).split("|"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_inhibit_rules_are_the_sinks_cause_table(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    by_cause: dict[str, tuple[str, tuple[str, ...]]] = {}
    for rule in config["inhibit_rules"]:
        source, *scoped = rule["source_matchers"]
        if not source.startswith("alertname"):
            continue  # the severity rule: critical over warning on one level
        (cause,) = _names(source)
        (target,) = rule["target_matchers"]
        scope = [k for k in rule["equal"] if k != "site"] or ["site"]
        assert "site" in rule["equal"], f"{cause}: a cause never reaches across sites"
        # Two missing labels are equal to Alertmanager: a source without its scope label must not count.
        assert scoped == ([] if scope == ["site"] else [f'{scope[0]}=~".+"']), f"{cause}: {rule['source_matchers']}"
        by_cause[cause] = (scope[0], tuple(sorted(_names(target))))
    assert by_cause == {c: (s, tuple(sorted(t))) for c, (s, t) in INHIBITS.items()}
    assert config["route"]["group_by"] == ["site", "alertname"]  # one notification per alert and site


def test_every_alert_links_to_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for name in [*ALERT_NAMES.values(), SITE_TELEMETRY_LOSS]:
        assert f"\n## {name}\n" in runbooks, f"no runbook section for {name} (alerts link to #{name.lower()})"
    readme = (ROOT / "streams" / "sinks" / "alertmanager" / "README.md").read_text()
    for kind, name in ALERT_NAMES.items():
        assert f"| `{kind}` | `{name}` |" in readme, f"{kind} -> {name} is not in the sink README's table"
