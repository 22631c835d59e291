"""Fixtures shared by the integration and reliability tests: real servers that the project starts itself
(`powerplane dev up`): Apache Kafka 4.x in KRaft mode and VictoriaMetrics. Each test session picks free
ports and its own state directory, so it never touches a running demo or another test session. Unit tests
never ask for them."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import devservers
from powerplane.config import Config, load_config
from powerplane.kafka import ClientAuth, client_auth, set_process_auth

ROOT = Path(__file__).resolve().parents[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(pair: bool = False) -> int:
    """A free loopback port (and, with pair, the one after it too: Kafka's controller listener)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair or (port < 65535 and _port_free(port + 1)):
            return port
    raise RuntimeError("no free loopback port")


_STATE = ROOT / ".powerplane" / f"test-{os.getpid()}"
TEST_ENV = {
    "PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port(pair=True)}",
    "PP_INFLUX_URL": f"http://127.0.0.1:{free_port()}",
    "PP_STATE_DIR": str(_STATE),
    "PP_SIGNING_KEY_FILE": str(_STATE / "keys" / "site.key"),
    "PP_SITE_FILE": str(ROOT / "examples" / "lab.toml"),
}


_ADMIN: list[ClientAuth] = []  # the session broker's admin credentials, once `cfg` has started it


@pytest.fixture(autouse=True)
def _tests_are_admin() -> None:
    if _ADMIN:
        set_process_auth(_ADMIN[-1])


@pytest.fixture(scope="session")
def cfg() -> Iterator[Config]:
    old = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    config = load_config()
    for old_state in (ROOT / ".powerplane").glob("test-*"):  # sessions killed mid-way: stop their servers
        pid = old_state.name.removeprefix("test-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            devservers.down(load_config(env={"PP_STATE_DIR": str(old_state)}), wipe=True)
    devservers.up(config)
    # The tests' own clients write and read every topic: the admin principal. The stages they start take
    # their own roles (powerplane.access). Set again before every test (`_tests_are_admin`): a CLI command
    # run in process sets its own role for the process.
    _ADMIN.append(client_auth(config, "admin"))
    set_process_auth(_ADMIN[-1])
    try:
        yield config
    finally:
        devservers.down(config, wipe=True)
        shutil.rmtree(config.state_dir, ignore_errors=True)  # keys and spools of this session too
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
