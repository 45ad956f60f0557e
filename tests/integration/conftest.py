"""Fixtures of the integration tests: the store backends the session and push tests run on."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Server config overrides for each store backend; Redis is a real redis-server."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return {"store": "redis", "redis_url": url}
    return {}
