"""Shared fixtures: real servers on 127.0.0.1 port 0, on uvloop like production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from server import App, Server, ServerConfig


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on uvloop, the loop the server runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start a Server on port 0 with the given apps and config overrides; stopped after."""
    servers: list[Server] = []

    async def start(*apps: App, **config: Any) -> Server:
        server = Server(*apps, config=ServerConfig(host="127.0.0.1", port=0, **config))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(timeout=1.0)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until `predicate()` holds; fail the test with a clear message if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
