"""Consumer handlers run through the consumer loop's own path on an in-memory SQLite store: no broker,
no database server (see ``tests/support/handlers.py``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/handlers/" in str(item.path):
            item.add_marker(pytest.mark.handlers)
