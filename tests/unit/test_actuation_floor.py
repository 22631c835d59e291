"""Power floors (action power_floor) through the Guard: what reaches the digital twin's GPUs, what the acks say,
and that the power limit always wins over a floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from actuators.journal import Journal
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from sim import Twin
from sim.fleet import Fleet
from tests.unit.test_actuation import LAB, RACK, T0, make


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.fixture
def twin(site: Site) -> Twin:
    return Twin(site, seed=1)


@pytest.fixture
def ring() -> Keyring:
    return Keyring({"k1": b"\x01" * 32}, "k1")


@pytest.fixture
def guard(twin: Twin, ring: Keyring) -> Guard:
    return Guard(load_actuator("twin", {"kind": "twin"}, context=twin), ring, "lab")


def _g(twin: Twin, gpus: list[int]) -> np.ndarray:
    return int(twin.site.rack_gpu_start[twin.site.rack_index(RACK)]) + np.asarray(gpus)


def floors(twin: Twin, gpus: list[int]) -> list[float]:
    return [round(float(w), 3) for w in twin.floor_w[_g(twin, gpus)]]


def floor_cmd(ring: Keyring, gpus: list[int], values: list[float], *, issued_at_s: float = T0,
              lease_s: float = 30.0) -> Command:
    return make(ring, gpus, values, action="power_floor", issued_at_s=issued_at_s, lease_s=lease_s)


def test_a_floor_reaches_the_gpus_and_is_burnt(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert floors(twin, [0, 1]) == [0, 0]
    ack = guard.handle(floor_cmd(ring, [0, 1], [420, 300]), T0)
    assert ack.status == "applied", ack.reason
    np.testing.assert_allclose(ack.applied, [420, 300])
    assert floors(twin, [0, 1, 2]) == [420, 300, 0]
    frame = twin.step(1.0)
    g = _g(twin, [0, 1])
    assert (frame.gpu_power_true_w[g] >= [420, 300]).all()  # the lab's GPUs idle far lower than this
    assert frame.gpu_floor_w[g].tolist() == [420, 300]


def test_a_floor_above_the_present_limit_is_lowered_to_it(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert guard.handle(make(ring, [0], [300]), T0).status == "applied"  # the breaker policy's cap
    ack = guard.handle(floor_cmd(ring, [0, 1], [500, 500], issued_at_s=T0 + 1), T0 + 1)
    assert ack.status == "clamped" and "enforced power limit" in ack.reason and "1 value(s)" in ack.reason
    np.testing.assert_allclose(ack.applied, [300, 500])
    frame = twin.step(1.0)
    assert frame.gpu_power_true_w[_g(twin, [0])][0] <= 300.0 + 1e-9  # the cap is never undone


def test_a_cap_below_a_floor_lowers_the_floor_with_it(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert guard.handle(floor_cmd(ring, [0, 1], [500, 500]), T0).status == "applied"
    assert guard.handle(make(ring, [0], [350], issued_at_s=T0 + 1), T0 + 1).status == "applied"
    assert floors(twin, [0, 1]) == [350, 500]
    frame = twin.step(1.0)
    p = frame.gpu_power_true_w[_g(twin, [0, 1])]
    assert p[0] == pytest.approx(350.0) and p[1] >= 500.0


def test_negative_or_non_finite_floors_are_refused(guard: Guard, twin: Twin, ring: Keyring) -> None:
    ack = guard.handle(floor_cmd(ring, [0, 1], [-10, 300]), T0)
    assert ack.status == "rejected" and ">= 0 W" in ack.reason
    ack = guard.handle(floor_cmd(ring, [0], [float("nan")], issued_at_s=T0 + 1), T0 + 1)
    assert ack.status == "rejected" and "finite watts" in ack.reason
    assert floors(twin, [0, 1]) == [0, 0]


def test_a_floor_lapses_to_no_floor_apart_from_the_cap(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert guard.handle(make(ring, [0], [600], lease_s=60), T0).status == "applied"
    assert guard.handle(floor_cmd(ring, [0, 1], [400, 400], lease_s=30), T0).status == "applied"
    assert guard.expire(T0 + 29) == []
    [floor] = guard.expire(T0 + 31)
    assert floor.status == "reverted" and "power floor lease" in floor.reason and "floor cleared" in floor.reason
    assert floor.gpus.tolist() == [0, 1] and floor.applied.tolist() == [0, 0]
    assert floors(twin, [0, 1]) == [0, 0]
    assert twin.limit_w[_g(twin, [0])][0] == 600  # the power limit holds its own lease
    [power] = guard.expire(T0 + 61)
    assert "floor" not in power.reason
    assert guard.expire(T0 + 200) == []


def test_release_floor_knob_clears_the_floor_only(guard: Guard, twin: Twin, ring: Keyring) -> None:
    guard.handle(make(ring, [0], [600]), T0)
    guard.handle(floor_cmd(ring, [0, 1], [400, 400]), T0)
    ack = guard.handle(make(ring, [0, 1], [0, 0], action="release", params={"knob": "floor"},
                            issued_at_s=T0 + 1), T0 + 1)
    assert ack.status == "applied" and ack.reason == "floor cleared"
    assert floors(twin, [0, 1]) == [0, 0] and twin.limit_w[_g(twin, [0])][0] == 600
    assert guard.expire(T0 + 31) and floors(twin, [0, 1]) == [0, 0]  # only the cap's lease was left


def test_a_plant_without_floors_rejects_them_so_the_controller_locks_clocks(site: Site, ring: Keyring) -> None:
    guard = Guard(load_actuator("twin", {"kind": "twin"}, context=Fleet(site, seed=1)), ring, "lab")
    ack = guard.handle(floor_cmd(ring, [0], [400]), T0)
    assert ack.status == "rejected"
    assert ack.reason.startswith(f"power smoothing floor not supported on {RACK}: use a clock lock")


def test_a_floor_lease_survives_a_restart_and_still_lapses(twin: Twin, ring: Keyring, tmp_path: Path) -> None:
    act = load_actuator("twin", {"kind": "twin"}, context=twin)
    g1 = Guard(act, ring, "lab", journal=Journal(tmp_path / "j.db"))
    assert g1.handle(floor_cmd(ring, [0], [450], lease_s=30), T0).status == "applied"
    g1.sync()
    g2 = Guard(act, ring, "lab", journal=Journal(tmp_path / "j.db"))  # the actuator restarted
    assert g2.handle(make(ring, [0], [300], issued_at_s=T0 + 1), T0 + 1).status == "applied"
    assert floors(twin, [0]) == [300]  # the restored floor followed the cap down
    [floor] = g2.expire(T0 + 31)
    assert "floor cleared" in floor.reason and floors(twin, [0]) == [0]
