"""SM clock locking through the Guard: what reaches the digital twin's GPUs and what the acks say."""

from __future__ import annotations

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
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


def locked_mhz(twin: Twin, gpus: list[int]) -> list[float]:
    g = int(twin.site.rack_gpu_start[twin.site.rack_index(RACK)]) + np.asarray(gpus)
    return np.round(twin.lock_phi[g] * twin.gpu_fmax[g], 3).tolist()


def limits(twin: Twin, gpus: list[int]) -> list[float]:
    g = int(twin.site.rack_gpu_start[twin.site.rack_index(RACK)]) + np.asarray(gpus)
    return np.asarray(twin.limit_w[g], dtype=np.float64).tolist()


def test_clock_lock_reaches_the_gpus(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert locked_mhz(twin, [0, 1, 2]) == [1980, 1980, 1980]
    ack = guard.handle(make(ring, [0, 1], [1275, 1110], action="sm_clock_lock"), T0)
    assert ack.status == "applied", ack.reason
    np.testing.assert_allclose(ack.applied, [1275, 1110])
    assert locked_mhz(twin, [0, 1, 2]) == [1275, 1110, 1980]
    assert limits(twin, [0, 1]) == [700, 700]  # the power limit is a separate knob


def test_clock_outside_range_is_clamped(guard: Guard, twin: Twin, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0, 1], [100, 3000], action="sm_clock_lock"), T0)
    assert ack.status == "clamped"
    assert "2 value(s)" in ack.reason
    np.testing.assert_allclose(ack.applied, [345, 1980])
    assert locked_mhz(twin, [0, 1]) == [345, 1980]


def test_non_finite_clock_is_rejected(guard: Guard, twin: Twin, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [float("nan")], action="sm_clock_lock"), T0)
    assert ack.status == "rejected" and "finite MHz" in ack.reason
    assert locked_mhz(twin, [0]) == [1980]


def test_clock_and_power_leases_lapse_separately(guard: Guard, twin: Twin, ring: Keyring) -> None:
    assert guard.handle(make(ring, [0], [300], lease_s=30), T0).status == "applied"
    assert guard.handle(make(ring, [0], [1110], action="sm_clock_lock", lease_s=60), T0).status == "applied"
    [power] = guard.expire(T0 + 31)
    assert power.status == "reverted" and "clock" not in power.reason
    np.testing.assert_allclose(power.applied, [700])
    assert limits(twin, [0]) == [700] and locked_mhz(twin, [0]) == [1110]
    [clock] = guard.expire(T0 + 61)
    assert clock.status == "reverted" and "clocks reset" in clock.reason
    assert clock.gpus.tolist() == [0]
    np.testing.assert_allclose(clock.applied, [1980])
    assert locked_mhz(twin, [0]) == [1980]
    assert guard.expire(T0 + 200) == []


def test_release_clock_knob_resets_clocks_only(guard: Guard, twin: Twin, ring: Keyring) -> None:
    guard.handle(make(ring, [0, 1], [300, 300]), T0)
    guard.handle(make(ring, [0, 1], [1110, 1110], action="sm_clock_lock"), T0)
    ack = guard.handle(make(ring, [0, 1], [0, 0], action="release", params={"knob": "clock"},
                            issued_at_s=T0 + 1), T0 + 1)
    assert ack.status == "applied" and ack.reason == "clocks reset"
    assert locked_mhz(twin, [0, 1]) == [1980, 1980]
    assert limits(twin, [0, 1]) == [300, 300]
    # The clock leases ended with the release; the power leases did not.
    [ack] = guard.expire(T0 + 31)
    assert ack.status == "reverted" and "clock" not in ack.reason
    assert limits(twin, [0, 1]) == [700, 700]


def test_release_with_unknown_knob_is_rejected(guard: Guard, twin: Twin, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [0], action="release", params={"knob": "fan"}), T0)
    assert ack.status == "rejected" and "'fan'" in ack.reason and "knob" in ack.reason


def test_plant_without_clocks_rejects_with_a_clear_reason(site: Site, ring: Keyring) -> None:
    g = Guard(load_actuator("twin", {"kind": "twin"}, context=Fleet(site, seed=1)), ring, "lab")
    ack = g.handle(make(ring, [0], [1275], action="sm_clock_lock"), T0)
    assert ack.status == "rejected"
    assert "does not support clock locking" in ack.reason and "'twin'" in ack.reason
    assert g.expire(T0 + 100) == []

