"""A real server on port 0 driven by the real SDK: the request/reply paths."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import pytest

from client_sdk import (
    AsyncClient,
    Client,
    InternalError,
    ServerError,
    UnknownMessage,
)
from client_sdk.errors import HandlerTimeout
from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error, Ping, Pong
from server import App, Context
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb


async def test_echo_ping_and_describe(start_server: StartServer) -> None:
    server = await start_server(make_app())
    async with await AsyncClient.connect(*server.address) as client:
        reply = await client.call(EchoRequest(data=b"\x00hello"), EchoReply)
        assert reply.data == b"\x00hello"
        pong = await client.call(Ping(client_time_ns=123), Pong)
        assert pong.client_time_ns == 123 and pong.server_time_ns > 0
        assert await client.ping() > 0
        # A client with no generated code learns the schema and sends by name.
        remote = await client.describe(adopt=True)
        assert remote.table()[1000] == "testapp.SleepRequest"
        assert remote.table()[10] == "system.EchoRequest"
        reply2 = await client.request(remote.new("testapp.NoteRequest", text="abc"))
        assert reply2.DESCRIPTOR.full_name == "testapp.SleepReply"
        assert reply2.tag == 3  # type: ignore[attr-defined]


async def test_pipelined_replies_keep_request_order(start_server: StartServer) -> None:
    """Async handlers that finish out of order still answer in arrival order."""
    server = await start_server(make_app())
    peer = await RawPeer.connect(server.address)
    rng = random.Random(7)
    expected = []
    for seq in range(1, 301):
        if seq % 3:
            payload = pb.SleepRequest(ms=rng.randint(0, 5), tag=seq).SerializeToString()
            peer.send_frame(1000, 0, seq, payload)
        else:
            peer.send_frame(10, 0, seq, EchoRequest(data=str(seq).encode()).SerializeToString())
        expected.append(seq)
    frames = await peer.read_frames(300)
    assert [f.seq for f in frames] == expected
    assert all(f.flags == Flags.RESPONSE for f in frames)
    await peer.close()


async def test_connections_run_in_parallel(start_server: StartServer) -> None:
    """One connection's slow async handler does not hold up another connection."""
    app = make_app()
    server = await start_server(app)
    async with (
        await AsyncClient.connect(*server.address, app_registry()) as slow,
        await AsyncClient.connect(*server.address) as fast,
    ):
        gated = asyncio.ensure_future(slow.request(pb.GateRequest(tag=1)))
        await asyncio.sleep(0.05)
        assert (await fast.call(EchoRequest(data=b"x"), EchoReply)).data == b"x"
        assert not gated.done()
        app.gate.set()  # type: ignore[attr-defined]
        assert (await gated).tag == 1  # type: ignore[attr-defined]


async def test_unordered_handler_lets_later_frames_overtake(start_server: StartServer) -> None:
    server = await start_server(make_app())
    peer = await RawPeer.connect(server.address)
    peer.send_frame(1005, 0, 1, pb.UnorderedSleepRequest(ms=300, tag=1).SerializeToString())
    peer.send_frame(10, 0, 2, EchoRequest(data=b"quick").SerializeToString())
    frames = await peer.read_frames(2)
    assert [f.seq for f in frames] == [2, 1]
    await peer.close()


async def test_unknown_message_and_decode_error_keep_connection(start_server: StartServer) -> None:
    server = await start_server(make_app())
    async with await AsyncClient.connect(*server.address) as client:
        registry = client.registry
        # An id the server does not know: send through a registry that claims it.
        registry._add_trusted(pb.NoteRequest, 4242)
        with pytest.raises(UnknownMessage) as unknown:
            await client.request(pb.NoteRequest(text="?"))
        assert unknown.value.code == ErrorCode.UNKNOWN_MESSAGE
        assert unknown.value.request_msg_id == 4242
        # The payload is not a valid EchoRequest (truncated length-delimited field).
        peer = await RawPeer.connect(server.address)
        peer.send_frame(10, 0, 9, b"\x0a\x05ab")
        [frame] = await peer.read_frames(1)
        assert frame.flags == Flags.ERROR | Flags.RESPONSE and frame.seq == 9
        err = Error.FromString(frame.payload)
        assert err.code == ErrorCode.DECODE_ERROR and err.request_msg_id == 10
        peer.send_frame(10, 0, 10, EchoRequest(data=b"still open").SerializeToString())
        [after] = await peer.read_frames(1)
        assert EchoReply.FromString(after.payload).data == b"still open"
        await peer.close()
        assert (await client.call(EchoRequest(data=b"ok"), EchoReply)).data == b"ok"


