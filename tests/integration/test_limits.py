"""Backpressure and limits against a real server: nothing unbounded, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

from client_sdk import AsyncClient, ConnectionClosed
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from protocol.system import MAX_ERROR_FRAME, MAX_ERROR_TEXT, error_frame
from server import App, Context, HandlerError
from server.auth import MemoryUsers
from server.connection import LINGER_BYTES
from server.dispatch import OVERSIZED_MESSAGE, READ_SLACK
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


USERS = MemoryUsers({"alice": "pw-a"})


def codes(frames: list) -> list[int]:
    """Each frame's error code, 0 for a frame that is not an Error."""
    return [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]


async def test_prelogin_frame_limit_until_login_and_again_after_logout(
    start_server: StartServer,
) -> None:
    server = await start_server(authenticator=USERS, prelogin_max_frame=16 * 1024)
    async with await AsyncClient.connect(*server.address) as client:
        assert (await client.hello()).max_frame == 16 * 1024
        await client.login("alice", "pw-a")
        assert (await client.hello()).max_frame == server.config.max_frame
        data = b"L" * 100_000  # over the pre-login limit, fine once logged in
        assert (await client.call(EchoRequest(data=data), EchoReply)).data == data
        await client.logout()
        assert (await client.hello()).max_frame == 16 * 1024
    peer = await RawPeer.connect(server.address)
    peer.send_frame(10, 0, 1, EchoRequest(data=b"x" * 17_000).SerializeToString())
    frames = await peer.read_until_closed()
    assert codes(frames) == [ErrorCode.FRAME_TOO_LARGE]
    await peer.close()
    await wait_for(lambda: server.stats.close_reasons["frame_too_large"] == 1)


async def test_the_sdk_lifts_its_frame_check_once_logged_in(start_server: StartServer) -> None:
    """A Welcome before login names the pre-login limit and the session's: the SDK checks
    requests against the one in force, not the limit it heard first."""
    server = await start_server(authenticator=USERS, prelogin_max_frame=16 * 1024)
    async with await AsyncClient.connect(*server.address) as client:
        welcome = await client.hello()
        assert welcome.session_max_frame == server.config.max_frame
        data = b"L" * 100_000
        with pytest.raises(LocalProtocolError):
            await client.call(EchoRequest(data=data), EchoReply)
        await client.login("alice", "pw-a")
        assert (await client.call(EchoRequest(data=data), EchoReply)).data == data
        await client.logout()
        with pytest.raises(LocalProtocolError):
            await client.call(EchoRequest(data=data), EchoReply)


async def test_the_metrics_show_what_peers_make_the_server_hold(
    start_server: StartServer,
) -> None:
    server = await start_server(metrics=True, metrics_port=0)
    assert server.metrics is not None

    def gauge(name: str) -> float:
        assert server.metrics is not None
        text = server.metrics.respond("/metrics")[1].decode()
        return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1])

    assert gauge("tickwire_input_bytes_queued") == 0
    peer = await RawPeer.connect(server.address)
    # Half of a 10,000-byte Echo: a partial frame the server holds.
    frame = encode_frame(10, 0, 1, EchoRequest(data=b"p" * 10_000).SerializeToString())
    peer.send(frame[:5_000])
    await wait_for(lambda: server.dispatcher.partial_bytes == 5_000)
    assert gauge("tickwire_input_bytes_queued") == 5_000
    assert gauge("tickwire_output_bytes_held") == 0
    assert gauge("tickwire_connections_parked") == 0
    await peer.close()
    await wait_for(lambda: server.dispatcher.partial_bytes == 0)
    assert gauge("tickwire_input_bytes_queued") == 0


async def test_a_connection_at_its_input_budget_stops_being_read(
    start_server: StartServer,
) -> None:
    """Reading pauses once the queued payloads reach the budget: the connection holds at
    most its budget plus the read that reached it, the rest waits in the socket, and
    nothing is lost."""
    app = make_app()
    server = await start_server(app, prelogin_input_bytes=20_000)
    peer = await RawPeer.connect(server.address)
    # The first frame is awaited (gated): the echoes queue behind it, 5 KB each, 500 KB
    # in all, far past the 20,000-byte budget.
    peer.send_frame(1010, 0, 1, pb.GateRequest(tag=1).SerializeToString())
    echo = EchoRequest(data=b"b" * 5_000).SerializeToString()
    peer.send(b"".join(encode_frame(10, 0, seq, echo) for seq in range(2, 102)))
    await wait_for(lambda: server.stats.reads_paused > 0)
    conn = next(iter(server.connections))
    await asyncio.sleep(0.1)  # were it still read, more would be queued by now
    assert 20_000 <= conn.queued_bytes <= 20_000 + READ_SLACK and conn.reading_paused
    assert server.dispatcher.queued_bytes == conn.queued_bytes
    app.gate.set()  # type: ignore[attr-defined]
    frames = await peer.read_frames(101)
    assert [f.seq for f in frames] == list(range(1, 102))
    assert codes(frames) == [0] * 101
    assert server.stats.overloaded == 0
    assert server.dispatcher.queued_bytes == conn.queued_bytes == 0
    await peer.close()


