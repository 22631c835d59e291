"""`powerplane shadow estimate`: the twin's estimate of a shadow policy in charge, against the live one, on the
lab site; what a running shadow names of its policy; and the estimate on the live dashboard's shadow panel."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.capping import CapSettings
from controllers.shadow import ShadowController
from dashboards.live.server import load_estimate
from ops.cli import main
from ops.shadow_estimate import EstimateError, PolicySpec, estimate, spec_of_params
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"
FEED_LOSS = ROOT / "examples" / "scenarios" / "lab-feed-loss.toml"  # feed A lost at 60 s


@pytest.fixture(scope="module")
def polca_vs_none() -> dict[str, Any]:
    logging.getLogger("controllers").setLevel(logging.ERROR)
    site = load_site(LAB)
    return estimate(site, PolicySpec("polca"), PolicySpec("none", source="--shadow"), 90,
                    scenario=load_scenario(FEED_LOSS), scenario_name=str(FEED_LOSS))


def test_dropping_capping_shows_more_seconds_over_a_rating_and_more_energy(polca_vs_none: dict[str, Any]) -> None:
    doc = polca_vs_none
    live, shadow, change = doc["live"], doc["shadow"], doc["change"]
    # With feed A lost and no control the lab site runs over a rating for many seconds; the capping live
    # policy at most in the transfer second (test_evaluate.py). That is the shadow's effect, in its figures.
    assert shadow["seconds_over_rating"] >= live["seconds_over_rating"] + 5
    assert change["seconds_over_rating"] == shadow["seconds_over_rating"] - live["seconds_over_rating"]
    assert change["energy_kwh"] > 0 and shadow["commands_per_min"] == 0 < live["commands_per_min"]
    assert doc["kind"] == "twin estimate" and doc["duration_s"] == 90 and "Azure" in doc["trace"]
    assert live["grid_ramp_seconds_over"] is None  # the lab site and this scenario have no [grid] limits


def test_the_table_says_it_is_the_twins_estimate_and_under_what(polca_vs_none: dict[str, Any]) -> None:
    from ops.shadow_estimate import table

    text = table(polca_vs_none)
    assert text.startswith("The twin's estimate (not a measurement)") and "90 s simulated" in text
    assert "lab-feed-loss.toml" in text and "trace: Azure" in text
    over = next(line for line in text.splitlines() if line.startswith("seconds over a rating"))
    assert over.endswith("worse")


def test_an_unknown_policy_is_one_clear_line_and_a_nonzero_exit(capsys: Any) -> None:
    code = main(["shadow", "estimate", "--site-file", str(LAB), "--shadow", "polka", "--duration", "30"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "shadow policy 'polka'" in err and "no estimate" in err and "controller" in err
    with pytest.raises(EstimateError, match="live policy 'x'"):
        estimate(load_site(LAB), PolicySpec("x"), PolicySpec("none"), 10)


def test_a_running_shadow_names_its_policy_and_thresholds_on_each_command() -> None:
    site = load_site(LAB)
    keys = Keyring({"shadow": b"\x02" * 32}, "shadow")
    ctl = ShadowController(site, keys, CapSettings(cap_threshold=0.9, uncap_threshold=0.85), 30.0)
    cmd = ctl.command(1, np.array([0]), np.array([400.0]), "shedding", 1_000.0, action="release",
                      params={"knob": "power"})
    assert cmd.params["knob"] == "power" and keys.verify(cmd) is None  # the actuator's params kept, signed
    spec = spec_of_params(cmd.params, "pp.shadow")
    assert spec == PolicySpec("controller", 0.9, 0.85, "pp.shadow")
    assert spec_of_params({"knob": "power"}, "pp.shadow") is None  # a shadow from before the stamp


def test_the_written_estimate_is_what_the_dashboards_shadow_panel_shows(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "estimate.json"
    cfg = tmp_path / "candidate.toml"
    cfg.write_text("cap_threshold = 0.9\nuncap_threshold = 0.85\n")
    assert main(["shadow", "estimate", "--site-file", str(LAB), "--shadow-config", str(cfg), "--duration", "30",
                 "--write", str(path), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    shown = load_estimate(str(path))
    assert shown["shadow"]["policy"] == f"controller, cap 0.9 / uncap 0.85 (from {cfg})" == out["shadow"]["policy"]
    assert shown["live"]["policy"].startswith("controller, cap 0.8 / uncap 0.75")
    assert shown["duration_s"] == 30 and shown["written_s"] > 0
    assert "no estimate to show" in load_estimate(str(tmp_path / "missing.json"))["error"]
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert "not a `powerplane shadow estimate --write` file" in load_estimate(str(tmp_path / "other.json"))["error"]
