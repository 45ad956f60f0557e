"""Fixtures of the integration tests: the store backends the session and push tests run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.clients import Connect, open_clients


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Server config overrides for each store backend; Redis is a real redis-server."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return {"store": "redis", "redis_url": url}
    return {}


@pytest.fixture
async def clients() -> AsyncIterator[Connect]:
    """Clients of the test app (tests/clients.py), closed after the test."""
    async with open_clients() as connect:
        yield connect
