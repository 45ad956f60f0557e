"""The dispatcher's fast paths against a real server: each must keep every behaviour of
the slow path it skips.

- A read that finds its connection idle runs in data_received, without the mailbox and
  the drain (Dispatcher.submit); anything it cannot finish goes to the mailbox in order.
- Before that, fastpath.run_read runs what it can of such a read straight from the
  bytes, and hands the decoder the rest from the first frame it does not handle. Every
  test here runs on both builds of it, interpreted and compiled (conftest.fastpath_impl).
- A sync route whose chain is only the default layers is called directly, with the
  counting and error recovery done inline (Route.fused).

Each test checks server state (pending, in_flight, what a handler has run) rather than
timing, so it fails if a fast path runs a frame early, drops one or loses count.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from server import App, Context, Server, ServerConfig
from server.app import Route
from server.connection import Connection
from server.errors import HandlerError
from server.middleware import Call
from tests.bench.test_dispatch_bench import RecordingTransport
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import make_app
from tests.proto import legacy_pb2
from tests.proto import testapp_pb2 as pb

pytestmark = pytest.mark.usefixtures("fastpath_impl")

ECHO, FAIL, APP_ERROR, NOTE, BIG, GATE = 10, 1002, 1006, 1007, 1008, 1010


def echo(seq: int, data: bytes = b"e") -> bytes:
    return encode_frame(ECHO, 0, seq, EchoRequest(data=data).SerializeToString())


def gate(seq: int) -> bytes:
    return encode_frame(GATE, 0, seq, pb.GateRequest(tag=seq).SerializeToString())


def note(seq: int, text: str) -> bytes:
    return encode_frame(NOTE, 0, seq, pb.NoteRequest(text=text).SerializeToString())


async def test_sync_frames_behind_an_awaited_frame_wait_for_it(start_server: StartServer) -> None:
    """One read of sync, awaited, sync frames: the first runs at once, the ones after the
    awaited frame are queued (counted in pending) and run only after it, in order; so is
    a later read that arrives while the awaited frame is still running."""
    app = make_app()
    server = await start_server(app)
    dispatcher = server.dispatcher
    peer = await RawPeer.connect(server.address)
    peer.send(echo(1) + gate(2) + echo(3) + note(4, "after the gate"))
    [first] = await peer.read_frames(1)
    assert first.seq == 1
    await wait_for(lambda: dispatcher.busy == 1)
    assert app.notes == []  # type: ignore[attr-defined]
    assert dispatcher.pending == 2 and dispatcher.in_flight == 3
    peer.send(note(5, "second read"))
    await wait_for(lambda: dispatcher.pending == 3)
    assert app.notes == []  # type: ignore[attr-defined]
    app.gate.set()  # type: ignore[attr-defined]
    frames = await peer.read_frames(4)
    assert [f.seq for f in frames] == [2, 3, 4, 5]
    assert all(f.flags == Flags.RESPONSE for f in frames)
    assert app.notes == ["after the gate", "second read"]  # type: ignore[attr-defined]
    await wait_for(lambda: dispatcher.in_flight == 0)
    # Idle again: the next read takes the fast path and is answered.
    peer.send(echo(6, b"again"))
    [last] = await peer.read_frames(1)
    assert last.seq == 6 and EchoReply.FromString(last.payload).data == b"again"
    assert dispatcher.pending == 0
    await peer.close()


async def test_a_read_after_an_awaited_frame_waits_for_it(start_server: StartServer) -> None:
    """The awaited frame was the last of its read, so nothing is queued: the connection is
    still busy, and the next read must wait behind it rather than run at once."""
    app = make_app()
    server = await start_server(app)
    dispatcher = server.dispatcher
    peer = await RawPeer.connect(server.address)
    peer.send(gate(1))
    await wait_for(lambda: dispatcher.busy == 1)
    assert dispatcher.pending == 0
    peer.send(note(2, "behind the gate") + echo(3))
    await wait_for(lambda: dispatcher.pending == 2)
    assert app.notes == []  # type: ignore[attr-defined]
    app.gate.set()  # type: ignore[attr-defined]
    frames = await peer.read_frames(3)
    assert [f.seq for f in frames] == [1, 2, 3]
    assert app.notes == ["behind the gate"]  # type: ignore[attr-defined]
    await wait_for(lambda: dispatcher.in_flight == 0)
    await peer.close()


async def test_a_read_of_every_kind_of_frame_is_answered_in_order(
    start_server: StartServer,
) -> None:
    """The byte-level fast path (fastpath.run_read) stops at each frame it does not
    handle and the decoder goes on from there: refused, undecodable, awaited and split
    frames, between plain ones, all answered in order, once each."""
    app = make_app()
    server = await start_server(app)
    peer = await RawPeer.connect(server.address)
    # Frame 9 is split right where its payload's bytes field starts, and those bytes are
    # themselves a whole frame: read on its own, the second read looks like frame 99.
    inner = echo(99)
    split = echo(9, inner)
    cut = len(split) - len(inner)
    peer.send(
        echo(1)
        + encode_frame(4321, 0, 2, b"")  # no handler: UNKNOWN_MESSAGE
        + echo(3)
        + encode_frame(ECHO, 0, 4, b"\xff\xff")  # not an EchoRequest: DECODE_ERROR
        + note(5, "n")
        + encode_frame(ECHO, 0x10, 6, b"")  # reserved flag: BAD_FLAGS
        + encode_frame(1000, 0, 7, pb.SleepRequest(ms=1, tag=7).SerializeToString())
        + echo(8)
        + split[:cut]
    )
    frames = await peer.read_frames(8)
    peer.send(split[cut:] + echo(10))
    frames += await peer.read_frames(2)
    assert [f.seq for f in frames] == list(range(1, 11))
    codes = [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]
    assert codes == [
        0,
        ErrorCode.UNKNOWN_MESSAGE,
        0,
        ErrorCode.DECODE_ERROR,
        0,
        ErrorCode.BAD_FLAGS,
        0,
        0,
        0,
        0,
    ]
    assert EchoReply.FromString(frames[8].payload).data == inner
    assert app.notes == ["n"]  # type: ignore[attr-defined]
    assert server.routes[ECHO].calls == 5
    assert server.stats.frames_in == 10
    await wait_for(lambda: server.dispatcher.in_flight == 0)
    await peer.close()


async def test_frames_before_a_bad_length_are_answered_then_the_error(
    start_server: StartServer,
) -> None:
    server = await start_server()
    peer = await RawPeer.connect(server.address)
    peer.send(echo(1) + echo(2) + b"\x00\x00\x00\x03" + b"\x00" * 20)
    frames = await peer.read_until_closed()
    assert [(f.seq, f.flags) for f in frames[:2]] == [(1, Flags.RESPONSE), (2, Flags.RESPONSE)]
    assert frames[2].flags == Flags.ERROR
    assert Error.FromString(frames[2].payload).code == ErrorCode.BAD_FRAME
    assert len(frames) == 3
    await peer.close()


async def test_an_idle_connection_still_meets_max_pending(start_server: StartServer) -> None:
    """The server-wide queue limit holds for a connection with nothing queued of its own:
    frames past it are answered OVERLOADED in their place, not run at once."""
    app = make_app()
    server = await start_server(app, max_pending=8)
    dispatcher = server.dispatcher
    holder = await RawPeer.connect(server.address)
    holder.send(gate(1) + b"".join(echo(seq) for seq in range(2, 8)))
    await wait_for(lambda: dispatcher.pending == 6)
    other = await RawPeer.connect(server.address)
    other.send(b"".join(echo(seq) for seq in range(1, 5)))
    frames = await other.read_frames(4)
    assert [f.seq for f in frames] == [1, 2, 3, 4]
    codes = [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]
    assert codes == [0, 0, ErrorCode.OVERLOADED, ErrorCode.OVERLOADED]
    assert server.stats.overloaded == 2
    app.gate.set()  # type: ignore[attr-defined]
    held = await holder.read_frames(7)
    assert [f.seq for f in held] == list(range(1, 8))
    await wait_for(lambda: dispatcher.in_flight == 0)
    await holder.close()
    await other.close()


async def test_writes_paused_in_the_middle_of_a_read_keep_the_rest_in_order(
    start_server: StartServer,
) -> None:
    """A peer that does not read: the transport pauses writing during a read's run, the
    frames not yet run are queued, and every reply still arrives, in order, once it reads."""
    server = await start_server()
    app = make_app()
    server.swap_apps(app)
    dispatcher = server.dispatcher
    peer = await RawPeer.connect(server.address)
    count = 64
    big = pb.BigRequest(size=256 * 1024).SerializeToString()
    for seq in range(1, count + 1):
        peer.send(encode_frame(BIG, 0, seq, big))
        await peer.writer.drain()
    await wait_for(lambda: server.stats.writes_paused > 0)
    conn = next(iter(server.connections))
    await wait_for(lambda: bool(conn.mailbox))
    assert dispatcher.pending == len(conn.mailbox or ())
    frames = await peer.read_frames(count, timeout=30)
    assert [f.seq for f in frames] == list(range(1, count + 1))
    assert all(f.msg_id == 1009 and len(f.payload) > 256 * 1024 for f in frames)
    await wait_for(lambda: dispatcher.in_flight == 0)
    assert not conn.closing
    await peer.close()


class Wrapping:
    """A layer that wraps every route without changing what it does."""

    def wrap(self, route: Route, call_next: Call) -> Call:
        def through(ctx: Any, msg: Any) -> Any:
            return call_next(ctx, msg)

        return through


class PassThrough:
    """A layer that leaves every route alone, the way an auth layer treats a public one."""

    def wrap(self, route: Route, call_next: Call) -> Call:
        return call_next


def test_only_chains_of_the_default_layers_are_fused() -> None:
    def fused(app: App, **config: Any) -> dict[str, bool]:
        server = Server(app, config=ServerConfig(port=0, **config))
        server._build_chains(server._app_routes)
        return {route.name: route.fused for route in server.routes.values()}

    plain = fused(make_app())
    assert plain["system.EchoRequest"] and plain["testapp.FailRequest"]
    assert not plain["testapp.GateRequest"] and not plain["testapp.BlockingRequest"]
    passing = make_app()
    passing.add_middleware(PassThrough())
    assert fused(passing, handler_timeout=5)["testapp.FailRequest"]
    wrapped = make_app()
    wrapped.add_middleware(Wrapping())
    flags = fused(wrapped)
    assert not flags["testapp.FailRequest"] and flags["system.EchoRequest"]
    assert not any(fused(make_app(), metrics=True, metrics_port=0).values())
    bare = Server(make_app(), config=ServerConfig(port=0), middleware=[])
    bare._build_chains(bare._app_routes)
    assert not any(route.fused for route in bare.routes.values())


@pytest.mark.parametrize("layer", [None, Wrapping()], ids=["fused", "composed"])
async def test_fused_and_composed_chains_answer_alike(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, layer: Wrapping | None
) -> None:
    """Error replies, counters and the log line are the same whether ErrorRecovery and
    Counters run as layers or inline."""
    app = make_app()
    if layer is not None:
        app.add_middleware(layer)
    server = await start_server(app)
    fail_route = server.routes[FAIL]
    assert fail_route.fused is (layer is None)
    peer = await RawPeer.connect(server.address)
    app_error = pb.AppErrorRequest(code=ErrorCode.RATE_LIMITED).SerializeToString()
    with caplog.at_level(logging.ERROR, logger="tickwire.handler"):
        peer.send(
            encode_frame(FAIL, 0, 1, pb.FailRequest().SerializeToString())
            + encode_frame(APP_ERROR, 0, 2, app_error)
            + note(3, "ok")
            + encode_frame(FAIL, 0, 0, pb.FailRequest().SerializeToString())
        )
        frames = await peer.read_frames(3)
    errors = [Error.FromString(f.payload) for f in frames[:2]]
    assert [f.flags for f in frames] == [Flags.ERROR | Flags.RESPONSE] * 2 + [Flags.RESPONSE]
    assert [(e.code, e.message, e.request_msg_id) for e in errors] == [
        (ErrorCode.INTERNAL, "internal error", FAIL),
        (ErrorCode.RATE_LIMITED, f"application said no ({ErrorCode.RATE_LIMITED})", APP_ERROR),
    ]
    assert "hunter2" not in errors[0].message
    # The notification (seq 0) that failed: an unsolicited Error frame, ERROR alone.
    [unsolicited] = await peer.read_frames(1)
    assert unsolicited.flags == Flags.ERROR and unsolicited.seq == 0
    assert fail_route.calls == 2 and fail_route.errors == 2
    assert server.routes[APP_ERROR].calls == 1 and server.routes[APP_ERROR].errors == 1
    assert server.routes[NOTE].calls == 1 and server.routes[NOTE].errors == 0
    logged = [r for r in caplog.records if r.name == "tickwire.handler"]
    assert [r.getMessage() for r in logged] == ["handler for testapp.FailRequest raised"] * 2
    assert all(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in logged)
    await peer.close()


async def test_replies_waiting_for_the_end_of_the_iteration_survive_a_half_close(
    start_server: StartServer,
) -> None:
    """run_read's replies are written at the end of the loop iteration. A half-close read
    in the same iteration (eof_received returning None closes the transport) must hand
    them to the transport first. Driven directly, so both calls surely share an iteration."""
    server = await start_server()
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(echo(1) + echo(2))
    assert transport.written == []  # waiting for the end of the iteration
    assert conn.eof_received() is None  # nothing owed any more: close
    replies = FrameDecoder().feed(b"".join(transport.written))
    assert [f.seq for f in replies] == [1, 2]
    await asyncio.sleep(0)  # the end-of-iteration flush finds nothing left to write
    assert len(transport.written) == 1
    server.connections.discard(conn)


async def test_a_read_that_switches_message_types_keeps_context_and_counts(
    start_server: StartServer,
) -> None:
    """run_read keeps a route's callables, its calls and the Context's msg_id in locals
    while the message type stays the same. A read that switches types back and forth
    must still give each handler its own msg_id, flags 0 and the frame's seq (including
    header bytes of 0x80 and above, which the compiled loop reads itself), and count
    every call on the right route."""
    app = App("switch", public=True)
    seen: list[tuple[str, int, int, int]] = []

    @app.handler(pb.NoteRequest)
    def note_handler(ctx, msg):  # type: ignore[no-untyped-def]
        seen.append(("note", ctx.msg_id, ctx.flags, ctx.seq))
        return EchoReply(data=msg.text.encode())

    @app.handler(pb.SleepRequest)
    def sleep_handler(ctx, msg):  # type: ignore[no-untyped-def]
        seen.append(("sleep", ctx.msg_id, ctx.flags, ctx.seq))
        return pb.SleepReply(tag=msg.tag)

    server = await start_server(app)
    sleep_id = 1000
    assert server.routes[NOTE].fused and server.routes[sleep_id].fused
    seqs = [0x80000001, 0xFFFFFFFF, 0x7F, 0x80, 0xFF00FF00, 0x00FF00FF]
    kinds = ["note", "note", "sleep", "note", "sleep", "sleep"]
    read = b""
    for seq, kind in zip(seqs, kinds, strict=True):
        if kind == "note":
            read += note(seq, f"n{seq}")
        else:
            read += encode_frame(
                sleep_id, 0, seq, pb.SleepRequest(ms=0, tag=seq & 0xFFFF).SerializeToString()
            )
    peer = await RawPeer.connect(server.address)
    peer.send(read)
    frames = await peer.read_frames(len(seqs))
    assert [f.seq for f in frames] == seqs
    assert [f.flags for f in frames] == [Flags.RESPONSE] * len(seqs)
    assert seen == [
        (kind, NOTE if kind == "note" else sleep_id, 0, seq)
        for seq, kind in zip(seqs, kinds, strict=True)
    ]
    assert EchoReply.FromString(frames[0].payload).data == f"n{seqs[0]}".encode()
    assert pb.SleepReply.FromString(frames[5].payload).tag == seqs[5] & 0xFFFF
    assert server.routes[NOTE].calls == 3
    assert server.routes[sleep_id].calls == 3
    assert server.stats.frames_in == len(seqs)
    await peer.close()


async def test_the_server_runs_the_build_under_test(
    start_server: StartServer, fastpath_impl: ModuleType
) -> None:
    server = await start_server()
    assert server.dispatcher.run_read is fastpath_impl.run_read
    assert fastpath_impl.COMPILED is (server.dispatcher.build == "compiled")


async def test_a_reply_that_cannot_be_encoded_is_internal_on_every_path(
    start_server: StartServer,
) -> None:
    """A proto2 reply missing a required field makes SerializeToString raise. Once the
    route has learned its reply type, later replies are framed inline (run_read and
    run_connection alike): one that cannot be encoded must still be answered INTERNAL,
    in its place, and the connection must go on, on the fast path and off it."""
    app = App("legacy", public=True)

    @app.handler(legacy_pb2.LegacyRequest)
    def answer(ctx, msg):  # type: ignore[no-untyped-def]
        return legacy_pb2.LegacyReply(code=7) if msg.fill else legacy_pb2.LegacyReply()

    server = await start_server(app)
    peer = await RawPeer.connect(server.address)

    def legacy(seq: int, fill: bool) -> bytes:
        payload = legacy_pb2.LegacyRequest(fill=fill).SerializeToString()
        return encode_frame(1020, 0, seq, payload)

    # The first read teaches the route its reply type; the second runs on run_read; the
    # third starts with a flagged frame, so the rest of it runs on run_connection.
    peer.send(legacy(1, True))
    peer.send(legacy(2, False) + legacy(3, True))
    frames = await peer.read_frames(3)
    peer.send(encode_frame(ECHO, 0x10, 4, b"") + legacy(5, False) + legacy(6, True))
    frames += await peer.read_frames(3)
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6]
    codes = [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]
    assert codes == [0, ErrorCode.INTERNAL, 0, ErrorCode.BAD_FLAGS, ErrorCode.INTERNAL, 0]
    assert legacy_pb2.LegacyReply.FromString(frames[5].payload).code == 7
    assert server.routes[1020].errors == 2
    await peer.close()


@pytest.mark.parametrize("layer", [None, Wrapping()], ids=["fused", "composed"])
async def test_a_sync_handler_raising_cancelled_error_is_internal(
    start_server: StartServer, layer: Wrapping | None
) -> None:
    """CancelledError is a BaseException, so `except Exception` let it through: out of
    data_received (the connection was closed) or out of run_connection (its frames
    stayed counted in pending, so a drain at stop waited for them in vain). Sync code
    cannot be cancelled by anyone, so from a sync handler it is the handler's failure:
    INTERNAL, in its place, and the connection goes on."""
    app = App("cancels", public=True)
    if layer is not None:
        app.add_middleware(layer)

    @app.handler(pb.NoteRequest)
    def cancelled(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.text == "cancel":
            raise asyncio.CancelledError()
        return EchoReply(data=msg.text.encode())

    server = await start_server(app)
    peer = await RawPeer.connect(server.address)
    # Fast path (an idle read), then the general path (behind a flagged frame).
    peer.send(note(1, "ok") + note(2, "cancel") + note(3, "ok"))
    frames = await peer.read_frames(3)
    peer.send(encode_frame(ECHO, 0x10, 4, b"") + note(5, "cancel") + note(6, "after"))
    frames += await peer.read_frames(3)
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6]
    codes = [Error.FromString(f.payload).code if f.msg_id == 3 else 0 for f in frames]
    assert codes == [0, ErrorCode.INTERNAL, 0, ErrorCode.BAD_FLAGS, ErrorCode.INTERNAL, 0]
    assert EchoReply.FromString(frames[5].payload).data == b"after"
    assert server.dispatcher.pending == 0 and server.dispatcher.in_flight == 0
    assert server.routes[NOTE].errors == 2
    await peer.close()


async def test_run_read_and_run_connection_answer_a_read_byte_for_byte_alike(
    start_server: StartServer,
) -> None:
    """The per-frame body exists in run_read (frames from the bytes) and run_connection
    (frames from the decoder); this keeps them alike. The same frames go through each:
    once on an idle connection (run_read), once behind a flagged frame (run_connection
    takes the whole read). Replies must be the same bytes, the calls and errors counted
    the same, and a Context shared exactly until a handler keeps one."""
    app = App("alike", public=True)
    contexts: list[int] = []  # ids: holding the Contexts would keep every one
    kept: list[Context] = []

    @app.handler(pb.NoteRequest)
    def note_handler(ctx: Context, msg: pb.NoteRequest) -> Any:
        contexts.append(id(ctx))
        if msg.text == "keep":
            kept.append(ctx)
        if msg.text == "fail":  # a HandlerError: no log record to hold the frame
            raise HandlerError(ErrorCode.RATE_LIMITED, "no")
        if msg.text == "silent":
            return None
        return EchoReply(data=msg.text.encode())

    server = await start_server(app)
    route = server.routes[NOTE]
    texts = ["a", "b", "keep", "c", "fail", "silent", "d"]
    read = b"".join(note(seq, text) for seq, text in enumerate(texts, 1))
    peer = await RawPeer.connect(server.address)
    peer.send(note(100, "learn"))  # the route learns its reply type first
    await peer.read_frames(1)

    def shape(ids: list[int]) -> list[int]:
        """Which frames shared a Context: the index of its first use, per frame."""
        return [ids.index(each) for each in ids]

    runs = []
    for prefix in (b"", encode_frame(ECHO, 0x10, 99, b"")):
        contexts.clear()
        calls, errors = route.calls, route.errors
        peer.send(prefix + read)
        frames = await peer.read_frames(len(texts) - 1 + bool(prefix))
        body = b"".join(encode_frame(f.msg_id, f.flags, f.seq, f.payload) for f in frames)
        if prefix:
            body = body[len(encode_frame(*frames[0])) :]
        runs.append((body, route.calls - calls, route.errors - errors, shape(contexts)))
    (fast, *fast_counts), (slow, *slow_counts) = runs
    assert fast == slow and fast_counts == slow_counts
    calls, errors, shared = fast_counts
    assert (calls, errors) == (7, 1) and shared == [0, 0, 0, 3, 3, 3, 3]
    await peer.close()
