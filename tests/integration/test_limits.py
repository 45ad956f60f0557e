"""Backpressure and limits against a real server: nothing unbounded, nothing lost."""

from __future__ import annotations

import asyncio
import socket

import pytest

from client_sdk import AsyncClient, ConnectionClosed
from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb


async def test_flood_pauses_reading_then_every_reply_arrives_in_order(
    start_server: StartServer,
) -> None:
    """A client that writes far more than it reads is paused, not buffered without bound
    (here by the frame count; the byte budget is large enough to stay out of the way)."""
    server = await start_server(mailbox_limit=64, prelogin_input_bytes=1 << 20)
    peer = await RawPeer.connect(server.address)
    count = 60_000
    payload = EchoRequest(data=b"f" * 100).SerializeToString()
    frame_bytes = b"".join(encode_frame(10, 0, seq, payload) for seq in range(1, count + 1))
    # Write without reading: the kernel buffers fill, the server's mailbox fills, it pauses.
    peer.writer.write(frame_bytes)
    await wait_for(lambda: server.stats.reads_paused > 0)
    conn = next(iter(server.connections))
    assert conn.mailbox is not None and len(conn.mailbox) < 64 + 3000  # limit + one read
    frames = await peer.read_frames(count, timeout=60)
    assert [f.seq for f in frames] == list(range(1, count + 1))
    assert all(f.msg_id == 11 for f in frames)
    assert server.stats.reads_resumed > 0
    assert server.dispatcher.pending == 0
    await peer.close()


async def test_overloaded_when_server_queue_is_full_and_order_kept(
    start_server: StartServer,
) -> None:
    app = make_app()
    server = await start_server(app, max_pending=8)
    peer = await RawPeer.connect(server.address)
    # The first frame is awaited (gated); the rest queue behind it, past the limit of 8.
    peer.send_frame(1010, 0, 1, pb.GateRequest(tag=1).SerializeToString())
    for seq in range(2, 21):
        peer.send_frame(10, 0, seq, EchoRequest(data=b"q").SerializeToString())
    await wait_for(lambda: server.stats.overloaded > 0)
    app.gate.set()  # type: ignore[attr-defined]
    frames = await peer.read_frames(20)
    assert [f.seq for f in frames] == list(range(1, 21))
    codes = [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]
    overloaded = [f.seq for f, c in zip(frames, codes, strict=True) if c == ErrorCode.OVERLOADED]
    assert overloaded, codes
    # Answered, not dropped: every frame got exactly one reply, and later ones work again.
    assert server.stats.overloaded == len(overloaded)
    peer.send_frame(10, 0, 99, EchoRequest(data=b"after").SerializeToString())
    [after] = await peer.read_frames(1)
    assert after.msg_id == 11 and after.seq == 99
    await peer.close()


async def test_slow_consumer_is_cut_off(start_server: StartServer) -> None:
    server = await start_server(make_app(), slow_consumer_bytes=256 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address)
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    request = pb.BigRequest(size=900_000).SerializeToString()
    for seq in range(1, 41):  # 36 MB of replies that the client never reads
        writer.write(encode_frame(1008, 0, seq, request))
    await wait_for(lambda: server.stats.close_reasons.get("slow_consumer", 0) == 1, timeout=20)
    assert server.stats.errors[ErrorCode.SLOW_CONSUMER] == 1
    assert not server.connections
    writer.close()


async def test_too_many_connections(start_server: StartServer) -> None:
    server = await start_server(max_connections=2)
    a = await AsyncClient.connect(*server.address)
    b = await AsyncClient.connect(*server.address)
    peer = await RawPeer.connect(server.address)
    frames = await peer.read_until_closed()
    assert len(frames) == 1 and frames[0].flags == Flags.ERROR and frames[0].seq == 0
    assert Error.FromString(frames[0].payload).code == ErrorCode.TOO_MANY_CONNECTIONS
    assert (await a.call(EchoRequest(data=b"a"), EchoReply)).data == b"a"
    await a.close()
    await wait_for(lambda: len(server.connections) == 1)
    async with await AsyncClient.connect(*server.address) as c:
        assert (await c.call(EchoRequest(data=b"c"), EchoReply)).data == b"c"
    await b.close()


async def test_idle_connection_is_closed_with_reason(start_server: StartServer) -> None:
    server = await start_server(idle_timeout=0.3, sweep_interval=0.05)
    idle = await AsyncClient.connect(*server.address)
    busy = await AsyncClient.connect(*server.address)
    for _ in range(10):  # the busy one keeps talking for 0.6 s, twice the timeout
        await busy.ping()
        await asyncio.sleep(0.06)
    closed = await asyncio.wait_for(idle.wait_closed(), 5)
    assert isinstance(closed, ConnectionClosed) and closed.code == ErrorCode.IDLE_TIMEOUT
    assert not busy.closed
    assert server.stats.close_reasons["idle_timeout"] == 1
    await busy.close()


async def test_stop_sends_goaway_after_in_flight_replies(start_server: StartServer) -> None:
    server = await start_server(make_app())
    client = await AsyncClient.connect(*server.address, app_registry())
    reply = asyncio.ensure_future(client.call(pb.SleepRequest(ms=200, tag=5), pb.SleepReply))
    await asyncio.sleep(0.05)
    await server.stop(timeout=5)
    assert (await reply).tag == 5
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert client.goaway is not None and client.goaway.reason == ErrorCode.SERVER_SHUTDOWN
    assert closed.code == ErrorCode.SERVER_SHUTDOWN


async def test_a_request_waiting_for_write_room_keeps_its_timeout() -> None:
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def never_reads(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    listener = await asyncio.start_server(never_reads, "127.0.0.1", 0)
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


async def test_slow_consumer_gets_its_closing_frame_though_it_kept_sending(
    start_server: StartServer,
) -> None:
    """A peer that stops reading but keeps sending leaves unread input in the server's
    socket; closing such a socket outright makes the kernel reset it and drop the closing
    frame. The server lingers instead (half-closes and drops the input), so a peer that
    reads at all gets every reply written before the cut, then SLOW_CONSUMER."""
    server = await start_server(
        make_app(),
        slow_consumer_timeout=0.3,
        sweep_interval=0.05,
        slow_consumer_bytes=64 << 20,
        prelogin_output_bytes=64 << 20,
    )
    reader, writer = await asyncio.open_connection(*server.address)
    big = pb.BigRequest(size=900_000).SerializeToString()
    writer.write(b"".join(encode_frame(1008, 0, seq, big) for seq in range(1, 11)))
    echo = EchoRequest(data=b"e" * 100).SerializeToString()
    # More than the mailbox and the socket buffers take: reading pauses with input unread.
    writer.write(b"".join(encode_frame(10, 0, seq, echo) for seq in range(11, 20_011)))
    await wait_for(lambda: server.stats.errors[ErrorCode.SLOW_CONSUMER] == 1, timeout=10)
    peer = RawPeer(reader, writer)
    frames = await peer.read_until_closed(timeout=10)
    assert frames[0].seq == 1 and len(frames[0].payload) > 900_000
    last = frames[-1]
    assert last.msg_id == 3 and last.seq == 0
    assert Error.FromString(last.payload).code == ErrorCode.SLOW_CONSUMER
    writer.close()
