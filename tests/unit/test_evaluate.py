"""`powerplane evaluate`: the closed loop on the lab twin, four policies side by side, report and metrics."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.capping import BREAKER_KINDS
from ops.cli import main
from ops.evaluate import Tally, oversubscription, run_policy, static_caps_w
from ops.report import savings_split, write_report
from powerplane.site import KIND, Site
from powerplane.site_file import load_site
from sim.scenario import load_scenario
from sim.serving import Requests
from sim.slo import SloSpec
from sim.workload import default_workload

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"
SCENARIO = ROOT / "examples" / "scenarios" / "lab-feed-loss-and-cooling.toml"  # feed A lost, zone at 50 %


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.fixture(scope="module")
def runs(site: Site) -> dict[str, dict[str, Any]]:
    logging.getLogger("controllers").setLevel(logging.ERROR)
    sc = load_scenario(SCENARIO)
    # Absolute SLOs (0.4 s / 0.1 s): the reconfiguration's serving profile is measured against them. Under
    # the relative default (0.25 s floor) the full policy keeps 98.6 % here (docs/performance.md, 2026-12-05).
    wl = replace(default_workload(site), slo=SloSpec(kind="absolute"))
    return {p: run_policy(site, p, 150, scenario=sc, workload=wl) for p in ("none", "static", "polca", "full")}


def test_static_caps_fit_every_breaker_with_either_feed_lost(site: Site) -> None:
    caps = static_caps_w(site)
    assert np.all(caps < site.gpu_max_w) and np.all(caps >= site.gpu_min_w)
    rack_w = np.bincount(site.server_rack, weights=site.server_input_w(caps), minlength=site.n_racks)
    brk = np.isin(site.level_kind, [KIND[k] for k in BREAKER_KINDS])
    for mode in ("A-lost", "B-lost"):
        _, derated = site.limits_w(mode)
        loads = site.rollup_w(rack_w.astype(np.float64), mode)
        assert np.all(loads[brk & (derated > 0)] <= derated[brk & (derated > 0)] + 1e-6)


def test_the_full_policy_keeps_the_inlet_and_the_critical_slo_where_no_control_does_not(
        runs: dict[str, dict[str, Any]]) -> None:
    none, full, polca = runs["none"], runs["full"], runs["polca"]
    # Without control the half-cooled zone runs over the allowable inlet; the thermal policy prevents it.
    assert none["seconds_inlet_over_limit"] > 0 and full["seconds_inlet_over_limit"] == 0
    assert full["inlet_max_c"] < none["inlet_max_c"] - 3.0
    # With feed A lost the uncontrolled lab site runs a level over its rating (calibrated GPUs draw ~460 W
    # while serving). Static caps and the full policy hold every level within it throughout; POLCA, which
    # only reacts to what it measured, may be over in the transfer second itself (issue 14's target counts
    # from after it). No breaker trips.
    assert none["seconds_over_rating"] > 0
    assert runs["static"]["seconds_over_rating"] == full["seconds_over_rating"] == 0
    assert polca["seconds_over_rating"] <= 1
    for r in runs.values():
        assert r["breaker_trips"] == 0
    # Inference-critical stays within its SLO; low-priority work paid for it.
    assert full["slo"]["inference-critical"]["ttft_within_slo"] >= 0.99
    # (Not by a larger throttled share: with the burst reserve critical pools keep every instance at the
    # top clock, so capping caps them as much as the slimmed batch pools, 31.3% vs 31.0% here, against 6.1%
    # vs 30.6% before: docs/performance.md, burst reserve. The batch SLO is where low priority pays: 63 % within
    # its SLO against critical's 99.99 %; 58 % before climbs during the zone's own load steps were no longer
    # extrapolated, with the inlet 26.4 C then and 26.6 C now against its 32 C limit.)
    assert full["slo"]["inference-batch"]["ttft_within_slo"] < 0.7 * full["slo"]["inference-critical"][
        "ttft_within_slo"]
    # Less energy per token than no control; the policies issued (signed, applied) commands.
    assert full["energy_per_token_j"] < 0.9 * none["energy_per_token_j"]
    assert none["commands"] == 0 < polca["commands"] < full["commands"]
    assert none["seconds"] == full["seconds"] == 150


def test_report_and_metrics_say_which_targets_are_met(site: Site, runs: dict[str, dict[str, Any]],
                                                      tmp_path: Path) -> None:
    results = {k: dict(v) for k, v in runs.items()}
    oversub = oversubscription(site, results["none"]["rack_power_w"])
    assert oversub["extra_racks_capped"] >= oversub["extra_racks_no_control"] >= 0
    meta = {"site": "lab", "scenario": str(SCENARIO), "workload": "default", "duration_s": 150, "seed": 0,
            "wall_s": 1.0}
    path = write_report(tmp_path, meta, results, oversub)
    text = path.read_text()
    assert "| metric | none | static | polca | full |" in text
    assert "## Oversubscription" in text and "more racks hosted" in text
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [t["target"] for t in data["targets"]] == [
        "zero seconds above any breaker rating", ">= 99% of inference-critical requests within SLO",
        ">= 30% more racks than without control", ">= 40% less energy per token than no control"]
    assert all(t["met"] in (True, False) for t in data["targets"])
    assert set(data["results"]) == {"none", "static", "polca", "full"}
    # Energy per token over prompt + output and per request, beside the generated-token figure it replaces.
    assert "| inference GPU energy per generated token (J) |" in text
    assert "| ... per processed token, prompt + output (J) |" in text and "| ... per request finished (kJ) |" in text
    for r in data["results"].values():
        assert r["prompt_tokens"] > 3 * r["tokens"]  # the conversation trace: 1,155 prompt to 211 output tokens
        assert r["energy_per_processed_token_j"] < r["energy_per_token_j"] / 4
        assert r["energy_per_request_j"] == pytest.approx(r["pool_energy_kwh"] * 3.6e6 / r["completed_requests"])
    # What the full policy saved against no control splits into work not done and the same work for less.
    split = data["results"]["full"]["savings_vs_none"]
    assert split["saved_kwh"] > 0
    assert split["work_not_done_kwh"] + split["efficiency_kwh"] == pytest.approx(split["saved_kwh"])
    assert "## Energy saved against no control" in text and "| ... work not done (kWh) |" in text
    for svg in ("site_power.svg", "worst_breaker.svg", "critical_slo.svg"):
        root = ET.parse(tmp_path / svg).getroot()  # well-formed SVG
        assert root.tag.endswith("svg") and f"]({svg})" in text


def test_cli_evaluate_writes_the_report_and_refuses_an_unknown_policy(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--site", str(LAB), "--duration", "20", "--policy", "none,polca",
               "--out", str(tmp_path / "ev")])
    out = capsys.readouterr()
    assert rc == 0 and "## Targets" in out.out and "ETA" in out.err
    assert (tmp_path / "ev" / "report.md").exists() and (tmp_path / "ev" / "metrics.json").exists()
    rc = main(["evaluate", "--site", str(LAB), "--policy", "polka", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown polka" in err and err.count("\n") == 1


def test_savings_split_charges_work_not_done_at_the_baseline_energy_per_token() -> None:
    none = {"pool_energy_kwh": 10.0, "tokens": 1e6, "prompt_tokens": 4e6, "energy_per_processed_token_j": 7.2}
    run = {"pool_energy_kwh": 7.0, "tokens": 0.9e6, "prompt_tokens": 3.6e6}
    # 0.5M tokens not processed x 7.2 J = 1 kWh of the 3 kWh saved; 2 kWh is the same work for less energy.
    assert savings_split(run, none) == pytest.approx({"saved_kwh": 3.0, "work_not_done_kwh": 1.0,
                                                      "efficiency_kwh": 2.0})


def test_percentiles_include_every_sample_not_only_the_first(site: Site) -> None:
    """500K fast requests, then 500K slow ones (a feed loss after the first minute): the p99 is a slow one.
    Keeping the first 400K samples, as the tally did, reported the fast p99 (0.06 s)."""
    tally = Tally(site)
    tally.arrivals[0] = 1e6
    rng = np.random.default_rng(0)
    fast, slow = rng.uniform(0.04, 0.06, 500_000), rng.uniform(1.9, 2.1, 500_000)
    no_decode = type("PoolSeconds", (), {"decode_tokens": np.zeros(1), "tbt_mean_s": np.full(1, np.nan)})()
    for part in np.split(np.concatenate([fast, slow]), 20):  # one step's requests at a time
        n = part.size
        req = Requests(pool=np.zeros(n, dtype=np.int64), t_arrival_s=np.zeros(n), ttft_s=part,
                       prompt_tokens=np.full(n, 100.0), output_tokens=np.full(n, 10.0))
        tally.add_latencies(req, np.zeros(1, dtype=np.int64), no_decode)
    crit = tally.summary()["slo"]["inference-critical"]
    exact = np.quantile(np.concatenate([fast, slow]), [0.25, 0.99])
    assert crit["ttft_p99_s"] == pytest.approx(exact[1], rel=0.005) and crit["ttft_p99_s"] > 1.9
    assert tally.ttft[0].quantile(0.25) == pytest.approx(exact[0], rel=0.005)
    assert tally.ttft[0].count == 1_000_000 and tally.prompt_tokens == 1e8
    # TBT samples are weighted by the decode tokens they stand for: 1 token at 1 s against 99 at 10 ms.
    pools = type("PoolSeconds", (), {"decode_tokens": np.array([1.0, 99.0]), "tbt_mean_s": np.array([1.0, 0.01])})()
    empty = Requests(*(np.zeros(0) for _ in range(5)))
    tally.add_latencies(empty, np.zeros(2, dtype=np.int64), pools)
    assert tally.summary()["slo"]["inference-critical"]["tbt_p50_s"] == pytest.approx(0.01, rel=0.005)
