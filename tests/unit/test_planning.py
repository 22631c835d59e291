"""Oversubscription planning: known answers on synthetic load, the effect of risk, N-1 and capping, and
`powerplane plan` end to end on the lab site."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from controllers.planning import Costs, PlanInputs, plan, plan_inputs, plan_level
from ops.cli import main
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"


def one_level(power_w: np.ndarray, floor_w: float, low_frac: float, limit_w: float) -> PlanInputs:
    """A site of one level (limit_w) fed by every rack, the same in every feed state."""
    r = power_w.shape[1]
    share = [np.ones((r, 1))] * 3
    return PlanInputs(power_w=power_w, floor_w=np.full(r, floor_w), low_frac=np.full(r, low_frac), share=share,
                      limit_w=[np.array([limit_w])] * 3, level_ids=["site"], level_kind=["site"],
                      own_gear=np.zeros(1, dtype=bool))


def spiky(seed: int = 1, t: int = 2000, racks: int = 10) -> np.ndarray:
    """Racks at 10 kW with independent 1 s spikes to 20 kW (2% of seconds each)."""
    rng = np.random.default_rng(seed)
    return 10e3 + 10e3 * (rng.random((t, racks)) < 0.02)


def test_constant_load_gives_the_exact_number_of_racks() -> None:
    p = np.full((60, 4), 10e3)  # 4 racks at 10 kW under 100 kW
    lp = plan_level(one_level(p, floor_w=5e3, low_frac=1.0, limit_w=100e3), 0, risk=1e-4)
    assert lp.extra_none == 6  # 10 racks x 10 kW = the limit
    assert lp.extra_capped == 16  # 20 racks x 5 kW floor = the limit; all of it low priority
    assert lp.pct_more == pytest.approx(100 * (16 - 6) / 6)
    assert lp.throttled_low_frac == pytest.approx(0.5)  # 200 kW demanded, 100 kW shed
    # Only half of each rack's sheddable power is low priority: 7.5 kW x (4 + k) of excess <= 100 kW.
    assert plan_level(one_level(p, 5e3, 0.5, 100e3), 0, risk=1e-4).extra_capped == 9


def test_value_uses_the_cost_figures() -> None:
    p = np.full((60, 4), 10e3)
    lp = plan_level(one_level(p, 5e3, 1.0, 100e3), 0, risk=1e-4, costs=Costs(rack_kw=50.0))
    assert lp.value["capital_avoided_usd_no_control"] == pytest.approx(6 * 50e3 * 9.5)
    assert lp.value["capital_avoided_by_capping_usd"] == pytest.approx(10 * 50e3 * 9.5)
    # 16 racks at 10 kW for a year at $0.04/kWh and PUE 1.2.
    assert lp.value["energy_cost_usd_per_year_capped"] == pytest.approx(160 * 8760 * 0.04 * 1.2)


def test_capping_hosts_more_racks_than_no_control_under_independent_spikes() -> None:
    lp = plan_level(one_level(spiky(), floor_w=6e3, low_frac=0.5, limit_w=200e3), 0, risk=1e-3)
    assert lp.extra_none is not None and lp.extra_capped is not None
    assert lp.extra_capped > lp.extra_none >= 1
    assert 0 < lp.throttled_low_frac < 0.5


def test_lower_risk_never_gives_more_racks() -> None:
    inp = one_level(spiky(), floor_w=6e3, low_frac=0.2, limit_w=200e3)
    risks = [0.0, 1e-3, 1e-2, 0.1]
    none = [plan_level(inp, 0, r).extra_none for r in risks]
    capped = [plan_level(inp, 0, r).extra_capped for r in risks]
    for seq in (none, capped):
        assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(seq))
        assert seq[0] < seq[-1]  # the risk really matters on spiky load


def test_n_minus_1_lowers_the_capped_answer_on_the_lab_site() -> None:
    site = load_site(LAB)
    p = np.full((30, site.n_racks), 50e3)
    inp = plan_inputs(site, p)
    top = [site.level("lab")]
    nominal, n1 = plan(inp, top, 1e-4)[0], plan(inp, top, 1e-4, n_minus_1=True)[0]
    assert n1.extra_capped is not None and nominal.extra_capped is not None
    assert n1.extra_capped < nominal.extra_capped
    assert n1.binding_capped is not None and n1.binding_capped.startswith("rpp-")  # one feed's RPP carries all
    assert n1.extra_none == nominal.extra_none  # no control is judged in the nominal state only


def test_plan_cli_on_the_lab_site_prints_the_table_and_writes_the_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--site", str(LAB), "--simulate-minutes", "2", "--json", str(out)]) == 0
    text = capsys.readouterr()
    assert "+no ctl" in text.out and "+capped" in text.out and "site-wide:" in text.out
    assert "ETA" in text.err  # progress on the terminal
    report = json.loads(out.read_text())
    assert report["seconds"] == 120 and report["racks"] == 8
    kinds = {lv["kind"] for lv in report["levels"]}
    assert kinds == {"rpp", "ups", "utility", "row", "hall", "site"}
    site = report["site_total"]
    assert site["level"] == "lab" and site["extra_capped"] >= site["extra_none"] >= 0
    assert site["value"]["capital_avoided_usd_capped"] == pytest.approx(site["extra_capped"] * 50e3 * 9.5)
    row = next(lv for lv in report["levels"] if lv["kind"] == "row")
    assert row["limit_w"] is None  # no own rating: JSON null, not Infinity
    assert any(line.split()[:2] == ["lab", "site"] for line in text.out.splitlines())


def test_plan_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--site", str(LAB), "--recording", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json not found" in err[0]
    assert main(["plan", "--site", str(LAB), "--simulate-minutes", "0.001"]) == 2
    assert "at least 0.02" in capsys.readouterr().err
    assert main(["plan", "--site", str(LAB), "--simulate-minutes", "1", "--kinds", "rack"]) == 2
    err = capsys.readouterr().err
    assert "cannot plan level kind rack" in err and "simulating" not in err  # refused before simulating


def test_plan_reads_rack_power_from_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from collectors.base import SourceContext
    from powerplane import topics
    from powerplane.recording import Recorded, RecordingWriter
    from sim.fleet import Fleet
    from sim.source import FleetSource

    site = load_site(LAB)
    fleet = Fleet(site, seed=4, epoch_s=1_790_000_000.0)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    w = RecordingWriter(tmp_path / "rec", [topics.TELEMETRY.name])
    for i, f in enumerate(f for _ in range(20) for f in src.read_batch()):
        w.add(Recorded(topics.TELEMETRY.name, 0, i, int(f.ts_s * 1000), f.key(), f.encode(), []))
    w.close()
    out = tmp_path / "plan.json"
    assert main(["plan", "--site", str(LAB), "--recording", str(tmp_path / "rec"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 19 <= report["seconds"] <= 21
    assert report["site_total"]["p99_load_w"] > 100e3  # eight racks of H100s, read from their PDU meters


def test_plan_assembles_racks_from_per_server_frames_as_the_worker_does(tmp_path: Path) -> None:
    """A recording of real collectors (one frame per server, no PDU meter) plans like the whole-rack one."""
    import dataclasses
    import math

    from ops.plan import power_from_recording
    from powerplane import topics
    from powerplane.recording import Recorded, RecordingWriter
    from sim.fleet import Fleet, rack_frames
    from tests.partial_frames import server_frames

    site = load_site(LAB)
    fleet = Fleet(site, seed=4, epoch_s=1_790_000_000.0)
    whole = [dataclasses.replace(f, pdu_power_w=[math.nan, math.nan]) for k in range(1, 11)
             for f in rack_frames(site, fleet.step(1.0), 1_790_000_000.0 + k, 1.0, k, "sim")]
    got = []
    for name, frames in (("whole", whole), ("parts", [p for f in whole for p in server_frames(f)])):
        w = RecordingWriter(tmp_path / name, [topics.TELEMETRY.name])
        for i, f in enumerate(frames):
            w.add(Recorded(topics.TELEMETRY.name, 0, i, int(f.ts_s * 1000), f.key(), f.encode(), []))
        w.close()
        got.append(power_from_recording(site, str(tmp_path / name), None))
    np.testing.assert_allclose(got[1], got[0], rtol=1e-9)
    assert got[0].shape[1] == site.n_racks and (got[0] > 10e3).all()
