"""Digital twin scenarios: the shipped examples, validation, and events taking effect on time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.refsite import reference_site
from powerplane.site import Site
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim import Twin, default_workload, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"
SCEN = ROOT / "examples" / "scenarios"


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(LAB)


def test_shipped_examples_load_and_resolve(lab: Site) -> None:
    files = sorted(SCEN.glob("*.toml"))
    assert len(files) >= 3
    ref = reference_site()
    for f in files:
        sc = load_scenario(f)
        site = lab if sc.site == "lab" else ref
        assert sc.site == site.name
        wl = sc.workload_for(site, default_workload(site))  # with the scenario's own training job
        sc.check(site, [p.name for p in wl.pools], [j.name for j in wl.jobs])
        assert sc.duration_s and (sc.events or sc.demand_response or sc.training_job)


def test_errors_are_all_reported_with_paths(lab: Site) -> None:
    with pytest.raises(ConfigError) as e:
        scenario_from_dict({"name": "bad", "colour": 1, "events": [
            {"at_s": 1, "kind": "meteor"},
            {"kind": "lose_feed", "feed": "C"},
            {"at_s": 5, "kind": "cooling_failure", "zone": "zone-1", "capacity_frac": 2.0, "pools": []},
            {"at_s": 5, "kind": "stuck_sensor", "rack": "rack-01", "sensor": "smell"},
            {"at_s": -1, "kind": "restore_level", "level": "pdu-a01", "duration_s": 3},
        ]})
    msg = str(e.value)
    for frag in ("colour: unknown key", "events[0].kind: unknown event kind 'meteor'", "events[1].at_s: missing",
                 "events[1].feed", "events[2].capacity_frac", "events[2].pools: unknown key",
                 "events[3].sensor", "events[4].at_s", "events[4].duration_s: unknown key"):
        assert frag in msg, frag
    sc = scenario_from_dict({"name": "names", "site": "other", "events": [
        {"at_s": 1, "kind": "lose_level", "level": "rack-01"},
        {"at_s": 1, "kind": "lose_level", "level": "nope"},
        {"at_s": 1, "kind": "cooling_failure", "zone": "zone-9"},
        {"at_s": 1, "kind": "load_surge", "factor": 2, "pools": ["ghost"]},
        {"at_s": 1, "kind": "telemetry_dropout", "racks": ["rack-99"]},
        {"at_s": 1, "kind": "stuck_sensor", "rack": "rack-01", "sensor": "inlet", "index": 7},
        {"at_s": 1, "kind": "job_stop", "job": "nobody"},
    ]})
    with pytest.raises(ConfigError) as e:
        Twin(lab, scenario=sc)
    msg = str(e.value)
    for frag in ("site: scenario is for site 'other'", "events[0].level: 'rack-01' is a rack", "unknown level 'nope'",
                 "unknown cooling zone 'zone-9'", "unknown pool 'ghost'", "unknown rack 'rack-99'",
                 "events[5].index: 7 out of range", "unknown job 'nobody'"):
        assert frag in msg, frag


def test_a_file_with_several_mistakes_reports_them_all_at_once(lab: Site, tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("""name = "bad"
colour = "red"

[[events]]
at_s = 10
kind = "meteor"

[[events]]
at_s = 20
kind = "lose_feed"
feed = "A"
duration_s = -5

