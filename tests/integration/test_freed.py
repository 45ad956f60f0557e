"""A closed connection is freed by reference counting alone (docs/internet.md, "Freed on
close"): with the cycle collector off, a weak reference to it dies once it has closed,
whichever way it closed and whatever ran on it.

The server runs in this process (start_server) so the test can hold the weak reference;
the peers are real sockets.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.frame import HEADER
from protocol.proto.system_pb2 import (
    EchoReply,
    EchoRequest,
    LoginReply,
    LoginRequest,
    LogoutReply,
    LogoutRequest,
)
from server import Server
from server.auth import MemoryUsers
from server.connection import Connection
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "pw-a"})


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cycle collector off for the test: only reference counting frees anything."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def server(start_server: StartServer, no_gc: None) -> Server:
    return await start_server(make_app(), authenticator=USERS)


def newest(server: Server) -> weakref.ref[Connection]:
    """A weak reference to the connection the server accepted last."""
    conn = max(server.connections, key=lambda c: c.id)
    return weakref.ref(conn)


async def gone(ref: weakref.ref[Connection], server: Server) -> None:
    """Wait until the server let go of the connection, then check nothing else holds it."""
    await wait_for(lambda: ref() is None or ref() not in server.connections)
    # What is still scheduled for it (the Outbox's flush, a consumer's last step) runs
    # within a few loop iterations.
    for _ in range(20):
        if ref() is None:
            return
        await asyncio.sleep(0.01)
    conn = ref()
    holders = [type(r).__name__ for r in gc.get_referrers(conn)] if conn is not None else []
    del conn
    assert ref() is None, f"a closed connection is still held by {holders}"


Connect = Callable[[Server], Awaitable[AsyncClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[AsyncClient] = []

    async def open_client(server: Server) -> AsyncClient:
        client = await AsyncClient.connect(*server.address, registry=app_registry())
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


async def test_freed_after_peer_closes_mid_partial_frame(server: Server) -> None:
    peer = await RawPeer.connect(server.address)
    # The first 8 KiB of a 16 KiB Echo: the decoder holds them as a partial frame.
    peer.send(HEADER.pack(7 + 16_000, 10, 0, 1) + b"p" * 8_000)
    await wait_for(lambda: any(c.decoder.buffered for c in server.connections))
    ref = newest(server)
    await peer.close()
    await gone(ref, server)
    assert server.dispatcher.partial_bytes == 0


async def test_freed_after_sync_and_async_handlers_and_a_peer_close(
    server: Server, connect: Connect
) -> None:
    client = await connect(server)
    ref = newest(server)
    assert (await client.call(EchoRequest(data=b"sync"), EchoReply)).data == b"sync"
    assert (await client.call(pb.SleepRequest(ms=1, tag=3), pb.SleepReply)).tag == 3
    assert (await client.call(pb.BlockingRequest(ms=1), pb.BlockingReply)).thread_name
    await client.close()
    await gone(ref, server)


async def test_freed_after_a_pipelined_burst_through_the_mailbox(server: Server) -> None:
    peer = await RawPeer.connect(server.address)
    ref = newest(server)
    # An awaited frame first, so the rest queue in the mailbox behind it.
    burst = [HEADER.pack(7 + 2, 1000, 0, 1) + pb.SleepRequest(ms=20).SerializeToString()]
    payload = EchoRequest(data=b"m" * 100).SerializeToString()
    burst += [HEADER.pack(7 + len(payload), 10, 0, s) + payload for s in range(2, 200)]
    peer.send(b"".join(burst))
    await peer.read_frames(199)
    await peer.close()
    await gone(ref, server)
    assert server.dispatcher.queued_bytes == 0


async def test_freed_after_login_and_logout(server: Server, connect: Connect) -> None:
    client = await connect(server)
    ref = newest(server)
    reply = await client.request(LoginRequest(user="alice", password="pw-a", device="t"))
    assert isinstance(reply, LoginReply)
    assert (await client.call(pb.NoteRequest(text="n"), pb.SleepReply)).tag == 1
    assert isinstance(await client.request(LogoutRequest()), LogoutReply)
    await client.close()
    await gone(ref, server)


async def test_freed_after_a_logged_in_peer_drops(server: Server, connect: Connect) -> None:
    client = await connect(server)
    ref = newest(server)
    reply = await client.request(LoginRequest(user="alice", password="pw-a", device="t"))
    assert isinstance(reply, LoginReply)
    await client.close()  # the session waits for a Resume; the connection must not
    await gone(ref, server)


async def test_freed_after_the_server_closes_it(server: Server) -> None:
    peer = await RawPeer.connect(server.address)
    ref = newest(server)
    conn = ref()
    assert conn is not None
    conn.close_with(ErrorCode.IDLE_TIMEOUT, "test")
    del conn
    frames = await peer.read_until_closed()
    assert frames and frames[-1].msg_id == 3
    await gone(ref, server)


async def test_freed_after_an_abort(server: Server) -> None:
    peer = await RawPeer.connect(server.address)
    peer.send(HEADER.pack(7 + 16_000, 10, 0, 1) + b"p" * 8_000)
    await wait_for(lambda: any(c.decoder.buffered for c in server.connections))
    ref = newest(server)
    conn = ref()
    assert conn is not None
    conn.transport.abort()
    del conn
    await gone(ref, server)
    await peer.close()


async def test_freed_after_a_framing_error(server: Server) -> None:
    peer = await RawPeer.connect(server.address)
    ref = newest(server)
    peer.send(HEADER.pack(3, 10, 0, 1))  # length below the minimum: BAD_FRAME, closed
    frames = await peer.read_until_closed()
    assert frames[-1].msg_id == 3
    await peer.close()  # the server lingers until the peer closes its side
    await gone(ref, server)
