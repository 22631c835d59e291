"""The burst reserve of the reconfiguration forecast (controllers/burst.py, ops/reconfigure.py): critical pools
keep capacity for the bursts they have recently needed, so the full policy serves a bursty trace's critical
requests at least as well as no control, and stays within every rating after a feed loss."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.burst import BurstMemory, BurstSettings
from controllers.reconfig import PoolConfigs, plan_pools
from ops.evaluate import run_policy
from powerplane.serving_profile import ServingProfile, class_key
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.scenario import scenario_from_dict
from sim.trace_gen import generate_bursty
from sim.workload import default_workload

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


def test_a_burst_is_remembered_through_a_long_gap_and_fades_over_hours() -> None:
    mem = BurstMemory(1, BurstSettings(memory_s=600, peak_half_life_s=3600.0))
    for _ in range(60):
        mem.add(np.array([300.0]))  # a one-minute burst of 300 requests/s
    for _ in range(300):
        mem.add(np.array([0.0]))  # then five quiet minutes: the burst is within the memory's p99
    assert mem.reserve_rps()[0] == pytest.approx(300.0)
    for _ in range(600):
        mem.add(np.array([0.0]))  # fifteen: out of the memory, but held, less 15 min of a 1 h half-life
    assert mem.reserve_rps()[0] == pytest.approx(300.0 * 0.5 ** (900 / 3600), rel=0.02)
    for _ in range(4 * 3600):
        mem.add(np.array([0.0]))
    assert mem.reserve_rps()[0] < 300.0 / 8  # four half-lives later it has mostly faded
    with pytest.raises(ValueError, match=r"BurstMemory\.seed: history has shape"):
        mem.seed(np.zeros(10))
    with pytest.raises(ValueError, match=r"BurstSettings\.quantile"):
        BurstSettings(quantile=1.5)


def test_a_floor_keeps_a_critical_pools_gpus_at_zero_load() -> None:
    prof = ServingProfile.load()
    crit = prof.class_index(class_key("llama3-70b", "H100-SXM", 0.4, 0.1, 256, 2048))
    cur = PoolConfigs.of([16], [8], [1980.0])
    free = plan_pools(prof, np.array([crit]), np.array([0.0]), cur, np.array([128]))
    held = plan_pools(prof, np.array([crit]), np.array([0.0]), cur, np.array([128]), min_gpus=np.array([15 * 8]))
    assert free.config.instances[0] < 15  # without a floor a quiet pool sheds instances at once
    assert held.config.instances[0] * held.config.tp[0] >= 15 * 8  # with it, one instance at most


def crit_ok(out: dict[str, Any]) -> float:
    return float(out["slo"]["inference-critical"]["ttft_within_slo"])


def test_full_policy_on_a_bursty_trace_serves_critical_requests_as_well_as_no_control(site: Site) -> None:
    logging.getLogger("controllers").setLevel(logging.ERROR)
    trace = generate_bursty("mmpp", seconds=600.0, seed=1)
    assert trace.burstiness() >= 7.0
    wl = default_workload(site, trace)
    loss_at = 20
    feed = scenario_from_dict({"name": "feed-a", "events": [{"at_s": loss_at, "kind": "lose_feed", "feed": "A",
                                                             "duration_s": 90}]}, site=site)
    none = run_policy(site, "none", 150, workload=wl)
    steady = run_policy(site, "full", 150, workload=wl)
    lost = run_policy(site, "full", 150, workload=wl, scenario=feed)
    # Measured (150 s): none 91.7%, full 94.7% steady and with feed A lost (before the burst reserve, 180 s:
    # 10.4% and 0.15%).
    assert crit_ok(steady) >= crit_ok(none) - 0.01, (crit_ok(steady), crit_ok(none))
    assert crit_ok(lost) >= crit_ok(none) - 0.01, (crit_ok(lost), crit_ok(none))
    t, worst = np.asarray(lost["series"]["t_s"]), np.asarray(lost["series"]["worst_frac"])
    over_after = t[(worst > 1.0) & (t > loss_at + 1)]
    assert over_after.size == 0, f"over a rating at {over_after.tolist()} s"
    # The reserve costs energy, but the full policy still spends less per processed token than no control.
    assert steady["energy_per_processed_token_j"] < none["energy_per_processed_token_j"]
