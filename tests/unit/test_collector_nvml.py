"""The `nvml` source against a fake libnvidia-ml.so.1 (tests/fakes/nvml/fake_nvml.c).

Nothing in pynvml is mocked: the real nvidia-ml-py loads the fake C library exactly as it loads the
driver's, in a child process whose LD_LIBRARY_PATH names it (tests/fakes/nvml/harness.py). The fake's
state file is in NVML's own units (mW, mJ, percent); the frame must carry SI units.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.base import SourceConfigError, load_source
from tests.fakes.nvml.build import build
from tests.fakes.nvml.harness import FakeNvmlHost, fake_env

OPTS = {"site": "lab", "rack": "r01", "server": 3}

TWO_GPUS = """
count = 2
gpu0.power_mw = 350123
gpu0.limit_mw = 700000
gpu0.temp_c = 61
gpu0.sm_clock_mhz = 1755
gpu0.mem_clock_mhz = 2619
gpu0.util_pct = 87
gpu0.reasons = 0x4            # SW power cap
gpu0.energy_mj = 123456789012
gpu1.power_mw = 98765
gpu1.limit_mw = 450000
gpu1.temp_c = 38
gpu1.sm_clock_mhz = 345
gpu1.mem_clock_mhz = 1593
gpu1.util_pct = 0
gpu1.reasons = 0x1            # idle
gpu1.energy_mj = 42
"""


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.getbasetemp() / "fake-nvml")


@pytest.fixture
def host(fake_lib: Path, tmp_path: Path) -> Iterator[FakeNvmlHost]:
    h = FakeNvmlHost(fake_lib, tmp_path, TWO_GPUS)
    yield h
    h.close()


def started(host: FakeNvmlHost, **options: object) -> FakeNvmlHost:
    host.ok("new", options={**OPTS, **options})
    host.ok("start")
    return host


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-6)  # f32 on the wire


def test_values_are_the_fakes_state_in_si_units(host: FakeNvmlHost) -> None:
    started(host)
    [f] = host.ok("read")
    assert (f["site"], f["rack"], f["source"]) == ("lab", "r01", "gpus")
    assert f["gpu_server"] == [3, 3] and f["gpu_slot"] == [0, 1]
    assert f["power_w"] == [approx(350.123), approx(98.765)]
    assert f["limit_w"] == [700.0, 450.0]
    assert f["temp_c"] == [61.0, 38.0]
    assert f["sm_clock_mhz"] == [1755.0, 345.0]
    assert f["mem_clock_mhz"] == [2619.0, 1593.0]
    assert f["util"] == [approx(0.87), 0.0]
    assert f["throttle_reasons"] == [0x4, 0x1]
    assert f["energy_j"] == [123456789.012, 0.042]  # f64: exact to the mJ
    assert f["interval_s"] == 1.0 and f["pdu_power_w"] == [pytest.approx(math.nan, nan_ok=True)] * 2
    host.ok("close")


def test_the_enforced_limit_is_reported_not_the_requested_one(host: FakeNvmlHost) -> None:
    # GPU 0 is asked for 650 W but something else (e.g. an out-of-band cap) holds it at 450 W.
    host.state(TWO_GPUS + "gpu0.limit_mw = 650000\ngpu0.ext_limit_mw = 450000\n")
    started(host)
    assert host.ok("pynvml", fn="nvmlDeviceGetPowerManagementLimit", gpu=0) == 650000
    assert host.ok("pynvml", fn="nvmlDeviceGetEnforcedPowerLimit", gpu=0) == 450000
    [f] = host.ok("read")
    assert f["limit_w"][0] == 450.0
    # Lowering the requested limit below the outside one: now that is what is enforced.
    host.ok("pynvml", fn="nvmlDeviceSetPowerManagementLimit", gpu=0, args=[300000])
    [f] = host.ok("read")
    assert f["limit_w"] == [300.0, 450.0]
    assert host.calls() == ["gpu0 set_limit_mw 300000"]


def test_a_field_the_gpu_cannot_give_is_nan_and_the_rest_stands(host: FakeNvmlHost) -> None:
    host.state(TWO_GPUS + "gpu1.energy = ERR_NOT_SUPPORTED\ngpu1.clock_mem = ERR_NO_PERMISSION\n")
    started(host)
    a = host.request("read")
    assert a["ok"], a
    [f] = a["result"]
    assert f["energy_j"][0] == 123456789.012 and math.isnan(f["energy_j"][1])
    assert f["mem_clock_mhz"][0] == 2619.0 and math.isnan(f["mem_clock_mhz"][1])
    assert f["power_w"] == [approx(350.123), approx(98.765)] and f["sm_clock_mhz"] == [1755.0, 345.0]
    warnings = [m for m in a["logs"] if m.startswith("WARNING")]
    assert len(warnings) == 2
    assert any("GPU 1" in m and "nvmlDeviceGetTotalEnergyConsumption" in m and "Not Supported" in m
               for m in warnings), warnings
    # Logged once, not on every read.
    a = host.request("read")
    assert a["ok"] and not [m for m in a["logs"] if m.startswith("WARNING")]


def test_throttle_reasons_missing_on_some_or_all_gpus(host: FakeNvmlHost) -> None:
    host.state(TWO_GPUS + "gpu0.reasons = ERR_NOT_SUPPORTED\n")
    started(host)
    [f] = host.ok("read")
    assert f["throttle_reasons"] == [0xFFFF_FFFF, 0x1]
    host.state(TWO_GPUS + "gpu*.reasons = ERR_NOT_SUPPORTED\n")
    [f] = host.ok("read")
    assert f["throttle_reasons"] is None


def test_a_lost_gpu_fails_the_read_naming_it_and_the_source_recovers(host: FakeNvmlHost) -> None:
    started(host)
    host.ok("read")
    host.state(TWO_GPUS + "gpu1.lost = 1\n")
    a = host.request("read")
    assert not a["ok"] and a["type"] == "SourceError"
    assert a["error"].startswith("GPU 1 (GPU-fa4e0000-0000-4000-8000-000000000001): ")
    assert "GPU is lost" in a["error"] and "NVML_ERROR_GPU_IS_LOST" in a["error"]
    assert "\n" not in a["error"]
    # Still lost: re-opening finds it by UUID and fails the same way.
    a = host.request("read")
    assert not a["ok"] and "GPU 1" in a["error"] and "GPU is lost" in a["error"]
    # Back (e.g. after a reset): the next read re-opens and reads both GPUs again.
    host.state(TWO_GPUS)
    [f] = host.ok("read")
    assert f["gpu_slot"] == [0, 1] and f["limit_w"] == [700.0, 450.0]


def test_other_driver_errors_fail_the_read(host: FakeNvmlHost) -> None:
    host.state(TWO_GPUS + "gpu0.power = ERR_UNKNOWN\n")
    started(host)
    a = host.request("read")
    assert not a["ok"] and a["type"] == "SourceError"
    assert a["error"] == ("GPU 0 (GPU-fa4e0000-0000-4000-8000-000000000000): nvmlDeviceGetPowerUsage: "
                          "Unknown Error [NVML_ERROR_UNKNOWN]")


def test_gpu_subset_and_absent_gpus(host: FakeNvmlHost) -> None:
    started(host, gpus=[1])
    [f] = host.ok("read")
    assert f["gpu_slot"] == [1] and f["power_w"] == [approx(98.765)]
    host.ok("close")
    host.ok("new", options={**OPTS, "gpus": [0, 5]})
    a = host.request("start")
    assert not a["ok"] and a["type"] == "SourceError"
    assert a["error"] == "GPU(s) [5] not present: NVML sees 2 GPU(s)"


def test_init_failure_is_a_source_error(host: FakeNvmlHost) -> None:
    host.state("init = ERR_DRIVER_NOT_LOADED\n")
    host.ok("new", options=OPTS)
    a = host.request("start")
    assert (a["ok"], a["type"], a["error"]) == (False, "SourceError",
                                                "nvmlInit: Driver Not Loaded [NVML_ERROR_DRIVER_NOT_LOADED]")
    host.state(TWO_GPUS)  # the driver comes back: a read starts the source itself
    [f] = host.ok("read")
    assert f["gpu_slot"] == [0, 1]


def test_driver_older_than_r535_uses_throttle_reasons(tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path) -> None:
    lib = build(tmp_path_factory.getbasetemp() / "fake-nvml", variant="pre-r535")
    host = FakeNvmlHost(lib, tmp_path, TWO_GPUS)
    try:
        started(host)
        a = host.request("read")
        assert a["ok"] and a["result"][0]["throttle_reasons"] == [0x4, 0x1]
        assert any("nvmlDeviceGetCurrentClocksThrottleReasons" in m for m in a["logs"])
    finally:
        host.close()


def test_no_nvml_library_is_a_clear_error(tmp_path: Path) -> None:
    host = FakeNvmlHost(tmp_path / "empty", tmp_path)  # no libnvidia-ml.so.1 on this machine
    try:
        host.ok("new", options=OPTS)
        a = host.request("start")
        assert not a["ok"] and a["type"] == "SourceError" and "libnvidia-ml.so.1 not found" in a["error"]
    finally:
        host.close()


def test_the_fake_applies_locked_clocks(host: FakeNvmlHost) -> None:
    started(host)
    host.ok("pynvml", fn="nvmlDeviceSetGpuLockedClocks", gpu=0, args=[1110, 1275])
    [f] = host.ok("read")
    assert f["sm_clock_mhz"] == [1275.0, 345.0]
    host.ok("pynvml", fn="nvmlDeviceResetGpuLockedClocks", gpu=0)
    [f] = host.ok("read")
    assert f["sm_clock_mhz"] == [1755.0, 345.0]
    a = host.request("pynvml", fn="nvmlDeviceSetPowerManagementLimit", gpu=0, args=[150000])  # below 200 W min
    assert not a["ok"] and a["error"] == "Invalid Argument"
    assert host.calls() == ["gpu0 set_locked_clocks 1110 1275", "gpu0 reset_locked_clocks"]


@pytest.mark.parametrize(("options", "key"), [
    ({"site": "lab", "server": 0}, "rack"),
    ({"site": "lab", "rack": "r01"}, "server"),
    ({"site": "lab", "rack": "r01", "server": -1}, "server"),
    ({"site": "lab", "rack": "r01", "server": 0, "gpus": []}, "gpus"),
    ({"site": "lab", "rack": "r01", "server": 0, "gpus": [0, 0]}, "gpus"),
    ({"site": "lab", "rack": "r01", "server": 0, "gpus": "0"}, "gpus"),
    ({"site": "lab", "rack": "r01", "server": 0, "interval_s": 0}, "interval_s"),
    ({"site": "lab", "rack": "r01", "server": 0, "gpu": [0]}, "gpu"),
    ({"rack": "r01", "server": 0}, "site"),
])
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SourceConfigError) as e:
        load_source("gpus", {"kind": "nvml", **options})
    [line] = e.value.errors
    assert line.startswith(f"sources.gpus.{key}: ")


def test_sample_config_loads() -> None:
    import tomllib

    path = Path(__file__).resolve().parents[2] / "collectors" / "nvml" / "sample.toml"
    for name, opts in tomllib.loads(path.read_text())["sources"].items():
        src = load_source(name, opts)
        assert src.kind == "nvml"


def test_a_read_abandoned_on_timeout_is_not_started_twice(host: FakeNvmlHost) -> None:
    # A slow driver: GPU 0's power reading takes 0.5 s. The scheduler gives up after 0.2 s; the read goes
    # on in its thread, and the next read waits for that one rather than starting another.
    # Bounds are one-sided and wide apart: a new read cannot take less than the fake's 1 s delay.
    host.state(TWO_GPUS + "gpu0.delay_power = 1000\n")
    started(host)
    a = host.request("read", timeout=0.2)
    assert (a["ok"], a["type"]) == (False, "TimeoutError")
    time.sleep(1.3)  # the abandoned read finishes in its thread meanwhile
    a = host.request("read")
    assert a["ok"] and a["result"][0]["power_w"][0] == approx(350.123)
    assert a["elapsed_s"] < 0.6  # the first read's result, not a whole new read
    a = host.request("read")
    assert a["ok"] and a["elapsed_s"] >= 1.0  # a new read


def test_command_line_reader(fake_lib: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    state = tmp_path / "state.txt"
    state.write_text(TWO_GPUS)
    env = fake_env(fake_lib, state)
    run = [sys.executable, "-m", "collectors.nvml", "--rack", "r9", "--server", "1", "--count", "2",
           "--interval", "0.01"]
    p = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    frames = [json.loads(line) for line in p.stdout.splitlines()]
    assert [f["seq"] for f in frames] == [1, 2] and frames[0]["rack"] == "r9" and frames[0]["gpu_server"] == [1, 1]
    assert frames[1]["limit_w"] == [700.0, 450.0]
    # --compare-nvidia-smi, with a stand-in nvidia-smi printing what the real one prints for this state.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   "echo '0, 350.12, 700.00, 700.00, 61, 1755, 2619, 87, 0x0000000000000004'\n"
                   "echo '1, 98.76, 400.00, 450.00, 38, 345, 1593, 0, 0x0000000000000001'\n")
    smi.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    p = subprocess.run([*run, "--compare-nvidia-smi"], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 mismatch(es)" in p.stdout
    [bad] = [line for line in p.stdout.splitlines() if "MISMATCH" in line]
    assert bad.startswith("GPU 1") and "enforced.power.limit" in bad
    # No driver at all: a one-line error, exit status 2.
    env = fake_env(tmp_path / "empty", state)
    p = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and p.stderr.startswith("nvml: NVML library libnvidia-ml.so.1 not found")


def test_a_typo_in_the_fakes_state_cannot_pass_silently(host: FakeNvmlHost) -> None:
    host.state("gpu0.powr_mw = 1\n")
    host.ok("new", options=OPTS)
    a = host.request("start")
    assert not a["ok"] and a["error"] == "nvmlInit: Unknown Error [NVML_ERROR_UNKNOWN]"
