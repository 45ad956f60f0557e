"""Fixtures of the integration tests: leftover server processes, and the store backends
the session and push tests run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.test_serve_process import LOGS


@pytest.fixture(autouse=True)
async def no_leftover_servers() -> AsyncIterator[None]:
    """A test that fails half-way must not leave its `tickwire serve` running."""
    yield
    for proc in list(LOGS):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        LOGS.pop(proc, None)


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Server config overrides for each store backend; Redis is a real redis-server."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return {"store": "redis", "redis_url": url}
    return {}
