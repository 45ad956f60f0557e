"""Cluster fixtures: nodes are Servers on port 0 sharing one real redis-server (a fresh
one per test where the test stops or restarts Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from server.app import App
from server.auth import Authenticator
from server.config import ServerConfig
from server.server import Server
from tests.conftest import need_redis_binary
from tests.store.redisproc import RedisProcess, start_redis

StartNode = Callable[..., Awaitable[Server]]


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may halt and restart."""
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


@pytest.fixture
async def start_node(redis_url: str) -> AsyncIterator[StartNode]:
    """Start a node of the cluster on the session's Redis (or `cluster_url=`): a Server
    on port 0 with a short heartbeat; stopped after the test."""
    nodes: list[Server] = []

    async def start(
        *apps: App,
        node_id: str,
        authenticator: Authenticator | None = None,
        **config: Any,
    ) -> Server:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "cluster_url": redis_url,
            "node_id": node_id,
            "cluster_heartbeat": 0.1,
            "cluster_node_ttl": 0.5,
            **config,
        }
        server = Server(*apps, config=ServerConfig(**settings), authenticator=authenticator)
        await server.start()
        nodes.append(server)
        return server

    yield start
    for server in reversed(nodes):
        await server.stop(timeout=1.0)
