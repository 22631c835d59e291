"""The `redfish` actuator without a server: its options and the GPU-to-chassis mapping."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actuators.base import ActuatorConfigError, ActuatorError, load_actuator
from actuators.redfish import chassis_limit_w, gpu_shares_w

SAMPLE = Path(__file__).resolve().parents[2] / "actuators" / "redfish" / "sample.toml"
RACK = {"r1": {"url": "https://bmc", "gpus": 4}}


def test_chassis_limit_is_the_gpu_sum_plus_the_non_gpu_allowance() -> None:
    assert chassis_limit_w(np.array([700.0, 500.0, 300.0]), 1500.0) == 3000.0
    # A chassis limit lower than asked takes from every GPU in proportion; non-GPU power is not touched.
    np.testing.assert_allclose(gpu_shares_w(np.array([600.0, 300.0]), 200.0, 1100.0), [600, 300])
    np.testing.assert_allclose(gpu_shares_w(np.array([600.0, 300.0]), 200.0, 800.0), [400, 200])
    np.testing.assert_allclose(gpu_shares_w(np.array([600.0, 300.0]), 200.0, 100.0), [0, 0])


def test_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_REDFISH_USERNAME", "operator")
    monkeypatch.setenv("PP_REDFISH_PASSWORD", "from-the-environment")
    act = load_actuator("bmc", tomllib.loads(SAMPLE.read_text())["actuators"]["bmc"])
    assert act.kind == "redfish" and act.targets() == ["rack-01"]
    lo, hi, safe = act.limits_w("rack-01", np.arange(8))
    assert lo.tolist() == [200] * 8 and hi.tolist() == [700] * 8 and safe.tolist() == [700] * 8
    with pytest.raises(ActuatorError, match="out of range"):
        act.limits_w("rack-01", np.array([8]))


@pytest.mark.parametrize(("options", "line"), [
    ({"racks": RACK, "password": "hunter2"}, "password: must not be in the config: put it in an environment variable"),
    ({"racks": RACK, "username_env": "PP_UNSET_USER_VAR", "password_env": "PP_UNSET_PASS_VAR"},
     "username_env: names environment variable PP_UNSET_USER_VAR, which is not set"),
    ({"racks": RACK, "username_env": "X"}, "password_env: required with the other one"),
    ({}, "racks: missing (required)"),
    ({"racks": {"r1": {"url": "bmc.local", "gpus": 4}}}, "racks.r1.url: "),
    ({"racks": {"r1": {"url": "https://bmc", "gpus": 0}}}, "racks.r1.gpus: "),
    ({"racks": {"r1": {"url": "https://bmc", "gpus": 4, "chassis": "a/b"}}}, "racks.r1.chassis: "),
    ({"racks": {"r1": {"url": "https://bmc", "gpus": 4, "port": 443}}}, "racks.r1.port: unknown key"),
    ({"racks": RACK, "timeout_s": 0}, "timeout_s: "),
    ({"racks": RACK, "verify_tls": 1}, "verify_tls: "),
    ({"racks": RACK, "safe_limit": "default"}, "safe_limit: "),
    ({"racks": RACK, "gpu_min_w": 500, "gpu_max_w": 400}, "gpu_max_w: must be at least gpu_min_w (500)"),
])
def test_bad_options_name_the_key(options: dict[str, Any], line: str) -> None:
    with pytest.raises(ActuatorConfigError) as e:
        load_actuator("bmc", {"kind": "redfish", **options})
    assert any(got.startswith(f"actuators.bmc.{line}") for got in e.value.errors), e.value.errors
