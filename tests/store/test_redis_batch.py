"""What only the Redis backend's batch has: one MULTI/EXEC round trip, the single
commands' error translation, and the retry rules of server/store/redis.py (a batch whose
reply was lost is sent again, and that is harmless; one that timed out is not)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from server.store import RedisStore, StoreError, StoreTypeError, StoreUnavailable
from tests.store.redisproc import RedisProcess


def _calls(server: RedisProcess, command: str) -> int:
    with server.client() as client:
        stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_batch_is_one_transaction(redis_url: str, redis_server: RedisProcess) -> None:
    store = await RedisStore.connect(redis_url)
    try:
        with redis_server.client() as client:
            client.config_resetstat()
        batch = store.namespaced("app:x:").batch()  # a view's batch too
        batch.set("k", b"v", ttl=10)
        batch.hset("h", {"f": b"v"})
        batch.expire("h", 10)
        batch.sadd("s", b"m")
        batch.expire("s", None)
        batch.delete("k")
        assert await batch.run() == [True, 1, True, 1, True, 1]
        assert _calls(redis_server, "multi") == 1
        assert _calls(redis_server, "exec") == 1
        assert _calls(redis_server, "persist") == 1  # expire(None): PERSIST + EXISTS
        assert _calls(redis_server, "exists") == 1
        with redis_server.client() as client:
            assert client.pttl("app:x:h") > 9000
            assert client.pttl("app:x:s") == -1
    finally:
        await store.close()


async def test_ttls_are_rounded_up_to_whole_milliseconds(redis_url: str) -> None:
    store = await RedisStore.connect(redis_url)
    try:
        batch = store.batch()
        batch.set("k", b"v", ttl=1.0004)
        batch.set("h", b"v")
        batch.expire("h", 2.0000001)
        await batch.run()
        left = await store.ttl("k")
        assert left is not None and 0.9 < left <= 1.001
        left = await store.ttl("h")
        assert left is not None and 1.9 < left <= 2.001
    finally:
        await store.close()


async def test_an_error_for_the_whole_transaction_is_a_store_error_and_nothing_ran(
    redis_url: str, redis_server: RedisProcess
) -> None:
    """Out of memory: Redis refuses the writes as they are queued and then the EXEC
    (EXECABORT), so no operation ran, and the error is a plain StoreError."""
    store = await RedisStore.connect(redis_url)
    with redis_server.client() as client:
        client.set("before", b"v")
        client.config_set("maxmemory", 1)
    try:
        batch = store.batch()
        batch.delete("before")
        batch.set("k", b"v")
        with pytest.raises(StoreError) as info:
            await batch.run()
        assert type(info.value) is StoreError
        assert "none of it ran: command not allowed when used memory" in str(info.value)
        assert "before" not in str(info.value)  # no command arguments: they may be data
    finally:
        with redis_server.client() as client:
            client.config_set("maxmemory", 0)
        await store.close()
    with redis_server.client() as client:
        assert client.get("before") == b"v"
        assert client.exists("k") == 0


async def test_wrong_kind_errors_name_their_key(redis_url: str) -> None:
    store = await RedisStore.connect(redis_url)
    try:
        await store.set("str", b"v")
        batch = store.batch()
        batch.sadd("ok", b"m")
        batch.expire("str", None)  # fine on any kind
        batch.srem("str", b"m")
        with pytest.raises(StoreTypeError, match=r"^srem on key 'str': the key holds another"):
            await batch.run()
        assert await store.smembers("ok") == {b"m"}
    finally:
        await store.close()


async def test_losing_redis_fails_a_batch_with_store_unavailable(own_redis: RedisProcess) -> None:
    store = await RedisStore.connect(own_redis.url, connect_timeout=1)
    try:
        await store.set("k", b"v")
        own_redis.proc.kill()
        own_redis.proc.wait()
        batch = store.batch()
        batch.set("k", b"w")
        batch.sadd("s", b"m")
        with pytest.raises(StoreUnavailable, match=f":{own_redis.port} is unreachable"):
            await batch.run()
    finally:
        await store.close()


async def test_a_restarted_redis_is_used_again_without_errors(redis_server: RedisProcess) -> None:
    store = await RedisStore.connect(redis_server.url, max_connections=2)
    try:
        await asyncio.gather(*(store.set(f"k{i}", b"v") for i in range(4)))  # fill the pool
        with redis_server.client() as client:
            client.client_kill_filter(_type="normal", skipme=True)
        batch = store.batch()
        batch.set("k0", b"w")
        batch.sadd("s", b"m")
        assert await batch.run() == [True, 1]
    finally:
        await store.close()


class ReplyCutter:
    """A TCP proxy in front of Redis that, for the first transaction it sees (a write
    with EXEC in it), lets Redis run it but keeps the reply from the client: it either
    holds the reply ("hold": the client times out) or closes the client's connection
    ("drop": the client sees the connection lost)."""

    def __init__(self, redis_port: int, mode: Literal["hold", "drop"]) -> None:
        self.redis_port = redis_port
        self.mode = mode
        self.cut = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        armed = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if not self.cut and b"EXEC" in data:
                    self.cut = True
                    armed.set()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if armed.is_set():
                    armed.clear()
                    if self.mode == "drop":
                        writer.transport.abort()
                        return
                    while await up_reader.read(65536):  # hold: swallow the rest
                        pass
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        for coro in (upstream(), downstream()):
            task = asyncio.get_running_loop().create_task(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


@pytest.fixture
async def cutter(
    redis_server: RedisProcess, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ReplyCutter, str]]:
    proxy = ReplyCutter(redis_server.port, request.param)
    port = await proxy.start()
    yield proxy, f"redis://127.0.0.1:{port}/0"
    with contextlib.suppress(Exception):
        await proxy.close()


@pytest.mark.parametrize("cutter", ["drop"], indirect=True)
async def test_a_batch_whose_reply_was_lost_runs_again_to_the_same_effect(
    cutter: tuple[ReplyCutter, str], redis_server: RedisProcess
) -> None:
    """The one retry after a connection error: the transaction had run, so it runs
    twice; with idempotent writes only, the keys end as after one run. What the caller
    sees are the second run's results (SADD: 0 new), as with a retried single SADD."""
    proxy, url = cutter
    store = await RedisStore.connect(url, timeout=5)
    try:
        with redis_server.client() as client:
            client.config_resetstat()
        batch = store.batch()
        batch.set("k", b"v", ttl=30)
        batch.sadd("s", b"m")
        batch.hset("h", {"f": b"v"})
        assert await batch.run() == [True, 0, 0]
        assert proxy.cut
        assert _calls(redis_server, "exec") == 2
        assert await store.get("k") == b"v"
        assert await store.smembers("s") == {b"m"}
        assert await store.hgetall("h") == {"f": b"v"}
    finally:
        await store.close()


@pytest.mark.parametrize("cutter", ["hold"], indirect=True)
async def test_a_batch_that_timed_out_is_not_sent_again(
    cutter: tuple[ReplyCutter, str], redis_server: RedisProcess
) -> None:
    """No answer within `timeout`: it may have run (here it did), so it is not retried."""
    proxy, url = cutter
    store = await RedisStore.connect(url, timeout=0.3)
    try:
        with redis_server.client() as client:
            client.config_resetstat()
        batch = store.batch()
        batch.sadd("s", b"m")
        with pytest.raises(StoreUnavailable, match=r"no answer to MULTI within 0\.3 s"):
            await batch.run()
        assert proxy.cut
        assert _calls(redis_server, "exec") == 1
        with redis_server.client() as client:
            assert client.smembers("s") == {b"m"}
    finally:
        await store.close()
