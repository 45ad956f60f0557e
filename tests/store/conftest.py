"""Store fixtures: `store` runs each shared test on both backends (the Redis one on the
session's own redis-server, see tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from server.store import MemoryStore, RedisStore, Store
from tests.conftest import need_redis_binary
from tests.store.redisproc import RedisProcess, start_redis


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        # A short sweep period so that sweeps happen within the tests' short TTLs too.
        opened: Store = await MemoryStore.open(sweep_interval=0.05)
    else:
        opened = await RedisStore.connect(request.getfixturevalue("redis_url"))
    yield opened
    await opened.close()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test alone, for tests that kill or reconfigure it."""
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


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
