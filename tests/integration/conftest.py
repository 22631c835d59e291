"""Integration tests run against real servers that the project starts itself (`powerplane dev up`):
Apache Kafka 4.x in KRaft mode and VictoriaMetrics. They use their own ports and state directory,
so they never touch a demo a developer has running."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerplane import devservers
from powerplane.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
TEST_ENV = {
    "PP_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
    "PP_INFLUX_URL": "http://127.0.0.1:28428",
    "PP_STATE_DIR": str(ROOT / ".powerplane" / "test"),
    "PP_SIGNING_KEY_FILE": str(ROOT / ".powerplane" / "test" / "keys" / "site.key"),
    "PP_SITE_FILE": str(ROOT / "examples" / "lab.toml"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cfg() -> Iterator[Config]:
    old = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    config = load_config()
    devservers.down(config)  # a previous run killed mid-way must not leave its servers behind
    shutil.rmtree(Path(config.state_dir), ignore_errors=True)
    devservers.up(config)
    try:
        yield config
    finally:
        devservers.down(config, wipe=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
