"""The evaluation report's charts: the scenario's events and the policies' own as labelled vertical lines,
the site's and the worst breaker's limits as dashed lines, and axes labelled with the data's true range."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ops.evaluate import run_policy
from ops.report import write_report
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"
SCENARIO = ROOT / "examples" / "scenarios" / "lab-feed-loss-and-cooling.toml"  # feed A lost 20-80 s
NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    from sim.scenario import load_scenario

    logging.getLogger("controllers").setLevel(logging.ERROR)
    site, sc = load_site(LAB), load_scenario(SCENARIO)
    results = {p: run_policy(site, p, 90, scenario=sc) for p in ("none", "full")}
    out = tmp_path_factory.mktemp("report")
    meta = {"site": "lab", "scenario": str(SCENARIO), "workload": "default", "duration_s": 90, "seed": 0,
            "wall_s": 1.0}
    write_report(out, meta, {k: dict(v) for k, v in results.items()})
    return out, results


def _svg(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _labels(root: ET.Element, cls: str) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{NS}text") if t.get("class") == cls]


def test_charts_mark_the_feed_loss_and_its_restore_and_the_policies_own_events(
        report: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, results = report
    for name in ("site_power.svg", "worst_breaker.svg", "critical_slo.svg"):
        root = _svg(out / name)
        tips = ["".join(t.itertext()) for line in root.iter(f"{NS}line") if line.get("class") == "marker"
                for t in line.iter(f"{NS}title")]
        assert any(t == "start lose_feed feed=A at 20 s" for t in tips), tips
        assert any(t == "end lose_feed feed=A at 80 s" for t in tips), tips
        # The full policy's own events: an emergency it detected (the feed loss) and its reconfigurations.
        assert any(t.startswith("full: emergency feed_loss") for t in tips), tips
        assert any(t.startswith("full: reconfiguration") for t in tips) == bool(
            results["full"]["commands_by_action"].get("reconfigure")), tips
        assert _labels(root, "marker-label")  # labelled, not only tooltips


def test_charts_draw_the_site_and_breaker_limits_and_label_the_true_range(
        report: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, results = report
    lim = results["full"]["limits"]
    site_limits = _labels(_svg(out / "site_power.svg"), "limit-label")
    assert any(s.startswith("site rating: ") for s in site_limits), site_limits
    assert any(s.startswith("site derated limit: ") for s in site_limits), site_limits
    assert any(s == f"one feed's rating: {lim['feed_rated_mw']:.4g} MW" for s in site_limits), site_limits
    worst = _svg(out / "worst_breaker.svg")
    labels = _labels(worst, "limit-label")
    assert lim["worst_level"] and f"rating of {lim['worst_level']}: 1 x" in labels, labels
    assert "derated limit: 0.8 x" in labels, labels
    # The y labels are the data's own lowest and highest value (not bounds padded by 5 %), the x labels its
    # first and last second.
    fracs = [v for r in results.values() for v in r["series"]["worst_frac"]]
    assert _labels(worst, "ytick") == [f"{max(fracs):.4g} x", f"{min(fracs):.4g} x"]
    ts = [v for r in results.values() for v in r["series"]["t_s"]]
    assert _labels(worst, "xtick") == [f"{min(ts):.0f} s", f"{max(ts):.0f} s"]
