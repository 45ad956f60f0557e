"""Fair turns for connections on the consumers, and deadlines that count queued time."""

from __future__ import annotations

import asyncio

from protocol.errors import ErrorCode
from protocol.frame import encode_frame
from protocol.proto.system_pb2 import Error
from server import App, Context
from server.dispatch import FAIR_TURN
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.proto import testapp_pb2 as pb

SLEEP = 1000  # testapp.SleepRequest's message ID
GATE = 1010  # testapp.GateRequest's


def recording_app() -> tuple[App, list[int]]:
    """Sleep records its tag when it runs; Gate ignores its first cancellation (the
    deadline) and holds on for as long again, so what queues behind it waits past its own."""
    app = App("fair", public=True)
    ran: list[int] = []

    @app.handler(pb.SleepRequest)
    async def sleep(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        ran.append(msg.tag)
        await asyncio.sleep(msg.ms / 1000)
        return pb.SleepReply(tag=msg.tag)

    @app.handler(pb.GateRequest)
    async def gate(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        try:
            await asyncio.sleep(msg.tag / 1000)
        except asyncio.CancelledError:
            await asyncio.sleep(msg.tag / 1000)
            raise
        return pb.SleepReply(tag=msg.tag)

    return app, ran


def sleep_frame(seq: int, tag: int, ms: int) -> bytes:
    return encode_frame(SLEEP, 0, seq, pb.SleepRequest(ms=ms, tag=tag).SerializeToString())


async def test_a_pipelining_connection_lets_the_next_one_in_after_a_few_frames(
    start_server: StartServer,
) -> None:
    app, ran = recording_app()
    server = await start_server(app, consumers=1)
    hog = await RawPeer.connect(server.address)
    hog.send(b"".join(sleep_frame(seq, seq, 20) for seq in range(1, 31)))
    await wait_for(lambda: len(ran) >= 1)
    polite = await RawPeer.connect(server.address)
    polite.send(sleep_frame(1, 1000, 0))
    [reply] = await polite.read_frames(1, timeout=30)
    assert pb.SleepReply.FromString(reply.payload).tag == 1000
    # The one consumer took the hog's frames FAIR_TURN at a time at most, not all 30.
    assert FAIR_TURN <= 4
    assert ran.index(1000) <= 5, ran
    frames = await hog.read_frames(30, timeout=30)
    assert [f.seq for f in frames] == list(range(1, 31))  # the hog's order is kept
    await hog.close()
    await polite.close()


async def test_a_request_that_waited_past_its_deadline_is_answered_timeout_unrun(
    start_server: StartServer,
) -> None:
    app, ran = recording_app()
    server = await start_server(app, handler_timeout=0.3)
    peer = await RawPeer.connect(server.address)
    # Gate holds the connection about 0.6 s; Sleeps 2 and 3 wait behind it (one in the
    # same read, one in a later read through the mailbox), past their 0.3 s.
    peer.send(encode_frame(GATE, 0, 1, pb.GateRequest(tag=300).SerializeToString()))
    peer.send(sleep_frame(2, 2, 0))
    await asyncio.sleep(0.05)
    peer.send(sleep_frame(3, 3, 0))
    frames = await peer.read_frames(3, timeout=30)
    assert [f.seq for f in frames] == [1, 2, 3]
    errors = [Error.FromString(f.payload) for f in frames]
    assert [e.code for e in errors] == [ErrorCode.TIMEOUT] * 3
    assert "waited in a queue" in errors[1].message and "waited in a queue" in errors[2].message
    assert ran == []
    # A request that did not wait runs as usual.
    peer.send(sleep_frame(4, 4, 0))
    [after] = await peer.read_frames(1)
    assert pb.SleepReply.FromString(after.payload).tag == 4 and ran == [4]
    await peer.close()


async def test_a_request_that_waited_part_of_its_deadline_gets_only_the_rest(
    start_server: StartServer,
) -> None:
    app, ran = recording_app()
    server = await start_server(app, handler_timeout=1.0)
    peer = await RawPeer.connect(server.address)
    # Gate holds the connection 0.8 s (under its own 1 s: it answers);
    # Sleep 2 then needs 0.5 s of a deadline that has ~0.2 s left.
    peer.send(encode_frame(GATE, 0, 1, pb.GateRequest(tag=800).SerializeToString()))
    peer.send(sleep_frame(2, 2, 500))
    frames = await peer.read_frames(2, timeout=30)
    assert frames[0].msg_id != 3  # Gate's reply, not an Error
    error = Error.FromString(frames[1].payload)
    assert error.code == ErrorCode.TIMEOUT and "did not finish" in error.message
    assert ran == [2]
    await peer.close()
