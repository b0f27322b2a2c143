"""Slow security tests (the 10,000-input fuzz runs) are skipped unless asked for:
``pytest -m slow tests/security`` or ``PRIVACY_BRIDGE_SLOW=1``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("PRIVACY_BRIDGE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow fuzz run: select it with -m slow or PRIVACY_BRIDGE_SLOW=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