async def test_the_server_input_budget_sheds_across_connections(
    start_server: StartServer,
) -> None:
    app = make_app()
    server = await start_server(app, max_input_bytes_total=31_000, prelogin_input_bytes=60_000)
    peers = [await RawPeer.connect(server.address) for _ in range(2)]
    echo = EchoRequest(data=b"t" * 5_000).SerializeToString()
    for peer in peers:
        peer.send_frame(1010, 0, 1, pb.GateRequest(tag=1).SerializeToString())
        peer.send(b"".join(encode_frame(10, 0, seq, echo) for seq in range(2, 6)))
        await wait_for(lambda: sum(c.queued_bytes > 0 for c in server.connections) > 0)
    await wait_for(lambda: server.stats.overloaded > 0)
    assert server.dispatcher.queued_bytes <= 31_000
    app.gate.set()  # type: ignore[attr-defined]
    first, second = [codes(await peer.read_frames(5)) for peer in peers]
    assert first == [0] * 5  # 20 KB: under the server's budget
    assert second[:3] == [0, 0, 0] and second[3:] == [ErrorCode.OVERLOADED] * 2
    assert server.dispatcher.queued_bytes == 0
    for peer in peers:
        await peer.close()
    await wait_for(lambda: not server.connections)
    assert server.dispatcher.queued_bytes == server.dispatcher.partial_bytes == 0


async def test_partial_frames_pause_while_the_server_is_over_its_input_budget(
    start_server: StartServer,
) -> None:
    server = await start_server(max_input_bytes_total=20_000)
    frame = encode_frame(10, 0, 1, EchoRequest(data=b"p" * 16_000).SerializeToString())
    peers: list[RawPeer] = []
    for _ in range(3):  # 8 KB of a 16 KB frame each: the third passes the budget
        peers.append(await RawPeer.connect(server.address))
        peers[-1].send(frame[:8000])
        await wait_for(lambda: server.dispatcher.partial_bytes == 8000 * len(peers))
    [parked] = server.dispatcher.parked
    assert parked.reading_paused
    await peers[0].close()
    # Back under the budget: the parked connection reads again and is answered.
    await wait_for(lambda: not server.dispatcher.parked)
    peers[2].send(frame[8000:])
    [reply] = await peers[2].read_frames(1)
    assert reply.msg_id == 11 and len(reply.payload) > 16_000
    for peer in peers[1:]:
        await peer.close()


def quoting_app() -> App:
    app = App("quoting", public=True)

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        raise HandlerError(400, f"no room named {msg.text!r}")

    @app.handler(pb.BigRequest)
    def big(ctx: Context, msg: pb.BigRequest) -> pb.BigReply:
        return pb.BigReply(data=b"x" * msg.size)

    return app


async def test_peer_text_in_an_error_is_cut_short(start_server: StartServer) -> None:
    server = await start_server(quoting_app(), authenticator=USERS)
    async with await AsyncClient.connect(*server.address, registry=app_registry()) as client:
        await client.login("alice", "pw-a")
        with pytest.raises(Exception) as raised:
            await client.request(pb.NoteRequest(text="r" * 500_000))
        message = getattr(raised.value, "message", "")
        assert message.startswith("no room named 'rrr") and message.endswith("\u2026")
        assert len(message.encode()) <= MAX_ERROR_TEXT
        assert (await client.call(EchoRequest(data=b"ok"), EchoReply)).data == b"ok"
    frame = error_frame(ErrorCode.BAD_FLAGS, "\u00e9" * 10_000, 10, 1)
    assert len(frame) <= MAX_ERROR_FRAME


async def test_an_oversized_reply_is_answered_each_time_and_logged_once(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(quoting_app(), max_frame=64 * 1024)
    caplog.set_level(logging.ERROR, logger="tickwire.dispatch")
    peer = await RawPeer.connect(server.address)
    for seq in range(1, 6):
        peer.send_frame(1008, 0, seq, pb.BigRequest(size=100_000).SerializeToString())
    frames = await peer.read_frames(5)
    assert codes(frames) == [ErrorCode.INTERNAL] * 5
    assert {Error.FromString(f.payload).message for f in frames} == {OVERSIZED_MESSAGE}
    assert server.stats.oversized_replies == 5
    assert len([r for r in caplog.records if "byte reply" in r.getMessage()]) == 1
    await peer.close()


async def test_a_lingering_close_gives_up_on_a_peer_that_keeps_pouring(
    start_server: StartServer,
) -> None:
    """After a closing frame the server reads and drops what the peer still sends, but
    only up to LINGER_BYTES: past that it aborts, long before close_grace."""
    server = await start_server(close_grace=60)
    peer = await RawPeer.connect(server.address)
    peer.send((2**31).to_bytes(4, "big"))  # FRAME_TOO_LARGE: the server lingers
    await wait_for(lambda: server.stats.errors[ErrorCode.FRAME_TOO_LARGE] == 1)
    junk = b"\0" * (1 << 20)
    with contextlib.suppress(ConnectionError):
        for _ in range(LINGER_BYTES // len(junk) + 4):
            peer.writer.write(junk)
            await peer.writer.drain()
    await wait_for(lambda: not server.connections, timeout=20)
    peer.writer.transport.abort()
