"""Integration tests: every test here is marked `integration` and runs on the real servers of the session
fixture `cfg` (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

__all__ = ["ROOT", "free_port"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


