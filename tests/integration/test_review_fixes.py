"""Defects a review reproduced; each test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient, ConnectionClosed, InternalError
from client_sdk.client import Reconnect
from protocol.frame import encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from server import App, Context, Server, ServerConfig
from tests.conftest import StartServer, wait_for
from tests.integration.test_restart import read_pid
from tests.integration.test_serve_process import spawn_serve
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb


def bad_returns() -> App:
    app = App("bad", public=True)

    @app.handler(pb.NoteRequest)
    def sync_dict(ctx: Context, msg: pb.NoteRequest) -> Any:
        return {"oops": 1}

    @app.handler(pb.SleepRequest)
    async def async_str(ctx: Context, msg: pb.SleepRequest) -> Any:
        return "not a message"

    return app


async def test_a_reply_that_is_not_a_message_is_internal_and_nothing_stalls(
    start_server: StartServer,
) -> None:
    server = await start_server(bad_returns(), consumers=2)
    async with (
        await AsyncClient.connect(*server.address, app_registry()) as one,
        await AsyncClient.connect(*server.address) as other,
    ):
        for _ in range(3):  # more than there are consumers: none may die
            with pytest.raises(InternalError):
                await one.request(pb.SleepRequest(ms=0, tag=1), timeout=5)
        with pytest.raises(InternalError):
            await one.request(pb.NoteRequest(text="x"), timeout=5)
        assert (await one.call(EchoRequest(data=b"a"), EchoReply, timeout=5)).data == b"a"
        assert (await other.call(EchoRequest(data=b"b"), EchoReply, timeout=5)).data == b"b"
    assert server.dispatcher.pending == 0
    assert all(not task.done() for task in server.dispatcher._consumers)


async def test_a_reply_over_max_frame_is_internal_and_the_connection_stays(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app(), max_frame=64 * 1024)
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        with pytest.raises(InternalError):
            await client.request(pb.BigRequest(size=100_000), timeout=5)
        assert (await client.call(pb.BigRequest(size=10), pb.BigReply)).data == b"x" * 10
        with pytest.raises(InternalError):  # the inline path for a known reply type too
            await client.request(pb.BigRequest(size=100_000), timeout=5)


async def test_queued_work_of_a_closed_connection_is_not_run(start_server: StartServer) -> None:
    app = App("counted", public=True)
    started: list[int] = []
    gate = asyncio.Event()

    @app.handler(pb.UnorderedSleepRequest, ordered=False)
    async def slow(ctx: Context, msg: pb.UnorderedSleepRequest) -> pb.SleepReply:
        started.append(msg.tag)
        await gate.wait()
        return pb.SleepReply(tag=msg.tag)

    server = await start_server(app, consumers=2)
    _, writer = await asyncio.open_connection(*server.address)
    payloads = [pb.UnorderedSleepRequest(tag=i).SerializeToString() for i in range(20)]
    writer.write(b"".join(encode_frame(1005, 0, i + 1, p) for i, p in enumerate(payloads)))
    await wait_for(lambda: len(started) == 2)
    writer.transport.abort()
    await wait_for(lambda: not server.connections)
    gate.set()
    await asyncio.sleep(0.2)
    assert len(started) == 2  # the other 18 belonged to a connection that is gone
    assert server.dispatcher.busy == 0


async def test_sdk_reconnects_again_if_the_link_drops_during_its_callback() -> None:
    server = Server(config=ServerConfig(port=0))
    await server.start()
    client = await AsyncClient.connect(*server.address, reconnect=Reconnect(initial=0.02))
    calls: list[int] = []

    async def flaky(c: AsyncClient) -> None:
        calls.append(c.reconnects)
        if len(calls) == 1:  # the new connection dies while the callback runs
            for conn in list(server.connections):
                conn.transport.abort()
            await asyncio.sleep(0.1)

    client.on_reconnect(flaky)
    try:
        for conn in list(server.connections):
            conn.transport.abort()
        # Once the client knows it is down, a request waits through both reconnects.
        await wait_for(lambda: client._down is not None)
        assert (await client.call(EchoRequest(data=b"ok"), EchoReply, timeout=5)).data == b"ok"
        assert client.reconnects == 2 and calls == [1, 2]
    finally:
        await client.close()
        await server.stop(timeout=1)


async def test_request_waiting_for_write_room_keeps_its_timeout() -> None:
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def never_reads(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    listener = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = await AsyncClient.connect(*listener.sockets[0].getsockname()[:2])
    await accepted.get()
    await client.send_raw(b"\x00" * (64 << 20))  # fills every buffer: writing pauses
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await client.request(EchoRequest(data=b"x"), timeout=0.5)
    assert loop.time() - started < 3
    client._transport.abort()  # type: ignore[union-attr]
    listener.close()
    sock.close()


async def test_sigterm_during_a_restart_leaves_no_server_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "tickwire.pid"
    proc, address = await spawn_serve("--pid-file", str(pid_file))
    proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.03)  # the successor is still importing
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    await asyncio.sleep(1.5)  # long enough for a successor to have come up
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection(*address)
        writer.close()
    pid = read_pid(pid_file)
    assert pid is None or pid == proc.pid


async def test_a_failed_reload_changes_nothing(start_server: StartServer) -> None:
    class Explodes:
        def wrap(self, route: Any, call_next: Any) -> Any:
            raise RuntimeError("layer cannot wrap")

    server = await start_server(make_app())
    before = (server.apps, server.routes, server.registry)
    broken = make_app()
    broken.add_middleware(Explodes())
    with pytest.raises(RuntimeError):
        server.swap_apps(broken)
    assert (server.apps, server.routes, server.registry) == before
    assert server.dispatcher.routes is server.routes
    async with await AsyncClient.connect(*server.address) as client:
        assert (await client.call(EchoRequest(data=b"z"), EchoReply)).data == b"z"
    _ = ConnectionClosed


@pytest.mark.parametrize("awaited", [False, True])
async def test_half_close_still_gets_every_reply(start_server: StartServer, awaited: bool) -> None:
    server = await start_server(make_app())
    reader, writer = await asyncio.open_connection(*server.address)
    for seq in range(1, 4):
        if awaited:
            payload = pb.SleepRequest(ms=50, tag=seq).SerializeToString()
            writer.write(encode_frame(1000, 0, seq, payload))
        else:
            writer.write(encode_frame(10, 0, seq, EchoRequest(data=b"h").SerializeToString()))
    writer.write_eof()  # the client is done sending, not done listening
    data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    from protocol.frame import FrameDecoder

    frames = FrameDecoder().feed(data)
    assert [f.seq for f in frames] == [1, 2, 3]
    await wait_for(lambda: not server.connections)
    assert server.stats.close_reasons.get("peer_closed") == 1
