"""reply_first over real sockets: a handler's reply reaches the client ahead of the
pushes it made to its own connection (FIX: the order's ack, then its fill), for sync and
async handlers, per handler or app-wide; without it the pushes come first. Pushes to
other connections are not held, and reliable push numbers stay in the order written.
"""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest

from protocol.frame import Flags, Frame
from protocol.proto.system_pb2 import LoginRequest
from server import App, Context
from server.auth import MemoryUsers
from tests.conftest import StartServer
from tests.integration.rawclient import RawPeer
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "a", "bob": "b"})
PUSH = int(Flags.PUSH)
RESPONSE = int(Flags.RESPONSE)
ACK = 999  # the reply's tag; pushes carry 1, 2...


def venue(*, app_default: bool = False, handler: bool | None = None) -> App:
    """NoteRequest: a sync handler that pushes two fills to the caller, one to bob, then
    answers the ack. GateRequest: the same across awaits, async."""
    app = App("venue", reply_first=app_default)

    @app.handler(pb.NoteRequest, reply_first=handler)
    def new_order(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        ctx.push(pb.SleepReply(tag=1))
        ctx.server.push("bob", pb.SleepReply(tag=7))
        ctx.push(pb.SleepReply(tag=2))
        return pb.SleepReply(tag=ACK)

    @app.handler(pb.GateRequest, reply_first=handler)
    async def new_order_async(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        ctx.push(pb.SleepReply(tag=1))
        await asyncio.sleep(0.05)  # the Outbox flushes meanwhile
        ctx.push(pb.SleepReply(tag=2))
        await asyncio.sleep(0.05)
        return pb.SleepReply(tag=ACK)

    app.add_module(pb)
    return app


async def login(server_address: tuple[str, int], user: str) -> RawPeer:
    peer = await RawPeer.connect(server_address)
    peer.send_frame(6, 0, 1, LoginRequest(user=user, password=user[0]).SerializeToString())
    await peer.read_frames(1)
    return peer


def shape(frames: list[Frame]) -> list[tuple[str, int, int]]:
    """Each frame as (kind, seq, tag)."""
    return [
        (
            "push" if f.flags == PUSH else "reply" if f.flags == RESPONSE else str(f.flags),
            f.seq,
            pb.SleepReply.FromString(f.payload).tag,
        )
        for f in frames
    ]


REPLY_FIRST = [("reply", 2, ACK), ("push", 1, 1), ("push", 2, 2)]
PUSHES_FIRST = [("push", 1, 1), ("push", 2, 2), ("reply", 2, ACK)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, PUSHES_FIRST),
        ({"handler": True}, REPLY_FIRST),
        ({"app_default": True}, REPLY_FIRST),
        ({"app_default": True, "handler": False}, PUSHES_FIRST),
    ],
)
@pytest.mark.parametrize("request_id", [1007, 1010], ids=["sync", "async"])
async def test_the_reply_goes_ahead_of_the_handlers_pushes_with_reply_first(
    start_server: StartServer,
    fastpath_impl: ModuleType,
    options: dict[str, bool],
    expected: list[tuple[str, int, int]],
    request_id: int,
) -> None:
    server = await start_server(venue(**options), authenticator=USERS)
    alice = await login(server.address, "alice")
    bob = await login(server.address, "bob")
    try:
        body = (
            pb.NoteRequest(text="buy") if request_id == 1007 else pb.GateRequest(tag=1)
        ).SerializeToString()
        alice.send_frame(request_id, 0, 2, body)
        assert shape(await alice.read_frames(3)) == expected
        if request_id == 1007:
            # bob's push, made between alice's two, was not held for alice's reply.
            assert shape(await bob.read_frames(1)) == [("push", 1, 7)]
        # Then the connection goes on as usual: the next request is answered.
        alice.send_frame(request_id, 0, 3, body)
        assert [kind for kind, _, _ in shape(await alice.read_frames(3))] == [
            kind for kind, _, _ in expected
        ]
    finally:
        await alice.close()
        await bob.close()


async def test_a_push_from_elsewhere_during_an_awaited_reply_first_handler_waits_too(
    start_server: StartServer,
) -> None:
    app = App("venue", reply_first=True)
    started = asyncio.Event()
    go = asyncio.Event()

    @app.handler(pb.GateRequest)
    async def slow_order(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        started.set()
        await go.wait()
        return pb.SleepReply(tag=ACK)

    app.add_module(pb)
    server = await start_server(app, authenticator=USERS)
    alice = await login(server.address, "alice")
    try:
        alice.send_frame(1010, 0, 2, pb.GateRequest(tag=1).SerializeToString())
        await started.wait()
        server.push("alice", pb.SleepReply(tag=1))  # a fill from the matching engine
        await asyncio.sleep(0.05)  # several loop iterations and Outbox flushes
        go.set()
        assert shape(await alice.read_frames(2)) == [("reply", 2, ACK), ("push", 1, 1)]
    finally:
        await alice.close()


def test_reply_first_is_refused_on_an_unordered_handler_and_not_defaulted_to() -> None:
    app = App("venue", reply_first=True)

    async def handler(ctx: Context, msg: pb.GateRequest) -> None:
        return None

    route = app.add_handler(pb.GateRequest, handler, ordered=False)
    assert not route.reply_first
    with pytest.raises(ValueError, match="reply_first"):
        App("other").add_handler(pb.GateRequest, handler, ordered=False, reply_first=True)
