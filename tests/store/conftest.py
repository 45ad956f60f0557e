"""Store fixtures: `store` runs each shared test on both backends; `redis_server` is a
real redis-server of the test session's own, on a free port."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from server.store import MemoryStore, RedisStore, Store
from tests.store.redisproc import RedisProcess, redis_binary, start_redis

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


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        # A short sweep period so that sweeps happen within the tests' short TTLs too.
        opened: Store = await MemoryStore.open(sweep_interval=0.05)
    else:
        opened = await RedisStore.connect(request.getfixturevalue("redis_url"))
    yield opened
    await opened.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll an async predicate until it holds: expiry is asserted by waiting for it, never
    by sleeping a guessed time and hoping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)
