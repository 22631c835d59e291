"""Thermal policy: as a zone's thermal headroom shrinks, route away first, then slow low priority, then
shed heat; a climbing inlet acts before it gets there; stages are left with hysteresis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controllers.thermal import STAGES, ThermalSettings, decide_thermal, effective_headroom_c, zone_stage
from powerplane.site import PRIORITIES, Site
from powerplane.site_file import load_site

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
T = ThermalSettings()
NAN = np.array([np.nan])


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


def stage_at(h: float, prev: str = "normal", ttl: float = np.nan) -> str:
    eff = effective_headroom_c(np.array([h]), np.array([ttl]), T)
    return STAGES[int(zone_stage(eff, np.array([STAGES.index(prev)]), T)[0])]


def test_stages_deepen_as_headroom_shrinks() -> None:
    assert [stage_at(h) for h in (8.0, 3.5, 2.0, 1.0, 0.2, -1.0)] == \
        ["normal", "route", "slow", "slow2", "shed", "shed"]


def test_stages_are_left_only_past_the_hysteresis() -> None:
    assert stage_at(2.7, prev="slow") == "slow"  # entered below 2.5: held until 3.5
    assert stage_at(3.6, prev="slow") == "route"
    assert stage_at(4.5, prev="route") == "route"
    assert stage_at(5.1, prev="route") == "normal"


def test_a_climbing_inlet_acts_before_the_headroom_is_gone() -> None:
    # 6 C of headroom but the limit 150 s away at the current slope: 2 minutes ahead only 1.2 C is left.
    assert stage_at(6.0, ttl=150.0) == "slow2"
    assert stage_at(6.0, ttl=3_600.0) == "normal"
    assert stage_at(6.0) == "normal"  # flat or falling


def test_decision_routes_away_then_slows_only_low_priority(site: Site) -> None:
    n_z = site.levels_of_kind("zone").size
    crit = site.gpu_priority == PRIORITIES.index("inference-critical")
    load = np.full(n_z, 300_000.0)
    d = decide_thermal(site, np.full(n_z, 3.0), np.full(n_z, np.nan), load, np.zeros(n_z, np.int64), T)
    assert np.all(d.route_weight < 1.0) and np.all(d.route_weight >= T.min_weight)
    assert np.all(np.isnan(d.clock_mhz)) and np.all(np.isnan(d.zone_budget_w))
    d = decide_thermal(site, np.full(n_z, 1.0), np.full(n_z, np.nan), load, d.stage, T)
    assert np.all(d.clock_mhz[~crit] == T.clock2_mhz) and np.all(np.isnan(d.clock_mhz[crit]))
    d = decide_thermal(site, np.full(n_z, 0.2), np.full(n_z, np.nan), load, d.stage, T)
    assert d.zone_budget_w == pytest.approx(T.shed_frac * load)
    # Silent sensors (NaN) are not a cooling emergency for this policy.
    d = decide_thermal(site, np.full(n_z, np.nan), np.full(n_z, np.nan), load, np.zeros(n_z, np.int64), T)
    assert np.all(d.route_weight == 1.0) and np.all(np.isnan(d.clock_mhz))


def test_the_controller_acts_on_a_climb_only_once_it_is_sustained(site: Site) -> None:
    """A noisy inlet slope for a few seconds moves nothing; the same climb held for 30 s routes away."""
    from controllers.capping import CapSettings
    from controllers.controller import CapController
    from powerplane.schemas import Headroom
    from powerplane.signing import Keyring

    ctl = CapController(site, Keyring({"k": b"\x01" * 32}, "k"), CapSettings(), 30.0)
    ctl.cap_w[:] = site.gpu_max_w
    zone = site.level_ids[int(site.levels_of_kind("zone")[0])]

    def tick(t: float) -> list[str]:
        ctl.on_headroom(Headroom(site="lab", level=zone, kind="zone", ts_s=t, mode="normal", horizon_s=10.0,
                                 power_w=300e3, limit_w=400e3, forecast_p50_w=300e3, forecast_p99_w=310e3,
                                 headroom_w=90e3, thermal_headroom_c=6.0, time_to_limit_s=100.0), t)
        return [c.action for c in ctl.decide(t + 0.5)]

    assert all(tick(1000.0 + k) == [] for k in range(20))  # 20 s of climb: not yet
    acts = [a for k in range(20, 40) for a in tick(1000.0 + k)]
    assert "routing_weight" in acts and "sm_clock_lock" in acts  # 6 C left, 4.3 C gone in 2 min: act


def test_an_older_zone_window_published_again_does_not_replace_a_newer_one(site: Site) -> None:
    """A streams worker taking over publishes the windows since its checkpoint again (streams.handover): the
    controller keeps the newest zone headroom, as it does for power levels."""
    from controllers.capping import CapSettings
    from controllers.controller import CapController
    from powerplane.schemas import Headroom
    from powerplane.signing import Keyring

    ctl = CapController(site, Keyring({"k": b"\x01" * 32}, "k"), CapSettings(), 30.0)
    zone = site.level_ids[int(site.levels_of_kind("zone")[0])]

    def headroom(t: float, c: float) -> Headroom:
        return Headroom(site="lab", level=zone, kind="zone", ts_s=t, mode="normal", horizon_s=10.0, power_w=300e3,
                        limit_w=400e3, forecast_p50_w=300e3, forecast_p99_w=310e3, headroom_w=90e3,
                        thermal_headroom_c=c, time_to_limit_s=100.0)

    ctl.on_headroom(headroom(1010.0, 2.0), 1010.5)
    ctl.on_headroom(headroom(1007.0, 6.0), 1011.0)  # the window of 3 s before, again
    assert ctl.zone_headroom_c[0] == 2.0 and ctl.zone_ts_s[0] == 1010.0


def _climbing_zone(site: Site, load_w: list[float]) -> list[list[str]]:
    """The knobs the controller moves each second while the zone's inlet climbs (6 C left, at the limit in
    100 s), its load following `load_w` (one value a second)."""
    from controllers.capping import CapSettings
    from controllers.controller import CapController
    from powerplane.schemas import Headroom, LevelAggregate
    from powerplane.signing import Keyring

    ctl = CapController(site, Keyring({"k": b"\x01" * 32}, "k"), CapSettings(), 30.0)
    ctl.cap_w[:] = site.gpu_max_w
    zone = site.level_ids[int(site.levels_of_kind("zone")[0])]
    out = []
    for k, p in enumerate(load_w):
        t = 1000.0 + k
        ctl.on_aggregate(LevelAggregate(site="lab", level=zone, kind="zone", ts_s=t, window_s=1.0, power_w=p,
                                        limit_w=400e3, rated_w=500e3, mode="normal", gpus_expected=64,
                                        gpus_reporting=64), t)
        ctl.on_headroom(Headroom(site="lab", level=zone, kind="zone", ts_s=t, mode="normal", horizon_s=10.0,
                                 power_w=p, limit_w=400e3, forecast_p50_w=p, forecast_p99_w=p, headroom_w=400e3 - p,
                                 thermal_headroom_c=6.0, time_to_limit_s=100.0), t)
        out.append([c.action for c in ctl.decide(t + 0.5) if c.action in ("routing_weight", "sm_clock_lock")])
    return out


def test_a_climb_while_the_zones_load_steps_up_is_not_extrapolated_until_the_load_settles(site: Site) -> None:
    """A restore after a demand-response shed raises a zone's load for tens of seconds and its inlets follow
    (recirculation): with 6 C of real headroom, critical requests are not routed away. The same climb going
    on at the settled load is a cooling plant not keeping up: it is acted on within 30 s of the load settling
    (30 s after the load's last 5 % step)."""
    ramp = [200e3 * (1.0 + 0.01 * k) for k in range(45)]  # +1 %/s for 45 s (a 2 MW/s restore at 100 MW)
    acts = _climbing_zone(site, ramp + [ramp[-1]] * 40)
    assert [a for k in range(45) for a in acts[k]] == []
    first = next(k for k, a in enumerate(acts) if "routing_weight" in a)
    assert 45 + 20 <= first <= 45 + 30


def test_a_training_zones_swinging_load_does_not_hide_a_climb(site: Site) -> None:
    """Synchronous training swings a zone's load by a third every iteration without stepping up: a climb there
    is still acted on once it has lasted 30 s."""
    swing = [330e3 if (k // 2) % 2 else 240e3 for k in range(40)]  # 4 s iterations
    acts = _climbing_zone(site, swing)
    first = next(k for k, a in enumerate(acts) if "routing_weight" in a)
    assert 30 <= first <= 32
