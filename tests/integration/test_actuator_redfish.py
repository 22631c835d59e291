"""The `redfish` actuator behind the Guard, against a loopback Redfish service serving a real mockup
(tests/data/redfish/legacy: chassis 1U, PowerCapacityWatts 1600, no limit set) that implements PATCH of
PowerControl with ETag/If-Match and BMC error bodies (tests/integration/redfish_power_server.py)."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from powerplane.schemas import Ack, Command
from powerplane.signing import Keyring
from tests.integration.redfish_power_server import PowerRedfishServer
from tests.integration.redfish_server import free_port

MOCKUP = Path(__file__).resolve().parents[1] / "data" / "redfish" / "legacy"
POWER = "/redfish/v1/Chassis/1U/Power"
RACK = "rack-01"
T0 = 1_000.0
USER, PASSWORD = "pp-actuator", secrets.token_hex(8)
RING = Keyring({"k1": b"\x03" * 32}, "k1")
_ids = itertools.count()


@pytest.fixture(autouse=True)
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_TEST_BMC_USER", USER)
    monkeypatch.setenv("PP_TEST_BMC_PASSWORD", PASSWORD)


@pytest.fixture
def bmc() -> Iterator[PowerRedfishServer]:
    with PowerRedfishServer(MOCKUP, auth=(USER, PASSWORD), min_limit_w=500.0) as srv:
        yield srv


def guard(url: str, *, rack: dict[str, Any] | None = None, **kw: Any) -> Guard:
    racks = {RACK: {"url": url, "chassis": "1U", "gpus": 2, **(rack or {})}}
    opts = {"kind": "redfish", "username_env": "PP_TEST_BMC_USER", "password_env": "PP_TEST_BMC_PASSWORD",
            "timeout_s": 2.0, "non_gpu_w": 200.0, "racks": racks, **kw}
    act = load_actuator("bmc", opts)
    act.start()
    return Guard(act, RING, "lab")


def cap(g: Guard, gpus: list[int], values: list[float], *, at: float = T0, action: str = "power_cap",
        lease_s: float = 30.0) -> Ack:
    cmd = RING.sign(Command(id=f"cmd-{next(_ids)}", site="lab", target=RACK, action=action,
                            gpus=np.array(gpus, np.uint16), values=np.array(values, np.float32), params={},
                            reason="test", issuer="pytest", issued_at_s=at, lease_s=lease_s))
    return g.handle(cmd, at)


def test_gpu_limits_become_one_chassis_limit(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url)
    ack = cap(g, [0, 1], [500, 400])
    assert ack.status == "applied", ack.reason
    np.testing.assert_allclose(ack.applied, [500, 400])
    assert bmc.limit_w(POWER) == 1100  # 500 + 400 + 200 non-GPU
    # One GPU changes: the chassis limit keeps the other GPU's share.
    ack = cap(g, [1], [300], at=T0 + 1)
    assert ack.status == "applied" and ack.applied.tolist() == [300]
    assert bmc.limit_w(POWER) == 1000
    # Every write was conditional on the resource as just read.
    assert [p[2] is not None for p in bmc.patches()] == [True, True]
    g.actuator.close()


def test_chassis_found_without_naming_it(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url, rack={"chassis": None})
    assert cap(g, [0, 1], [450, 450]).status == "applied"
    assert bmc.limit_w(POWER) == 1100


def test_a_limit_above_the_chassis_capacity_is_clamped_to_it(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url, non_gpu_w=400.0)
    ack = cap(g, [0, 1], [700, 700])  # 1800 W asked, the chassis can take 1600
    assert ack.status == "clamped"
    assert bmc.limit_w(POWER) == 1600
    np.testing.assert_allclose(ack.applied, [600, 600])  # what 1600 W leaves each GPU


def test_a_concurrent_change_is_read_again_not_overwritten(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url)
    bmc.races = 1
    ack = cap(g, [0, 1], [500, 500])
    assert ack.status == "applied", ack.reason
    first, second = bmc.patches()
    assert first[2] != second[2]  # the retry carried the fresh ETag
    assert bmc.limit_w(POWER) == 1200
    bmc.races = 2
    ack = cap(g, [0, 1], [400, 400], at=T0 + 1)
    assert ack.status == "rejected" and "HTTP 412" in ack.reason and "PreconditionFailed" in ack.reason
    assert bmc.limit_w(POWER) == 1200


def test_lease_expiry_reverts_the_chassis_to_the_safe_limit(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url)
    cap(g, [0, 1], [300, 300])
    assert bmc.limit_w(POWER) == 800
    [ack] = g.expire(T0 + 31)
    assert ack.status == "reverted"
    np.testing.assert_allclose(ack.applied, [700, 700])
    assert bmc.limit_w(POWER) == 1600


def test_clock_locking_is_refused_clearly(bmc: PowerRedfishServer) -> None:
    ack = cap(guard(bmc.url), [0], [1275], action="sm_clock_lock")
    assert ack.status == "rejected" and "does not support clock locking" in ack.reason
    assert bmc.patches() == []


def test_unreachable_bmc(bmc: PowerRedfishServer) -> None:
    g = guard(f"http://127.0.0.1:{free_port()}")  # start() only warns: the BMC may come back
    ack = cap(g, [0, 1], [500, 500])
    assert ack.status == "rejected"
    assert "unreachable" in ack.reason and "Connection refused" in ack.reason


def test_wrong_credentials(bmc: PowerRedfishServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_TEST_BMC_PASSWORD", "not-it")
    ack = cap(guard(bmc.url), [0, 1], [500, 500])
    assert ack.status == "rejected"
    assert "HTTP 401" in ack.reason and "credentials" in ack.reason
    assert bmc.limit_w(POWER) is None


def test_out_of_range_chassis_limit_then_the_guard_goes_on(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url)
    bmc.min_limit_w = 1000.0
    ack = cap(g, [0, 1], [200, 200])  # 600 W chassis: below what this BMC accepts
    assert ack.status == "rejected"
    assert "HTTP 400" in ack.reason and "PropertyValueOutOfRange" in ack.reason and "1000" in ack.reason
    assert bmc.limit_w(POWER) is None
    assert cap(g, [0, 1], [450, 450], at=T0 + 1).status == "applied"
    assert bmc.limit_w(POWER) == 1100


def test_busy_bmc_says_when_to_retry(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url)
    bmc.fail_next(503, retry_after_s=7, count=3)
    ack = cap(g, [0, 1], [500, 500])
    assert ack.status == "rejected"
    assert "busy" in ack.reason and "HTTP 503" in ack.reason and "retry after 7 s" in ack.reason
    assert cap(g, [0, 1], [500, 500], at=T0 + 1).status == "applied"
    assert bmc.limit_w(POWER) == 1200


def test_hung_bmc_times_out(bmc: PowerRedfishServer) -> None:
    g = guard(bmc.url, timeout_s=0.3)
    bmc.delay_s = 1.0
    ack = cap(g, [0, 1], [500, 500])
    assert ack.status == "rejected"
    assert "did not answer" in ack.reason and "timeout_s = 0.3 s" in ack.reason
    bmc.delay_s = 0.0
    assert cap(g, [0, 1], [500, 500], at=T0 + 1).status == "applied"
