"""Reconfiguration coordinated with capping (controllers/coordination.py, ops/reconfigure.py): no change that
raises a capped level's power, none in single-feed operation, and none over a rating after a feed loss."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest

import ops.evaluate
from controllers.coordination import PlantState, coordinate, raises_power
from ops.evaluate import run_policy
from ops.reconfigure import Reconfigurer
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.scenario import scenario_from_dict
from sim.trace_gen import generate_bursty
from sim.workload import default_workload

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


def plant(site: Site, limit_w: np.ndarray | None = None, alive: np.ndarray | None = None) -> PlantState:
    n = len(site.level_ids)
    return PlantState(np.zeros(n), np.ones(n, dtype=bool) if alive is None else alive,
                      site.gpu_max_w.copy() if limit_w is None else limit_w, np.full(site.n_gpus, 1980.0))


def test_a_change_that_raises_a_capped_levels_power_is_deferred_with_its_reason(site: Site) -> None:
    pool = np.arange(site.rack_gpu_start[0], site.rack_gpu_start[1])  # rack 0's GPUs
    limits = site.gpu_max_w.copy()
    limits[int(site.rack_gpu_start[1])] = 400.0  # capping holds a GPU of the neighbouring rack down
    _, derated = site.limits_w("normal")
    raising = np.array([True, False])
    v = coordinate(site, plant(site, limits), [pool, pool], raising, np.array([5e3, -5e3]), derated)
    assert not v.allow[0] and "is capped" in v.reasons[0]
    assert v.allow[1]  # a change that lowers power always goes
    # Nothing capped: the same change goes, as long as it fits.
    assert coordinate(site, plant(site), [pool], raising[:1], np.array([5e3]), derated).allow[0]
    # ... and one that would take a level over its derated limit waits, naming it.
    v = coordinate(site, plant(site), [pool], raising[:1], np.array([1e9]), derated)
    assert not v.allow[0] and "over its limit" in v.reasons[0]


def test_no_raise_in_single_feed_operation(site: Site) -> None:
    pool = np.arange(site.rack_gpu_start[0], site.rack_gpu_start[1])
    alive = np.ones(len(site.level_ids), dtype=bool)
    alive[site.level_feed == 0] = False  # feed A lost
    _, derated = site.limits_w("A-lost")
    v = coordinate(site, plant(site, alive=alive), [pool], np.array([True]), np.array([1.0]), derated)
    assert not v.allow[0] and "single-feed" in v.reasons[0]
    # What counts as raising: more instances, a clock above the lowest lock now, more predicted power.
    locks = np.array([1400.0, 1980.0])
    assert raises_power(4, 5, 1400.0, locks, 1.0, 1.0)
    assert raises_power(4, 4, 1600.0, locks, 1.0, 1.0)  # above the thermal policy's 1400 MHz lock
    assert not raises_power(4, 3, 1400.0, locks, 2.0, 1.0)


def test_full_policy_on_a_bursty_trace_is_never_over_a_rating_after_the_feed_transfer(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger("controllers").setLevel(logging.ERROR)
    # The busiest-second forecast for every pool (no burst reserve): it scales pools down in the trace's
    # gaps and up in its bursts, so the coordination has scale-ups to refuse during the loss. (With the
    # reserve, critical pools hold their capacity and need none: tests/unit/test_burst_reserve.py.)
    monkeypatch.setattr(ops.evaluate, "Reconfigurer", functools.partial(Reconfigurer, burst=None))
    trace = generate_bursty("mmpp", seconds=600.0, seed=1)
    assert trace.burstiness() >= 7.0
    loss_at = 20
    sc = scenario_from_dict({"name": "feed-a", "events": [{"at_s": loss_at, "kind": "lose_feed", "feed": "A",
                                                           "duration_s": 90}]}, site=site)
    out = run_policy(site, "full", 120, workload=default_workload(site, trace), scenario=sc)
    t, worst = np.asarray(out["series"]["t_s"]), np.asarray(out["series"]["worst_frac"])
    over_after = t[(worst > 1.0) & (t > loss_at + 1)]
    assert over_after.size == 0, f"over a rating at {over_after.tolist()} s"
    assert out["reconfig_deferred"], "the loss should have held some reconfiguration back"
    assert any("single-feed" in why for why in out["reconfig_deferred"])
