"""Cluster fixtures: a fresh redis-server for the tests that stop or restart it (the nodes
themselves come from `start_node` in tests/conftest.py, which tests/hostile uses too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.clients import Connect, open_clients
from tests.conftest import need_redis_binary
from tests.store.redisproc import RedisProcess, start_redis


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may halt and restart."""
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Connect]:
    """Clients of the test app (tests/clients.py), closed after the test."""
    async with open_clients() as connect:
        yield connect
