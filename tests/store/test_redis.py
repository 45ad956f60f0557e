"""What only the Redis backend has: connecting, failures translated into Store errors,
the pool, and the CAS script's EVALSHA fallback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
import redis.asyncio.connection
from redis.utils import HIREDIS_AVAILABLE

from server.store import RedisStore, StoreError, StoreUnavailable, open_store
from server.store.redis import CAS_SHA
from tests.store.redisproc import RedisProcess


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_redis_names_the_address() -> None:
    port = _unused_port()
    with pytest.raises(StoreUnavailable) as info:
        await RedisStore.connect(f"redis://127.0.0.1:{port}/0", connect_timeout=1)
    assert str(info.value) == f"redis at 127.0.0.1:{port} is unreachable: Connection refused"
    assert info.value.backend == "redis"
    assert info.value.address == f"127.0.0.1:{port}"
    assert not isinstance(info.value.__cause__, StoreError)  # the redis-py error is chained


async def test_open_store_redis_unreachable() -> None:
    port = _unused_port()
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port} is unreachable"):
        await open_store("redis", redis_url=f"redis://127.0.0.1:{port}/0")


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never answers, like a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_times_out(silent_server: int) -> None:
    with pytest.raises(StoreUnavailable, match=r"no answer to PING within 0\.2 s"):
        await RedisStore.connect(f"redis://127.0.0.1:{silent_server}/0", timeout=0.2)


async def test_a_server_that_is_not_redis() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(StoreUnavailable, match="does not speak Redis' protocol"):
            await RedisStore.connect(f"redis://127.0.0.1:{port}/0", timeout=1)
    finally:
        server.close()


async def test_a_bad_url_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        await RedisStore.connect("http://user:hunter2@host:1/0")
    assert "hunter2" not in str(info.value)
    assert "invalid redis URL" in str(info.value)


async def test_uses_the_hiredis_parser() -> None:
    assert HIREDIS_AVAILABLE
    assert redis.asyncio.connection.DefaultParser.__name__ == "_AsyncHiredisParser"


async def test_open_store_redis(redis_url: str) -> None:
    store = await open_store("redis", redis_url=redis_url, redis_max_connections=3)
    assert isinstance(store, RedisStore)
    assert store.max_connections == 3
    await store.set("k", b"v")
    assert await store.get("k") == b"v"
    await store.close()


async def test_more_concurrent_commands_than_connections_wait_their_turn(
    redis_url: str, redis_server: RedisProcess
) -> None:
    store = await RedisStore.connect(redis_url, max_connections=2)
    try:
        results = await asyncio.gather(*(store.incr("n") for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        with redis_server.client() as client:
            clients = client.client_list()
        assert len(clients) <= 3  # the pool's two, plus the one asking
    finally:
        await store.close()


async def test_cas_falls_back_to_eval_when_redis_forgot_the_script(
    redis_url: str, redis_server: RedisProcess
) -> None:
    store = await RedisStore.connect(redis_url)
    try:
        with redis_server.client() as client:
            client.script_flush()
            client.config_resetstat()
            assert client.script_exists(CAS_SHA) == [False]
            assert await store.compare_and_set("k", None, b"1") is True  # EVALSHA fails, EVAL
            assert client.script_exists(CAS_SHA) == [True]
            assert await store.compare_and_set("k", b"1", b"2") is True  # EVALSHA only
            stats = client.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 1
        assert stats["cmdstat_evalsha"]["calls"] == 2
        assert await store.get("k") == b"2"
    finally:
        await store.close()


async def test_ttl_is_rounded_up_to_whole_milliseconds(redis_url: str) -> None:
    store = await RedisStore.connect(redis_url)
    try:
        await store.set("k", b"v", ttl=1.0004)
        left = await store.ttl("k")
        assert left is not None and 0.9 < left <= 1.001
    finally:
        await store.close()


async def test_losing_redis_is_store_unavailable(own_redis: RedisProcess) -> None:
    store = await RedisStore.connect(own_redis.url, max_connections=4, connect_timeout=1)
    try:
        await store.set("k", b"v")
        own_redis.proc.kill()
        own_redis.proc.wait()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("k"),
            lambda: store.hset("h", {"f": b"v"}),
            lambda: store.compare_and_set("k", None, b"v"),
            lambda: store.expire("k", None),
            lambda: store.scan_prefix(""),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable, match=f":{own_redis.port} is unreachable"):
                await call()
    finally:
        await store.close()


async def test_a_restarted_redis_is_used_again_without_errors(redis_server: RedisProcess) -> None:
    """Every pooled connection is dead after a Redis restart; the one retry on a connection
    error replaces them without the caller seeing it. Simulated by killing the clients."""
    store = await RedisStore.connect(redis_server.url, max_connections=4)
    try:
        await asyncio.gather(*(store.set(f"k{i}", b"v") for i in range(8)))  # fill the pool
        with redis_server.client() as client:
            client.client_kill_filter(_type="normal", skipme=True)
        values = await asyncio.gather(*(store.get(f"k{i}") for i in range(8)))
        assert values == [b"v"] * 8
    finally:
        await store.close()