async def test_bad_flags_answered_and_connection_stays(start_server: StartServer) -> None:
    server = await start_server()
    peer = await RawPeer.connect(server.address)
    payload = EchoRequest(data=b"a").SerializeToString()
    for seq, flags in ((1, 0x10), (2, 0x80), (3, int(Flags.COMPRESSED)), (4, 0)):
        peer.send_frame(10, flags, seq, payload)
    frames = await peer.read_frames(4)
    for frame in frames[:3]:
        assert frame.msg_id == 3 and frame.flags == Flags.ERROR | Flags.RESPONSE
        assert Error.FromString(frame.payload).code == ErrorCode.BAD_FLAGS
    assert [f.seq for f in frames] == [1, 2, 3, 4]
    assert frames[3].msg_id == 11
    await peer.close()


@pytest.mark.parametrize(
    ("length", "code"),
    [(3, ErrorCode.BAD_FRAME), (6, ErrorCode.BAD_FRAME), (2**31, ErrorCode.FRAME_TOO_LARGE)],
)
async def test_bad_length_answers_earlier_frames_then_closes(
    start_server: StartServer, length: int, code: ErrorCode
) -> None:
    server = await start_server()
    peer = await RawPeer.connect(server.address)
    good = EchoRequest(data=b"before").SerializeToString()
    from protocol.frame import encode_frame

    peer.send(encode_frame(10, 0, 1, good) + length.to_bytes(4, "big") + b"\x00" * 7)
    frames = await peer.read_until_closed()
    assert [f.msg_id for f in frames] == [11, 3]
    assert EchoReply.FromString(frames[0].payload).data == b"before"
    err = frames[1]
    assert err.seq == 0 and err.flags == Flags.ERROR
    assert Error.FromString(err.payload).code == code
    await peer.close()  # the server lingers (docs/protocol.md) until the peer closes too
    await wait_for(lambda: server.stats.close_reasons.get(code.name.lower(), 0) == 1)


async def test_max_frame_is_configurable(start_server: StartServer) -> None:
    server = await start_server(max_frame=64)
    async with await AsyncClient.connect(*server.address) as client:
        assert (await client.call(EchoRequest(data=b"a" * 40), EchoReply)).data == b"a" * 40
        with pytest.raises(Exception) as exc_info:
            await client.request(EchoRequest(data=b"a" * 100))
        closed = exc_info.value
        assert getattr(closed, "code", None) == ErrorCode.FRAME_TOO_LARGE


async def test_raising_handler_gets_internal_and_server_goes_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(make_app())
    caplog.set_level(logging.ERROR, logger="tickwire.handler")
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        with pytest.raises(InternalError) as exc_info:
            await client.request(pb.FailRequest())
        assert "hunter2" not in str(exc_info.value)
        assert exc_info.value.message == "internal error"
        assert (await client.call(EchoRequest(data=b"after"), EchoReply)).data == b"after"
    assert "hunter2" in caplog.text and "Traceback" in caplog.text
    assert server.route_stats()["testapp.FailRequest"] == {"calls": 1, "errors": 1}


async def test_handler_error_carries_application_code(start_server: StartServer) -> None:
    server = await start_server(make_app())
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        with pytest.raises(ServerError) as exc_info:
            await client.request(pb.AppErrorRequest(code=4321))
        assert exc_info.value.code == 4321
        assert "application said no" in exc_info.value.message


async def test_blocking_handler_runs_in_thread_pool(start_server: StartServer) -> None:
    server = await start_server(make_app(), blocking_threads=4)
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await asyncio.gather(
            *(client.call(pb.BlockingRequest(ms=200), pb.BlockingReply) for _ in range(4)),
            client.call(EchoRequest(data=b"e"), EchoReply),
        )
        elapsed = loop.time() - started
    names = {r.thread_name for r in replies[:4]}  # type: ignore[union-attr]
    assert all(n.startswith("tickwire-blocking") for n in names)
    assert threading.current_thread().name not in names
    # Ordered on one connection: they ran one after another, not on the event loop.
    assert elapsed >= 0.8


