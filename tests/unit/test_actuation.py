"""Safe actuation: what reaches the (simulated) GPUs, and what an operator sees in the acks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim.fleet import Fleet

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
T0 = 1_000.0
RACK = "rack-02"
_ids = itertools.count()


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.fixture
def fleet(site: Site) -> Fleet:
    return Fleet(site, seed=1)


@pytest.fixture
def ring() -> Keyring:
    return Keyring({"k1": b"\x01" * 32}, "k1")


@pytest.fixture
def guard(fleet: Fleet, ring: Keyring) -> Guard:
    act = load_actuator("twin", {"kind": "twin", "safe_limit": "max"}, context=fleet)
    return Guard(act, ring, "lab", rate_per_s=5.0, burst=10)


def gpu_limits(fleet: Fleet, rack: str, gpus: list[int]) -> np.ndarray:
    r = fleet.site.rack_index(rack)
    return np.asarray(fleet.limit_w[int(fleet.site.rack_gpu_start[r]) + np.asarray(gpus)], dtype=np.float64)


def make(ring: Keyring | None, gpus: list[int], values: list[float], *, action: str = "power_cap",
         issued_at_s: float = T0, lease_s: float = 30.0, **over: Any) -> Command:
    c = Command(id=f"cmd-{next(_ids)}", site="lab", target=RACK, action=action, gpus=np.array(gpus, np.uint16),
                values=np.array(values, np.float32), params={}, reason="test", issuer="pytest",
                issued_at_s=issued_at_s, lease_s=lease_s)
    for k, v in over.items():
        setattr(c, k, v)
    return ring.sign(c) if ring is not None else c


def test_signed_cap_is_applied_to_the_fleet(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    assert gpu_limits(fleet, RACK, [0, 1, 2]).tolist() == [700, 700, 700]
    ack = guard.handle(make(ring, [0, 1], [450, 300]), T0 + 0.1)
    assert ack.status == "applied", ack.reason
    assert gpu_limits(fleet, RACK, [0, 1, 2]).tolist() == [450, 300, 700]
    np.testing.assert_allclose(ack.applied, [450, 300])
    # Other racks untouched.
    assert gpu_limits(fleet, "rack-01", [0, 1]).tolist() == [700, 700]


def test_value_below_minimum_is_clamped(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [3, 4], [50, 1000]), T0)
    assert ack.status == "clamped"
    assert "clamped" in ack.reason
    np.testing.assert_allclose(ack.applied, [200, 700])
    assert gpu_limits(fleet, RACK, [3, 4]).tolist() == [200, 700]


def test_same_id_twice_is_a_duplicate_and_not_reapplied(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    c = make(ring, [0], [400])
    assert guard.handle(c, T0).status == "applied"
    # Someone restores the GPU by hand; a redelivered copy of the old command must not undo that.
    fleet.set_limit(np.array([int(fleet.site.rack_gpu_start[1])]), np.array([700.0]))
    ack = guard.handle(Command.decode(c.encode()), T0 + 1)
    assert ack.status == "duplicate"
    assert "applied" in ack.reason
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]
    assert guard.stats.applied == 1 and guard.stats.duplicate == 1


def test_expired_command_is_not_applied(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [300], lease_s=30), T0 + 31)
    assert ack.status == "expired"
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_older_command_than_last_applied_is_rejected(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    assert guard.handle(make(ring, [0], [500], issued_at_s=T0 + 5), T0 + 5).status == "applied"
    late = guard.handle(make(ring, [0], [250], issued_at_s=T0 + 2), T0 + 6)
    assert late.status == "rejected"
    assert "older" in late.reason
    assert gpu_limits(fleet, RACK, [0]).tolist() == [500]


def test_rate_limit_rejects_beyond_burst(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    acks = [guard.handle(make(ring, [0], [300 + i]), T0) for i in range(guard.burst + 1)]
    assert [a.status for a in acks[:-1]] == ["applied"] * guard.burst
    assert acks[-1].status == "rejected"
    assert "rate limit" in acks[-1].reason
    assert gpu_limits(fleet, RACK, [0]).tolist() == [300 + guard.burst - 1]
    # Tokens refill with time.
    assert guard.handle(make(ring, [0], [250]), T0 + 1).status == "applied"


def test_tampered_command_is_rejected_as_security_refusal(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    c = make(ring, [0], [650])
    c.values = np.array([200], np.float32)
    ack = guard.handle(c, T0)
    assert ack.status == "rejected"
    assert "signature" in ack.reason
    assert guard.stats.security == 1
    assert guard.security_refusals[-1][0].id == c.id
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_unsigned_and_foreign_key_commands_are_rejected(guard: Guard, fleet: Fleet) -> None:
    assert guard.handle(make(None, [0], [300]), T0).status == "rejected"
    foreign = Keyring({"k1": b"\x02" * 32}, "k1")
    assert guard.handle(make(foreign, [0], [300]), T0).status == "rejected"
    assert guard.stats.security == 2
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_command_for_another_site_is_rejected(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [300], site="other-site"), T0)
    assert ack.status == "rejected"
    assert "other-site" in ack.reason
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_unknown_rack_and_gpu_index_are_rejected(guard: Guard, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [300], target="rack-99"), T0)
    assert ack.status == "rejected" and "rack-99" in ack.reason
    ack = guard.handle(make(ring, [64], [300]), T0)
    assert ack.status == "rejected" and "out of range" in ack.reason


def test_lapsed_lease_reverts_to_safe_value(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    guard.handle(make(ring, [0, 1], [300, 300], lease_s=30), T0)
    assert guard.expire(T0 + 29) == []
    assert gpu_limits(fleet, RACK, [0, 1]).tolist() == [300, 300]
    acks = guard.expire(T0 + 31)
    assert len(acks) == 1
    ack = acks[0]
    assert ack.status == "reverted" and ack.target == RACK
    assert ack.gpus.tolist() == [0, 1]
    np.testing.assert_allclose(ack.applied, [700, 700])
    assert gpu_limits(fleet, RACK, [0, 1]).tolist() == [700, 700]
    # Reverted once; nothing left to revert.
    assert guard.expire(T0 + 60) == []


def test_renewed_lease_does_not_revert(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    guard.handle(make(ring, [0], [300], issued_at_s=T0, lease_s=30), T0)
    guard.handle(make(ring, [0], [300], issued_at_s=T0 + 20, lease_s=30), T0 + 20)
    assert guard.expire(T0 + 31) == []
    assert gpu_limits(fleet, RACK, [0]).tolist() == [300]
    assert [a.status for a in guard.expire(T0 + 51)] == ["reverted"]
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_release_restores_safe_value_and_ends_the_lease(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    guard.handle(make(ring, [0, 1], [300, 300]), T0)
    ack = guard.handle(make(ring, [0, 1], [0, 0], action="release", issued_at_s=T0 + 1), T0 + 1)
    assert ack.status == "applied"
    assert gpu_limits(fleet, RACK, [0, 1]).tolist() == [700, 700]
    assert guard.expire(T0 + 100) == []


def test_safe_limit_min_reverts_to_minimum(fleet: Fleet, ring: Keyring) -> None:
    act = load_actuator("twin", {"kind": "twin", "safe_limit": "min"}, context=fleet)
    g = Guard(act, ring, "lab")
    g.handle(make(ring, [0], [500]), T0)
    [ack] = g.expire(T0 + 31)
    assert ack.applied.tolist() == [200]
    assert gpu_limits(fleet, RACK, [0]).tolist() == [200]


def test_unsupported_action_is_rejected_with_reason(guard: Guard, fleet: Fleet, ring: Keyring) -> None:
    ack = guard.handle(make(ring, [0], [1500], action="sm_clock_lock"), T0)
    assert ack.status == "rejected"
    assert "sm_clock_lock" in ack.reason and "not supported" in ack.reason
    assert gpu_limits(fleet, RACK, [0]).tolist() == [700]


def test_twin_sample_config_loads_and_bad_options_are_refused_with_their_paths(fleet: Fleet) -> None:
    import tomllib

    sample = Path(__file__).resolve().parents[2] / "sim" / "actuator" / "sample.toml"
    for name, opts in tomllib.loads(sample.read_text())["actuators"].items():
        act = load_actuator(name, opts, context=fleet)
        assert act.kind == "twin" and RACK in act.targets()
    with pytest.raises(ConfigError) as e:
        load_actuator("twin", {"kind": "twin", "safe_limit": "lowest", "lock": "mine"}, context=fleet)
    assert e.value.errors == [
        "actuators.twin.safe_limit: must be 'max', 'min' or watts, got 'lowest'",
        "actuators.twin.lock: must be a lock given by the program that runs the fleet, got 'mine'",
    ]
