"""`powerplane evaluate` with the twin's UPS signal (ops/evaluate.py `ups_signal`): a false on-battery trap is
acted on, refuted by the PDU meters within the bound and rolled back, with one faulty_signal event."""

from __future__ import annotations

import logging
from pathlib import Path

from ops.evaluate import run_policy
from powerplane.facility_checks import SIGNAL_BOUND_S
from powerplane.site_file import load_site
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_a_false_trap_in_evaluate_is_rolled_back_with_one_faulty_signal_and_no_second_over_a_rating() -> None:
    logging.getLogger("controllers").setLevel(logging.ERROR)
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-ups-false-trap-unpolled.toml")
    out = run_policy(site, "full", 150, scenario=sc)
    sig = out["facility_signal"]
    assert sig["ups_signal"] is True
    assert sig["faulty_signal_events"] == 1
    (rb,) = sig["rolled_back"]
    assert rb["lineup"] == "ups-b"
    assert 90.0 <= rb["signal_s"] < rb["rolled_back_s"] <= rb["signal_s"] + SIGNAL_BOUND_S + 1.0
    assert rb["capped_s"] <= rb["rolled_back_s"] - rb["signal_s"] + 30  # the caps released, not held to the end
    assert "1 refuted and rolled back" in sig["text"]
    assert out["seconds_over_rating"] == 0 and out["breaker_trips"] == 0


def test_without_the_ups_signal_evaluate_sees_no_facility_signal() -> None:
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-ups-false-trap-unpolled.toml")
    sig = run_policy(site, "full", 100, scenario=sc, ups_signal=False)["facility_signal"]
    assert sig["ups_signal"] is False and sig["faulty_signal_events"] == 0 and sig["counts"]["started"] == 0


def test_a_false_trap_the_ups_polls_end_raises_one_warning_while_the_real_loss_raises_none() -> None:
    # The twin polls each UPS every 10 s: ups-b's next poll says online before the meters' bound, and the
    # real feed A loss before it is confirmed by the meters: only the false trap is reported.
    logging.getLogger("controllers").setLevel(logging.ERROR)
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-ups-false-trap.toml")
    sig = run_policy(site, "full", 120, scenario=sc)["facility_signal"]
    assert sig["faulty_signal_events"] == 1 and sig["counts"]["unexplained"] == 1
    (rb,) = sig["rolled_back"]
    assert rb["lineup"] == "ups-b" and 90.0 <= rb["signal_s"] < rb["rolled_back_s"] <= rb["signal_s"] + 10.5
    assert sig["counts"]["confirmed"] == 1 and "1 of them never seen by the meters" in sig["text"]
