"""The reliability suite (`pytest tests/reliability`): the loop on a bad day, one test per finding of
issue 12, on the real servers of the session fixture `cfg` (tests/conftest.py) where a finding needs them.
Every test here is marked `reliability`."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