async def test_handler_deadline_gives_timeout(start_server: StartServer) -> None:
    server = await start_server(make_app(), handler_timeout=0.1)
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        with pytest.raises(HandlerTimeout):
            await client.request(pb.SleepRequest(ms=2000, tag=1))
        assert (await client.call(pb.SleepRequest(ms=1, tag=2), pb.SleepReply)).tag == 2


async def test_notifications_get_no_reply_but_failures_are_reported(
    start_server: StartServer,
) -> None:
    app = make_app()
    server = await start_server(app)
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        client.notify(pb.NoteRequest(text="one-way"))
        client.notify(pb.FailRequest(notify_only=True))
        reply = await client.call(EchoRequest(data=b"sync"), EchoReply)
        assert reply.data == b"sync"
        assert app.notes == ["one-way"]  # type: ignore[attr-defined]
        [error] = client.errors
        assert isinstance(error, InternalError) and error.request_msg_id == 1002


async def test_many_requests_in_flight_on_one_connection(start_server: StartServer) -> None:
    server = await start_server()
    async with await AsyncClient.connect(*server.address) as client:
        payloads = [str(i).encode() for i in range(5000)]
        replies = await asyncio.gather(*(client.request(EchoRequest(data=p)) for p in payloads))
        assert [r.data for r in replies] == payloads  # type: ignore[attr-defined]


def test_blocking_client_wrapper() -> None:
    import uvloop

    from server import Server, ServerConfig

    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        server = Server(config=ServerConfig(port=0))
        await server.start()
        holder["address"] = server.address
        holder["stop"] = asyncio.Event()
        ready.set()
        await holder["stop"].wait()  # type: ignore[attr-defined]
        await server.stop()

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    host, port = holder["address"]  # type: ignore[misc]
    with Client(host, port) as client:
        assert client.call(EchoRequest(data=b"sync"), EchoReply).data == b"sync"
        assert client.ping() > 0
        assert client.describe().table()[11] == "system.EchoReply"
    loop.call_soon_threadsafe(holder["stop"].set)  # type: ignore[attr-defined]
    thread.join(5)


async def test_reply_of_unknown_type_raises_unexpected_reply(start_server: StartServer) -> None:
    from client_sdk import UnexpectedReply
    from protocol.registry import MessageRegistry

    server = await start_server()
    partial = MessageRegistry()
    partial.register(EchoRequest)  # knows the request, not its reply
    async with await AsyncClient.connect(*server.address, partial) as client:
        with pytest.raises(UnexpectedReply, match="message id 11"):
            await client.request(EchoRequest(data=b"x"))
        remote = await client.describe(adopt=True)  # works with the partial registry too
        reply = await client.request(remote.new("system.EchoRequest", data=b"y"))
        assert reply.data == b"y"  # type: ignore[attr-defined]


async def test_hello_welcome_carries_the_servers_limits(start_server: StartServer) -> None:
    from protocol.errors import LocalProtocolError

    server = await start_server(max_frame=4096, idle_timeout=60, session_ttl=45)
    async with await AsyncClient.connect(*server.address) as client:
        welcome = await client.hello("test-suite")
        assert welcome.protocol_version == 1 and welcome.server_name == "tickwire"
        assert welcome.max_frame == 4096
        assert welcome.idle_timeout_ms == 60_000 and welcome.heartbeat_interval_ms == 20_000
        assert welcome.session_ttl_s == 45 and not welcome.compression_offered
        # Knowing the limit, the SDK refuses an oversized request before sending it, so
        # the connection survives instead of being closed with FRAME_TOO_LARGE.
        with pytest.raises(LocalProtocolError, match="max_frame"):
            await client.request(EchoRequest(data=b"x" * 5000))
        assert (await client.call(EchoRequest(data=b"ok"), EchoReply)).data == b"ok"


def bad_returns() -> App:
    """Handlers that return something that is not a message: a sync one a dict, an async
    one a str."""
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
    frames = FrameDecoder().feed(data)
    assert [f.seq for f in frames] == [1, 2, 3]
    await wait_for(lambda: not server.connections)
    assert server.stats.close_reasons.get("peer_closed") == 1
