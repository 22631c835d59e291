"""Power floors through the `nvml` actuator behind the Guard, against the fake libnvidia-ml.so.1: the floor in W
becomes NVML's power smoothing floor in % of TMP (the enforced limit) on GPUs that have it (Blackwell and
newer); on those that do not (H100: the fake's default), the ack is rejected and names the GPU, so the
controller can lock clocks instead."""

from __future__ import annotations

import pytest

from tests.fakes.nvml.harness import FakeNvmlHost
from tests.unit.test_actuator_nvml import STATE, T0, fake_lib, host, send, started

__all__ = ["fake_lib", "host"]  # fixtures used by name

SMOOTHING = STATE + "gpu*.smoothing_supported = 1\n"


def test_a_floor_becomes_a_power_smoothing_floor_in_percent_of_the_enforced_limit(host: FakeNvmlHost) -> None:
    host.state(SMOOTHING)
    started(host)
    ack = send(host, [0, 1], [420, 300], action="power_floor")
    assert ack["status"] == "applied", ack["reason"]
    assert ack["applied"] == pytest.approx([420, 300], abs=0.5)
    assert host.calls() == [
        "gpu1 smoothing_param 0 0 60.00", "gpu1 smoothing_profile 0", "gpu1 smoothing_state 1",
        "gpu3 smoothing_param 0 0 42.86", "gpu3 smoothing_profile 0", "gpu3 smoothing_state 1",
    ]


def test_a_floor_above_the_cap_is_held_at_the_cap(host: FakeNvmlHost) -> None:
    host.state(SMOOTHING)
    started(host, smoothing_profile=2)
    assert send(host, [0], [400])["status"] == "applied"  # the breaker policy's cap
    ack = send(host, [0], [500], action="power_floor", at=T0 + 1)
    assert ack["status"] == "clamped" and ack["applied"] == [400]
    assert host.calls()[1:3] == ["gpu1 smoothing_param 2 0 100.00", "gpu1 smoothing_profile 2"]


def test_a_gpu_without_power_smoothing_is_rejected_naming_it(host: FakeNvmlHost) -> None:
    started(host)  # the fake's default GPU is an H100: NOT_SUPPORTED
    ack = send(host, [0, 1], [420, 420], action="power_floor")
    assert ack["status"] == "rejected"
    assert ack["reason"].startswith("power smoothing floor not supported on r01 GPU 0 (NVML device 1): "
                                    "use a clock lock")
    assert host.calls() == []
    assert host.ok("expire", now_s=T0 + 100) == []  # nothing held, nothing to revert


def test_all_or_nothing_when_one_gpu_lacks_power_smoothing(host: FakeNvmlHost) -> None:
    host.state(STATE + "gpu1.smoothing_supported = 1\n")
    started(host)
    ack = send(host, [0, 1], [420, 420], action="power_floor")
    assert ack["status"] == "rejected" and "r01 GPU 1 (NVML device 3)" in ack["reason"]
    assert host.calls()[-1] == "gpu1 smoothing_state 0"  # the one that took it is undone


def test_a_floor_lapses_or_is_released_to_no_floor(host: FakeNvmlHost) -> None:
    host.state(SMOOTHING)
    started(host)
    assert send(host, [0], [420], action="power_floor", lease_s=30)["status"] == "applied"
    [lapsed] = host.ok("expire", now_s=T0 + 31)
    assert lapsed["status"] == "reverted" and "floor cleared" in lapsed["reason"] and lapsed["applied"] == [0]
    assert host.calls()[-1] == "gpu1 smoothing_state 0"
    assert send(host, [1], [300], action="power_floor", at=T0 + 40)["status"] == "applied"
    ack = send(host, [1], [0], action="release", params={"knob": "floor"}, at=T0 + 41)
    assert ack["status"] == "applied" and ack["reason"] == "floor cleared"
    assert host.calls()[-1] == "gpu3 smoothing_state 0"
    assert host.ok("expire", now_s=T0 + 200) == []


def test_dry_run_says_what_it_would_hold_and_changes_nothing(host: FakeNvmlHost) -> None:
    host.state(SMOOTHING)
    started(host, dry_run=True)
    ack = send(host, [0], [350], action="power_floor")
    assert ack["status"] == "applied" and "dry run" in ack["reason"] and ack["applied"] == [350]
    assert host.calls() == []
