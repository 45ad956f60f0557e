"""Edge cases against a real server: slow and idle peers, per-address limits, flags a
client may not send, timeouts, handler chains, contexts, and the queued work of a
connection that is gone."""

from __future__ import annotations

import asyncio
import socket
from types import ModuleType

import pytest

from client_sdk import AsyncClient, InternalError
from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from server import App, Context, HandlerError, Server, ServerConfig
from server.errors import DeadlineExceeded
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb


async def test_client_that_reads_nothing_is_cut_off_as_slow_consumer(
    start_server: StartServer,
) -> None:
    """Small replies never pass slow_consumer_bytes, but a peer that stopped reading must
    not hold its connection, its queued frames and a stop forever."""
    server = await start_server(
        slow_consumer_timeout=0.3, close_grace=0.3, sweep_interval=0.05, mailbox_limit=16
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address)
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    payload = EchoRequest(data=b"z" * 1000).SerializeToString()
    writer.write(b"".join(encode_frame(10, 0, s, payload) for s in range(1, 20_001)))
    await wait_for(lambda: server.stats.writes_paused > 0, timeout=10)
    await wait_for(lambda: server.stats.close_reasons.get("slow_consumer", 0) == 1, timeout=10)
    assert not server.connections
    assert server.dispatcher.pending == 0
    writer.transport.abort()


async def test_idle_timeout_never_fires_early(start_server: StartServer) -> None:
    server = await start_server(idle_timeout=0.5, sweep_interval=0.2)
    client = await AsyncClient.connect(*server.address)
    loop = asyncio.get_running_loop()
    await client.ping()
    last_sent = loop.time()
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert closed.code == ErrorCode.IDLE_TIMEOUT
    assert loop.time() - last_sent >= 0.5


async def test_per_address_connection_limit(start_server: StartServer) -> None:
    server = await start_server(max_connections_per_ip=2, trust_loopback=False)
    a = await AsyncClient.connect(*server.address)
    b = await AsyncClient.connect(*server.address)
    peer = await RawPeer.connect(server.address)
    [frame] = await peer.read_until_closed()
    err = Error.FromString(frame.payload)
    assert err.code == ErrorCode.TOO_MANY_CONNECTIONS and "127.0.0.1" in err.message
    await a.close()
    await wait_for(lambda: server.per_ip.get("127.0.0.1") == 1)
    async with await AsyncClient.connect(*server.address) as c:
        assert (await c.call(EchoRequest(data=b"c"), EchoReply)).data == b"c"
    await b.close()


async def test_loopback_peers_are_not_counted_per_address(start_server: StartServer) -> None:
    server = await start_server(max_connections_per_ip=1)
    clients = [await AsyncClient.connect(*server.address) for _ in range(3)]
    try:
        for client in clients:
            assert (await client.call(EchoRequest(data=b"x"), EchoReply)).data == b"x"
        assert server.per_ip == {}
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("flag", [Flags.RESPONSE, Flags.ERROR, Flags.PUSH])
async def test_server_only_flags_from_a_client_get_bad_flags(
    start_server: StartServer, flag: Flags
) -> None:
    server = await start_server()
    peer = await RawPeer.connect(server.address)
    peer.send_frame(10, int(flag), 5, EchoRequest(data=b"x").SerializeToString())
    [frame] = await peer.read_frames(1)
    assert frame.seq == 5 and Error.FromString(frame.payload).code == ErrorCode.BAD_FLAGS
    await peer.close()


async def test_handlers_own_timeout_error_is_internal_not_timeout(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app(), handler_timeout=5)
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        with pytest.raises(InternalError):
            await client.request(pb.OwnTimeoutRequest())


async def test_chain_without_error_recovery_still_answers(start_server: StartServer) -> None:
    """Even with the default layers removed, a raising handler cannot wedge its connection."""
    server = Server(make_app(), config=ServerConfig(port=0), middleware=[])
    await server.start()
    try:
        async with await AsyncClient.connect(*server.address, app_registry()) as client:
            with pytest.raises(InternalError):
                await client.request(pb.FailRequest())
            with pytest.raises(InternalError):
                await client.request(pb.OwnTimeoutRequest())
            assert (await client.call(EchoRequest(data=b"on"), EchoReply)).data == b"on"
    finally:
        await server.stop(timeout=1)


