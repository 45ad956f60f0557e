"""Shared fixtures: real servers on 127.0.0.1 port 0, on uvloop like production."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import uvloop

from client_sdk import AsyncClient
from server import App, Server, ServerConfig, dispatch, fastpath
from server.auth import Authenticator
from tests.serveproc import LOGS
from tests.store.redisproc import RedisProcess, redis_binary, start_redis


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on uvloop, the loop the server runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


StartServer = Callable[..., Awaitable[Server]]
StartNode = Callable[..., Awaitable[Server]]

#: The read fast path's builds this checkout can run: interpreted always, compiled where
#: setup.py could build the extension (tests/test_fastpath_build.py says when it must).
FRAMELOOPS = ["interpreted", *(["compiled"] if fastpath.COMPILED else [])]


@pytest.fixture(params=FRAMELOOPS)
def fastpath_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run the test's servers on one build of server/fastpath.py (the module returned):
    the fast path's behaviour must not depend on whether it was compiled."""
    module = fastpath if request.param == "compiled" else fastpath.load_pure()
    # Dispatcher takes run_read from `fastpath.load()`; the pure module's load("auto")
    # returns the pure module itself.
    monkeypatch.setattr(dispatch, "fastpath", module)
    return module


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start a Server on port 0 with the given apps, authenticator and config overrides;
    stopped after."""
    servers: list[Server] = []

    async def start(
        *apps: App, authenticator: Authenticator | None = None, **config: Any
    ) -> Server:
        server = Server(
            *apps,
            config=ServerConfig(host="127.0.0.1", port=0, **config),
            authenticator=authenticator,
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(timeout=1.0)


@pytest.fixture
async def opened() -> AsyncIterator[list[AsyncClient]]:
    """Clients a test opens (it appends them), closed after it."""
    made: list[AsyncClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
def clients(opened: list[AsyncClient]) -> list[AsyncClient]:
    """`opened`, under the name most tests use. Test modules that need another shape of it
    (a connect function) define their own `clients`; `opened` stays this one."""
    return opened


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until `predicate()` holds; fail the test with a clear message if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


NO_REDIS = (
    "redis-server not found on PATH, so the Redis backend is not tested "
    "(install it: apt-get install redis-server)"
)


def need_redis_binary() -> str:
    """The redis-server path; without one, skip outside CI and fail under CI=true, where
    a silently untested backend would pass for a tested one."""
    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{NO_REDIS}; CI=true requires it")
        pytest.skip(NO_REDIS)
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The session's Redis, emptied for this test."""
    with redis_server.client() as client:
        client.flushdb()
        client.script_flush()
    return redis_server.url


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


@pytest.fixture(autouse=True)
async def no_leftover_servers() -> AsyncIterator[None]:
    """A test that fails half-way must not leave its `tickwire serve` running."""
    yield
    for proc in list(LOGS):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        LOGS.pop(proc, None)
