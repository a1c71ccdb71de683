"""Fixtures for API tests: a real in-process grpc.aio server per test (see api_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from api_harness import Api, running_api


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_core: success path through the core's math (simulate/optimize); fails while the "
        "core is a stub",
    )


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    """Stubs to a fresh server running ServewiseServicer on 127.0.0.1:0, with health."""
    async with running_api() as running:
        yield running
