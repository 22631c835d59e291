"""The `nvml` actuator behind the Guard, against the fake libnvidia-ml.so.1 (tests/fakes/nvml/).

The real nvidia-ml-py loads the fake C library in a child process (tests/fakes/nvml/harness.py); the
fake logs every successful set call, which is what "changed the hardware" means here. NVML works in mW;
commands and acks in W.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actuators.base import ActuatorConfigError, load_actuator
from powerplane.validation import ConfigError
from tests.fakes.nvml.build import build
from tests.fakes.nvml.harness import FakeNvmlHost

T0 = 1_000.0
# Rack r01 is NVML devices 1 and 3: command GPU 0 is device 1, GPU 1 is device 3.
LIVE = {"racks": {"r01": [1, 3]}, "dry_run": False}
STATE = """
count = 4
gpu*.default_limit_mw = 650000
"""


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.getbasetemp() / "fake-nvml")


@pytest.fixture
def host(fake_lib: Path, tmp_path: Path) -> Iterator[FakeNvmlHost]:
    h = FakeNvmlHost(fake_lib, tmp_path, STATE)
    yield h
    h.close()


def started(host: FakeNvmlHost, **options: Any) -> FakeNvmlHost:
    host.ok("actuator", options={**LIVE, **options})
    host.ok("actuator_start")
    return host


def send(host: FakeNvmlHost, gpus: list[int], values: list[float], *, action: str = "power_cap",
         at: float = T0, lease_s: float = 30.0, params: dict[str, Any] | None = None) -> dict[str, Any]:
    ack: dict[str, Any] = host.ok("command", target="r01", action=action, gpus=gpus, values=values,
                                  params=params or {}, issued_at_s=at, lease_s=lease_s, now_s=at)
    return ack


def limit_mw(host: FakeNvmlHost, device: int) -> int:
    return int(host.ok("pynvml", fn="nvmlDeviceGetPowerManagementLimit", gpu=device))


def test_dry_run_reads_real_constraints_and_changes_nothing(host: FakeNvmlHost) -> None:
    host.state(STATE + "gpu3.min_limit_mw = 250000\n")
    started(host, dry_run=True)
    ack = send(host, [0, 1], [450, 100])
    assert ack["status"] == "clamped"  # 100 W is below device 3's real 250 W minimum
    assert ack["applied"] == [450, 250]
    assert "dry run: nothing changed" in ack["reason"]
    clock = send(host, [0], [1110], action="sm_clock_lock", at=T0 + 1)
    assert clock["status"] == "applied" and clock["applied"] == [1110]
    assert "dry run" in clock["reason"]
    assert host.calls() == []
    assert [limit_mw(host, d) for d in (1, 3)] == [700000, 700000]


def test_dry_run_is_the_default(host: FakeNvmlHost) -> None:
    host.ok("actuator", options={"racks": {"r01": "all"}})
    host.ok("actuator_start")
    ack = send(host, [3], [300])
    assert ack["status"] == "applied" and "dry run" in ack["reason"]
    assert host.calls() == []


def test_a_live_set_takes_effect_and_is_read_back(host: FakeNvmlHost) -> None:
    started(host)
    ack = send(host, [0, 1], [450, 300])
    assert ack["status"] == "applied" and ack["reason"] == ""
    assert ack["applied"] == [450, 300]
    assert host.calls() == ["gpu1 set_limit_mw 450000", "gpu3 set_limit_mw 300000"]
    assert host.ok("pynvml", fn="nvmlDeviceGetEnforcedPowerLimit", gpu=3) == 300000
    assert limit_mw(host, 0) == 700000  # not in the rack


def test_the_ack_carries_the_enforced_limit_not_the_requested_one(host: FakeNvmlHost) -> None:
    host.state(STATE + "gpu3.ext_limit_mw = 250000\n")  # a lower limit imposed out of band
    started(host)
    ack = send(host, [0, 1], [450, 300])
    assert ack["status"] == "clamped"
    assert ack["applied"] == [450, 250]


def test_values_outside_the_gpus_range_are_clamped_by_the_guard(host: FakeNvmlHost) -> None:
    started(host)
    ack = send(host, [0, 1], [50, 900])
    assert ack["status"] == "clamped" and "2 value(s)" in ack["reason"]
    assert ack["applied"] == [200, 700]
    assert host.calls() == ["gpu1 set_limit_mw 200000", "gpu3 set_limit_mw 700000"]


@pytest.mark.parametrize(("fault", "words"), [
    ("gpu3.set_limit = ERR_NO_PERMISSION", ["NO_PERMISSION", "run the actuator as root or grant it CAP_SYS_ADMIN"]),
    ("gpu3.set_limit = ERR_NOT_SUPPORTED", ["NOT_SUPPORTED", "leave the GPU out of 'racks'"]),
    ("gpu3.set_limit = ERR_INVALID_ARGUMENT", ["INVALID_ARGUMENT", "nvidia-smi -q -d POWER"]),
    ("gpu3.enforced_limit = ERR_GPU_IS_LOST", ["GPU_IS_LOST", "fallen off the bus", "reset the GPU"]),
])
def test_driver_refusals_are_rejected_with_what_to_do(host: FakeNvmlHost, fault: str, words: list[str]) -> None:
    host.state(STATE + fault + "\n")
    started(host)
    ack = send(host, [0, 1], [450, 300])
    assert ack["status"] == "rejected"
    assert "r01 GPU 1 (NVML device 3)" in ack["reason"]
    for w in words:
        assert w in ack["reason"]
    assert "other GPUs were left as they were" in ack["reason"]
    # All or nothing: device 1 was set first, then put back (device 3 too where its set went through).
    assert [limit_mw(host, d) for d in (1, 3)] == [700000, 700000]
    assert host.calls()[0] == "gpu1 set_limit_mw 450000" and "gpu1 set_limit_mw 700000" in host.calls()[1:]
    # Nothing was leased, so nothing reverts; the guard keeps serving.
    assert host.ok("expire", now_s=T0 + 100) == []
    assert send(host, [0], [400], at=T0 + 101)["status"] == "applied"


def test_nvml_uninitialised_is_rejected_with_what_to_do(host: FakeNvmlHost) -> None:
    started(host)
    host.ok("pynvml", fn="nvmlShutdown")  # the library's last reference gone under the actuator
    ack = send(host, [0], [450])
    assert ack["status"] == "rejected"
    assert "UNINITIALIZED" in ack["reason"] and "restart the actuator" in ack["reason"]


def test_command_before_start_is_rejected(host: FakeNvmlHost) -> None:
    host.ok("actuator", options=LIVE)
    ack = send(host, [0], [450])
    assert ack["status"] == "rejected" and "not started" in ack["reason"]


def test_clock_lock_snaps_to_a_supported_clock_and_clamps(host: FakeNvmlHost) -> None:
    started(host)
    ack = send(host, [0, 1], [1280, 5000], action="sm_clock_lock")
    assert ack["status"] == "clamped"
    assert ack["applied"] == [1275, 1980]  # 15 MHz steps; the maximum
    assert host.calls() == ["gpu1 set_locked_clocks 345 1275", "gpu3 set_locked_clocks 345 1980"]
    assert host.ok("pynvml", fn="nvmlDeviceGetClockInfo", gpu=1, args=[1]) == 1275  # SM clock now held there
    ack = send(host, [0], [1110], action="sm_clock_lock", at=T0 + 1)
    assert ack["status"] == "applied" and ack["applied"] == [1110]


def test_clock_range_from_max_clock_when_supported_clocks_are_not_listed(host: FakeNvmlHost) -> None:
    host.state(STATE + "gpu*.supported_clocks = ERR_NOT_SUPPORTED\ngpu*.max_sm_clock_mhz = 1755\n")
    started(host, min_clock_mhz=500)
    ack = send(host, [0, 1], [1283, 300], action="sm_clock_lock")
    assert ack["status"] == "clamped" and ack["applied"] == [1283, 500]
    assert host.calls() == ["gpu1 set_locked_clocks 500 1283", "gpu3 set_locked_clocks 500 500"]


def test_clock_lock_refused_without_permission(host: FakeNvmlHost) -> None:
    host.state(STATE + "gpu1.set_locked_clocks = ERR_NO_PERMISSION\n")
    started(host)
    ack = send(host, [0, 1], [1275, 1275], action="sm_clock_lock")
    assert ack["status"] == "rejected" and "CAP_SYS_ADMIN" in ack["reason"]
    assert host.calls() == []


def test_lease_expiry_reverts_to_the_safe_limit_and_resets_clocks(host: FakeNvmlHost) -> None:
    started(host)  # safe_limit "default": the driver's default limit, 650 W here
    assert send(host, [0, 1], [300, 300], lease_s=30)["status"] == "applied"
    assert send(host, [0, 1], [1110, 1110], action="sm_clock_lock", lease_s=60)["status"] == "applied"
    assert host.ok("expire", now_s=T0 + 29) == []
    [power] = host.ok("expire", now_s=T0 + 31)
    assert power["status"] == "reverted" and power["gpus"] == [0, 1] and power["applied"] == [650, 650]
    assert [limit_mw(host, d) for d in (1, 3)] == [650000, 650000]
    [clock] = host.ok("expire", now_s=T0 + 61)
    assert clock["status"] == "reverted" and "clocks reset" in clock["reason"] and clock["applied"] == [1980, 1980]
    assert host.calls()[-2:] == ["gpu1 reset_locked_clocks", "gpu3 reset_locked_clocks"]
    assert host.ok("expire", now_s=T0 + 200) == []


def test_release_clock_knob_resets_clocks(host: FakeNvmlHost) -> None:
    started(host, safe_limit="max")
    send(host, [0], [1110], action="sm_clock_lock")
    ack = send(host, [0], [0], action="release", params={"knob": "clock"}, at=T0 + 1)
    assert ack["status"] == "applied" and ack["applied"] == [1980]
    assert host.calls() == ["gpu1 set_locked_clocks 345 1110", "gpu1 reset_locked_clocks"]
    assert host.ok("expire", now_s=T0 + 100) == []


def test_gpu_lost_mid_run(host: FakeNvmlHost) -> None:
    started(host, safe_limit="max")
    assert send(host, [0, 1], [300, 300])["status"] == "applied"
    host.state(STATE + "gpu3.lost = 1\n")
    ack = send(host, [0, 1], [250, 250], at=T0 + 5)
    assert ack["status"] == "rejected"
    assert "r01 GPU 1 (NVML device 3)" in ack["reason"] and "fallen off the bus" in ack["reason"]
    # The leases of the first command lapse: the healthy GPU is reverted, the lost one stays leased.
    [rev] = host.ok("expire", now_s=T0 + 31)
    assert rev["gpus"] == [0] and rev["applied"] == [700]
    assert host.calls()[-1] == "gpu1 set_limit_mw 700000"
    assert host.ok("expire", now_s=T0 + 32) == []
    host.state(STATE)  # the GPU is back after a reset
    [rev] = host.ok("expire", now_s=T0 + 33)
    assert rev["gpus"] == [1] and rev["applied"] == [700]
    assert host.calls()[-1] == "gpu3 set_limit_mw 700000"


def test_start_errors_say_what_to_do(host: FakeNvmlHost) -> None:
    host.ok("actuator", options={"racks": {"r01": [1, 9]}})
    a = host.request("actuator_start")
    assert not a["ok"] and a["type"] == "ActuatorError"
    assert "NVML device(s) [9]" in a["error"] and "has 4 GPU(s)" in a["error"]
    host.state(STATE + "init = ERR_DRIVER_NOT_LOADED\n")
    host.ok("actuator", options=LIVE)
    a = host.request("actuator_start")
    assert not a["ok"] and "DRIVER_NOT_LOADED" in a["error"] and "load the NVIDIA driver" in a["error"]


@pytest.mark.parametrize(("options", "key"), [
    ({}, "racks"),
    ({"racks": {"r01": []}}, "racks.r01"),
    ({"racks": {"r01": [0, 0]}}, "racks.r01"),
    ({"racks": {"r01": "all", "r02": [1]}}, "racks.r01"),
    ({"racks": {"r01": [0]}, "dry_run": "no"}, "dry_run"),
    ({"racks": {"r01": [0]}, "safe_limit": "min"}, "safe_limit"),
    ({"racks": {"r01": [0]}, "safe_limit": -5}, "safe_limit"),
    ({"racks": {"r01": [0]}, "rack": "r01"}, "rack"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ActuatorConfigError) as e:
        load_actuator("gpus", {"kind": "nvml", **options})
    [line] = e.value.errors
    assert line.startswith(f"actuators.gpus.{key}: ")


def test_every_mistake_of_an_actuator_table_is_reported_at_once_with_its_path() -> None:
    with pytest.raises(ConfigError) as e:  # the one error class of every config mistake
        load_actuator("gpus", {"kind": "nvml", "racks": {"r01": [0, 99]}, "dry_run": "no", "min_clock_mhz": 10_000,
                               "safe_limits": "max"})
    assert isinstance(e.value, ActuatorConfigError)
    assert e.value.errors == [
        "actuators.gpus.racks.r01: must be a list of distinct NVML device indexes 0..63 (or \"all\" when it is the "
        "only rack), got [0, 99]",
        "actuators.gpus.dry_run: input should be a valid boolean, got 'no'",
        "actuators.gpus.min_clock_mhz: input should be less than 10000, got 10000",
        "actuators.gpus.safe_limits: unknown key",
    ]
    with pytest.raises(ConfigError, match=r"^actuators\.gpus\.racks: missing \(required\)$"):
        load_actuator("gpus", {"kind": "nvml"})


def test_sample_config_loads() -> None:
    path = Path(__file__).resolve().parents[2] / "actuators" / "nvml" / "sample.toml"
    opts = tomllib.loads(path.read_text())["actuators"]["gpus"]
    act = load_actuator("gpus", opts)
    assert act.kind == "nvml" and act.dry_run is True and act.targets() == ["rack-01"]