async def test_one_app_serves_two_servers_with_separate_state() -> None:
    app = make_app()
    first = Server(app, config=ServerConfig(port=0))
    second = Server(app, config=ServerConfig(port=0, handler_timeout=0.05))
    await first.start()
    await second.start()
    try:
        async with (
            await AsyncClient.connect(*first.address, app_registry()) as c1,
            await AsyncClient.connect(*second.address, app_registry()) as c2,
        ):
            assert (await c1.call(pb.SleepRequest(ms=100, tag=1), pb.SleepReply)).tag == 1
            with pytest.raises(Exception) as exc_info:
                await c2.request(pb.SleepRequest(ms=100, tag=2))
            assert getattr(exc_info.value, "code", None) == ErrorCode.TIMEOUT
        assert first.route_stats()["testapp.SleepRequest"] == {"calls": 1, "errors": 0}
        assert second.route_stats()["testapp.SleepRequest"] == {"calls": 1, "errors": 1}
    finally:
        await first.stop(timeout=1)
        await second.stop(timeout=1)


def test_handler_error_accepts_only_codes_a_handler_may_send() -> None:
    assert HandlerError(ErrorCode.RATE_LIMITED).code == 7
    assert HandlerError(7).code == 7
    assert HandlerError(100, "x").code == 100
    for bad in (ErrorCode.SERVER_SHUTDOWN, ErrorCode.BAD_FRAME, 0, 50, 70_000):
        with pytest.raises(ValueError):
            HandlerError(bad)
    assert DeadlineExceeded("a.B", 1.5).code == ErrorCode.TIMEOUT


async def test_unknown_push_is_skipped_and_later_frames_still_arrive() -> None:
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    client = await AsyncClient.connect(*listener.sockets[0].getsockname()[:2])
    writer = await accepted.get()
    got: list[int] = []
    client.on_push(EchoReply, lambda push: got.append(push.seq))
    reply = EchoReply(data=b"k").SerializeToString()
    writer.write(
        encode_frame(11, Flags.PUSH, 1, reply)
        + encode_frame(4999, Flags.PUSH, 2, b"??")
        + encode_frame(11, Flags.PUSH, 3, reply)
    )
    await wait_for(lambda: got == [1, 3])
    assert client.unknown_pushes == 1 and not client.closed
    await client.close()
    listener.close()


def test_app_rejects_messages_without_an_id() -> None:
    from protocol.proto.system_pb2 import MessageId

    with pytest.raises(ValueError, match="declares no"):
        App().add_handler(MessageId, lambda ctx, msg: None)


@pytest.mark.usefixtures("fastpath_impl")
async def test_a_kept_context_is_never_reused(start_server: StartServer) -> None:
    """Sync handlers share one Context per connection for speed, but only while nobody
    keeps it: a handler that stores its ctx must find it unchanged later."""
    app = App("keeper", public=True)
    kept: list[tuple[object, int]] = []

    @app.handler(pb.NoteRequest)
    def note(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.text == "keep":
            kept.append((ctx, ctx.seq))
        return pb.SleepReply(tag=ctx.seq)

    server = await start_server(app)
    peer = await RawPeer.connect(server.address)
    texts = ["a", "keep", "b", "c", "keep", "d"]
    for seq, text in enumerate(texts, start=1):
        peer.send_frame(1007, 0, seq, pb.NoteRequest(text=text).SerializeToString())
    frames = await peer.read_frames(len(texts))
    assert [pb.SleepReply.FromString(f.payload).tag for f in frames] == [1, 2, 3, 4, 5, 6]
    assert [(ctx.seq, seq) for ctx, seq in kept] == [(2, 2), (5, 5)]  # type: ignore[attr-defined]
    assert kept[0][0] is not kept[1][0]
    await peer.close()


async def test_unkept_context_is_reused_across_sync_requests(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, fastpath_impl: ModuleType
) -> None:
    import server.dispatch
    from server.app import Context

    made: list[int] = []

    class CountingContext(Context):
        __slots__ = ()

        def __init__(self, *args: object) -> None:
            made.append(1)
            super().__init__(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(server.dispatch, "Context", CountingContext)
    monkeypatch.setattr(fastpath_impl, "Context", CountingContext)
    srv = await start_server()
    async with await AsyncClient.connect(*srv.address) as client:
        await asyncio.gather(*(client.request(EchoRequest(data=b"n")) for _ in range(200)))
    assert len(made) == 1


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