[[events]]
at_s = 30
kind = "telemetry_dropout"
racks = ["rack-01", "rack-99"]
""")
    with pytest.raises(ConfigError) as e:
        load_scenario(f, site=lab)
    assert e.value.source == str(f)
    assert str(e.value).startswith(f"{f}: 4 error(s)\n")
    assert sorted(e.value.errors) == sorted([
        "colour: unknown key",
        "events[0].kind: unknown event kind 'meteor' (known: lose_feed, lose_level, restore_level, cooling_failure, "
        "load_surge, telemetry_dropout, stuck_sensor, job_start, job_stop, false_trap)",
        "events[1].duration_s: input should be greater than or equal to 0, got -5",
        "events[2].racks[1]: unknown rack 'rack-99'",
    ])
    # Without a site the file's own mistakes are reported; the names wait for the twin.
    with pytest.raises(ConfigError) as e:
        load_scenario(f)
    assert len(e.value.errors) == 3


def test_event_params_keep_the_values_as_written() -> None:
    sc = scenario_from_dict({"events": [{"at_s": 5, "kind": "load_surge", "factor": 2, "priority": "training"}]},
                            source="dir/surge.toml")
    assert sc.name == "surge"  # the file's stem when the file names none
    assert sc.events[0].at_s == 5.0 and sc.events[0].duration_s is None
    assert dict(sc.events[0].params) == {"factor": 2, "priority": "training"}
    assert str(dict(sc.events[0].params)) == "{'factor': 2, 'priority': 'training'}"  # as the twin logs it


def test_acceptance_scenario_feed_loss_then_cooling(lab: Site) -> None:
    sc = load_scenario(SCEN / "lab-feed-loss-and-cooling.toml")
    tw = Twin(lab, scenario=sc, seed=31)
    frames = tw.run(sc.duration_s or 180)
    by_t = {round(f.t_s): f for f in frames}
    events = [e for f in frames for e in f.events]
    assert any("start lose_feed" in e for e in events) and any("end lose_feed" in e for e in events)
    # Feed A carries nothing from 20 s to 80 s, everything is on B; then both again.
    assert by_t[20].rack_feed_power_w[:, 0].sum() > 0
    for t in (21, 50, 80):
        assert by_t[t].rack_feed_power_w[:, 0].sum() == 0.0
        np.testing.assert_allclose(by_t[t].rack_feed_power_w[:, 1], by_t[t].rack_power_w)
    assert by_t[81].rack_feed_power_w[:, 0].sum() > 0.4 * by_t[81].site_power_w
    # Cooling at 50% from 40 s: supply flat before, rising while the heat exceeds the capacity.
    assert by_t[40].zone_supply_c[0] == pytest.approx(20.0)
    assert by_t[100].zone_supply_c[0] > 23.0
    assert by_t[160].zone_supply_c[0] > by_t[100].zone_supply_c[0]
    assert by_t[175].zone_supply_c[0] < by_t[160].zone_supply_c[0]  # capacity back at 160 s
    # Telemetry faults.
    r3 = lab.rack_index("rack-03")
    a, b = lab.rack_gpu_start[r3], lab.rack_gpu_start[r3 + 1]
    for t in (31, 40, 45):
        f = by_t[t]
        assert np.all(np.isnan(f.power_w[a:b])) and np.all(np.isnan(f.inlet_c[r3]))
        assert np.all(np.isnan(f.pdu_power_w[r3]))
    assert np.isnan(by_t[47].power_w[a:b]).mean() < 0.01
    r5 = lab.rack_index("rack-05")
    stuck = [by_t[t].inlet_c[r5, 0] for t in range(12, 110)]
    assert len(set(stuck)) == 1  # frozen while the true inlet warms
    assert by_t[109].rack_inlet_true_c[r5] > by_t[12].rack_inlet_true_c[r5] + 3
    assert by_t[120].inlet_c[r5, 0] != stuck[0]


def test_surge_and_job_churn(lab: Site) -> None:
    sc = load_scenario(SCEN / "lab-surge-and-job-churn.toml")
    tw = Twin(lab, scenario=sc, seed=32)
    frames = tw.run(sc.duration_s or 150)
    crit = [i for i, p in enumerate(tw.pools) if p.spec.priority == "inference-critical"]
    rate = np.array([f.pools.arrivals[crit].sum() for f in frames])
    assert rate[12:40].mean() > 1.6 * np.r_[rate[:10], rate[42:60]].mean()
    j = [x.name for x in tw.workload.jobs].index("train-1")
    assert frames[59].jobs.phase[j] != 0 and all(frames[t].jobs.phase[j] == 0 for t in range(61, 89))
    assert frames[95].jobs.phase[j] != 0
    g = lab.rack_gpu_start[lab.rack_index("rack-02")] + 3
    held = {frames[t].power_w[g] for t in range(21, 79)}
    assert len(held) == 1
