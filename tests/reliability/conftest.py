"""The reliability suite (`pytest tests/reliability`): the loop on a bad day, one test per finding of
issue 12, on the real servers of the session fixture `cfg` (tests/conftest.py) where a finding needs them,
and the fault tests of a three-node Kafka cluster on the fixture `cluster3` below. Every test here is
marked `reliability`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import devservers
from powerplane.config import Config, load_config
from powerplane.kafka_auth import client_auth, process_auth_as
from tests.conftest import _ADMIN, ROOT, _port_free, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def free_port_run(count: int) -> int:
    """P such that loopback ports P .. P + count - 1 are all free (a dev cluster's nodes take them)."""
    for _ in range(200):
        port = free_port()
        if port + count <= 65535 and all(_port_free(port + i) for i in range(1, count)):
            return port
    raise RuntimeError(f"no run of {count} free loopback ports")


@pytest.fixture(scope="module")
def cluster3() -> Iterator[Config]:
    """A three-node Kafka cluster (`powerplane dev up --brokers 3`, no time-series store) on free ports and in
    its own state directory; the config's bootstrap lists all three nodes. Stopped and wiped afterwards."""
    for old in (ROOT / ".powerplane").glob("cluster3-*"):  # sessions killed mid-way: stop their nodes
        pid = old.name.removeprefix("cluster3-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            devservers.down(load_config(env={"PP_STATE_DIR": str(old)}), wipe=True)
            shutil.rmtree(old, ignore_errors=True)
    state = ROOT / ".powerplane" / f"cluster3-{os.getpid()}"
    port = free_port_run(2 * 3)
    env = {"PP_KAFKA_BOOTSTRAP": ",".join(f"127.0.0.1:{port + 2 * i}" for i in range(3)),
           "PP_STATE_DIR": str(state), "PP_SIGNING_KEY_FILE": str(state / "keys" / "site.key"),
           "PP_SITE_FILE": str(ROOT / "examples" / "lab.toml")}
    config = load_config(env=env)
    devservers.up(config, vm=False, brokers=3)
    try:
        # The tests' own clients: this cluster's admin (tests/conftest.py sets _ADMIN[-1] before each test).
        _ADMIN.append(client_auth(config, "admin"))
        with process_auth_as(_ADMIN[-1]):
            yield config
        _ADMIN.pop()
    finally:
        devservers.down(config, wipe=True)
        shutil.rmtree(state, ignore_errors=True)
