"""Handlers' ctx.cache on the server's store: namespaced per app, kept across a restart by
the memory store's snapshot, shared through Redis when configured."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from client_sdk import AsyncClient, HandlerTimeout
from server import App, Context, Server, ServerConfig
from tests.conftest import StartServer
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb
from tests.store.redisproc import RedisProcess


def counter_app(name: str) -> App:
    """NoteRequest increments the cache counter named by its text; the reply's tag is the
    new value."""
    app = App(name, public=True)

    @app.handler(pb.NoteRequest)
    async def count(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=await ctx.cache.incr(msg.text))

    return app


def reader_app(name: str) -> App:
    """SleepRequest reads counter `tag` back (as a decimal key), from its own namespace."""
    app = App(name, public=True)

    @app.handler(pb.SleepRequest)
    async def read(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        raw = await ctx.cache.get(str(msg.tag))
        return pb.SleepReply(tag=int(raw) if raw is not None else 0)

    return app


async def note(client: AsyncClient, text: str) -> int:
    return (await client.call(pb.NoteRequest(text=text), pb.SleepReply)).tag


async def test_cache_is_namespaced_per_app() -> None:
    server = Server(counter_app("counter"), reader_app("reader"), config=ServerConfig(port=0))
    await server.start()
    try:
        async with await AsyncClient.connect(*server.address, app_registry()) as client:
            assert [await note(client, "7") for _ in range(3)] == [1, 2, 3]
            # The reader app asks for the same key, in its own namespace: nothing there.
            assert (await client.call(pb.SleepRequest(tag=7), pb.SleepReply)).tag == 0
        assert server.store is not None
        assert await server.store.get("app:counter:7") == b"3"
    finally:
        await server.stop(timeout=1)


async def test_memory_store_snapshot_keeps_the_cache_across_a_restart(tmp_path: Path) -> None:
    config = ServerConfig(port=0, store_snapshot_path=str(tmp_path / "store.snap"))
    for expected in ([1, 2], [3, 4]):
        server = Server(counter_app("counter"), config=config)
        await server.start()
        async with await AsyncClient.connect(*server.address, app_registry()) as client:
            assert [await note(client, "hits"), await note(client, "hits")] == expected
        await server.stop(timeout=1)  # the final snapshot is written here


async def test_two_servers_share_the_cache_through_redis(redis_url: str) -> None:
    config = ServerConfig(port=0, store="redis", redis_url=redis_url)
    first = Server(counter_app("counter"), config=config)
    second = Server(counter_app("counter"), config=config)
    await first.start()
    await second.start()
    try:
        async with (
            await AsyncClient.connect(*first.address, app_registry()) as a,
            await AsyncClient.connect(*second.address, app_registry()) as b,
        ):
            assert await note(a, "shared") == 1
            assert await note(b, "shared") == 2
            assert await note(a, "shared") == 3
    finally:
        await first.stop(timeout=1)
        await second.stop(timeout=1)


async def test_unreachable_redis_fails_the_start_with_the_address() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--port",
        "0",
        "--set",
        "store=redis",
        "--set",
        "redis_url=redis://127.0.0.1:1/0",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    text = err.decode()
    assert "127.0.0.1:1" in text and "unreachable" in text and "Traceback" not in text


async def test_handler_timeout_cuts_a_handler_waiting_on_redis(
    start_server: StartServer, redis_server: RedisProcess, redis_url: str
) -> None:
    """handler_timeout cancels an async handler that is still waiting on Redis: the client
    gets TIMEOUT at the deadline, not the handler's reply once Redis answers. CLIENT PAUSE
    makes Redis hold every command for a while, standing in for a slow one."""
    app = App("slow-redis", public=True)

    @app.handler(pb.SleepRequest)
    async def wait_on_redis(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        await ctx.cache.get("anything")
        return pb.SleepReply(tag=msg.tag)

    server = await start_server(app, store="redis", redis_url=redis_url, handler_timeout=0.2)
    loop = asyncio.get_running_loop()
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        await client.request(pb.SleepRequest(tag=1))  # the pool's connection is open
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        paused_at = loop.time()
        started = loop.time()
        with pytest.raises(HandlerTimeout):
            await client.request(pb.SleepRequest(tag=2), timeout=5)
        assert loop.time() - started < 0.8
        # Redis is itself again once the pause ends; the next request is answered.
        await asyncio.sleep(max(0.0, paused_at + 1.05 - loop.time()))
        reply = await client.request(pb.SleepRequest(tag=3), timeout=5)
        assert isinstance(reply, pb.SleepReply) and reply.tag == 3
