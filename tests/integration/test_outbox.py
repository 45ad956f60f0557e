"""The write path's one owner (server/outbox.py) and the Pusher built from its inputs.

The Outbox holds the connections whose output waits for the end of the loop iteration:
the read fast path's replies and the Pusher's pushes. Both must leave in one write per
connection, replies before the pushes made after them, and the fan-out timing must be
read only once that write is made. The Pusher takes its message IDs from a lookup that
follows a handler reload.
"""

from __future__ import annotations

import asyncio

import pytest

from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoRequest
from server import App, Context
from server.connection import Connection
from tests.bench.test_dispatch_bench import RecordingTransport
from tests.conftest import StartServer
from tests.integration.rawclient import RawPeer
from tests.proto import legacy_pb2

pytestmark = pytest.mark.usefixtures("fastpath_impl")

ECHO = 10


def echo(seq: int) -> bytes:
    return encode_frame(ECHO, 0, seq, EchoRequest(data=b"e").SerializeToString())


async def test_replies_and_pushes_of_one_iteration_leave_in_one_write(
    start_server: StartServer,
) -> None:
    """A read's replies (fast path) and pushes to the same connection in the same loop
    iteration: nothing is written until the end of the iteration, then one write holds
    the replies first, then the pushes, and the fan-out timing is taken after it."""
    server = await start_server()
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    seen_at_timing: list[int] = []
    server.outbox.after_flush(lambda: seen_at_timing.append(len(transport.written)))
    conn.data_received(echo(1) + echo(2))
    server.pusher.replay(conn, [(7, 1021, b""), (8, 1021, b"")])
    conn.data_received(echo(3))
    assert transport.written == [] and server.outbox.marked == [conn]
    await asyncio.sleep(0)
    assert len(transport.written) == 1 and seen_at_timing == [1]
    frames = FrameDecoder().feed(transport.written[0])
    assert [(f.seq, f.flags) for f in frames] == [
        (1, Flags.RESPONSE),
        (2, Flags.RESPONSE),
        (7, Flags.PUSH),
        (8, Flags.PUSH),
        (3, Flags.RESPONSE),
    ]
    assert not conn.flush_pending and server.outbox.marked == []
    server.connections.discard(conn)


async def test_a_connection_written_directly_is_not_written_twice(
    start_server: StartServer,
) -> None:
    """Output marked for the end of the iteration, then written sooner by someone else
    (a turn of run_connection, here behind a flagged frame): the Outbox's flush finds
    nothing left and makes no empty write."""
    server = await start_server()
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(echo(1))
    conn.data_received(encode_frame(ECHO, 0x10, 2, b""))  # BAD_FLAGS: run_connection
    assert len(transport.written) == 1
    await asyncio.sleep(0)
    assert len(transport.written) == 1
    assert [f.seq for f in FrameDecoder().feed(transport.written[0])] == [1, 2]
    server.connections.discard(conn)


async def test_pushes_follow_a_handler_reload(start_server: StartServer) -> None:
    """The Pusher looks message IDs up in the registry in use: a message type that only
    the reloaded apps declare can be pushed after the reload, with its ID."""
    server = await start_server()
    with pytest.raises(ValueError, match="no message ID"):
        server.pusher.encode(legacy_pb2.LegacyReply(code=1))
    app = App("legacy", public=True)

    @app.handler(legacy_pb2.LegacyRequest)
    def answer(ctx: Context, msg: legacy_pb2.LegacyRequest) -> legacy_pb2.LegacyReply:
        return legacy_pb2.LegacyReply(code=1)

    server.swap_apps(app)
    msg_id, payload = server.pusher.encode(legacy_pb2.LegacyReply(code=1))
    assert msg_id == 1021 and legacy_pb2.LegacyReply.FromString(payload).code == 1
    # And the dispatcher, handed the same lookup, frames the new route's reply with it.
    peer = await RawPeer.connect(server.address)
    peer.send(encode_frame(1020, 0, 5, legacy_pb2.LegacyRequest(fill=True).SerializeToString()))
    [reply] = await peer.read_frames(1)
    assert (reply.msg_id, reply.seq, reply.flags) == (1021, 5, Flags.RESPONSE)
    await peer.close()
