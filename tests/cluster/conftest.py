"""Cluster fixtures: a fresh redis-server for the tests that stop or restart it (the nodes
themselves come from `start_node` in tests/conftest.py, which tests/hostile uses too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import need_redis_binary
from tests.store.redisproc import RedisProcess, start_redis


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may halt and restart."""
    server = start_redis(need_redis_binary())
    yield server
    server.stop()
