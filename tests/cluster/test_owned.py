"""Owned keys on real nodes: a request for a key runs on its owner and its reply comes
back on the client's connection in order; keys move (with their hooks) as nodes join
and leave; server.call reaches a node or a key's owner."""

from __future__ import annotations

import asyncio
import random

import pytest

from client_sdk import AsyncClient, ServerError
from protocol.frame import Flags
from protocol.proto.system_pb2 import EchoRequest
from server import App, Context
from server.cluster.errors import RemoteError
from server.errors import HandlerError
from server.server import Server
from tests.conftest import StartNode, StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb


def owned_app(events: list[tuple[str, str, str]] | None = None) -> App:
    """NoteRequest(text=key) answers the node that ran it (in BlockingReply.thread_name);
    SleepRequest sleeps on the owner of str(tag % 7), then answers its tag."""
    app = App("owned", public=True)
    app.add_module(pb)

    @app.handler(pb.NoteRequest, owner=lambda msg: msg.text)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.BlockingReply:
        if msg.text == "refuse":
            raise HandlerError(150, f"refused on {ctx.server.node_id}")
        return pb.BlockingReply(thread_name=ctx.server.node_id)

    @app.handler(pb.SleepRequest, owner=lambda msg: str(msg.tag % 7))
    async def sleep(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        await asyncio.sleep(msg.ms / 1000)
        return pb.SleepReply(tag=msg.tag)

    if events is not None:

        @app.on_key_acquired
        def acquired(server: Server, key: str) -> None:
            events.append(("acquired", server.node_id, key))

        @app.on_key_released
        def released(server: Server, key: str, new_owner: str) -> None:
            events.append(("released", server.node_id, f"{key}->{new_owner}"))

        app.own_keys(lambda: [f"k{i}" for i in range(20)])
    return app


def key_owned_by(server: Server, node: str) -> str:
    assert server.cluster is not None
    return next(f"key-{i}" for i in range(1000) if server.cluster.owner(f"key-{i}") == node)


async def two_nodes(start_node: StartNode, app: App | None = None) -> tuple[Server, Server]:
    a = await start_node(app or owned_app(), node_id="a")
    b = await start_node(owned_app(), node_id="b")
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])
    await wait_for(lambda: b.cluster is not None and b.cluster.live == ["a", "b"])
    return a, b


async def test_a_request_runs_on_its_keys_owner(start_node: StartNode) -> None:
    a, b = await two_nodes(start_node)
    async with await AsyncClient.connect(*a.address, app_registry()) as client:
        remote = await client.request(pb.NoteRequest(text=key_owned_by(a, "b")))
        local = await client.request(pb.NoteRequest(text=key_owned_by(a, "a")))
        assert remote.thread_name == "b"  # type: ignore[attr-defined]
        assert local.thread_name == "a"  # type: ignore[attr-defined]
        # The owner's error is the client's answer, code and text.
        with pytest.raises(ServerError) as refused:
            await client.request(pb.NoteRequest(text="refuse"))
        assert refused.value.code == 150
        assert "refused on" in str(refused.value)
    assert a.owned.forwarded >= 1 and b.owned.served_here == 0


async def test_forwarded_replies_keep_the_clients_order(start_node: StartNode) -> None:
    a, _ = await two_nodes(start_node)
    peer = await RawPeer.connect(a.address)
    rng = random.Random(3)
    for seq in range(1, 121):
        if seq % 4:
            payload = pb.SleepRequest(ms=rng.randint(0, 4), tag=seq).SerializeToString()
            peer.send_frame(1000, 0, seq, payload)
        else:
            peer.send_frame(10, 0, seq, EchoRequest(data=b"x").SerializeToString())
    frames = await peer.read_frames(120)
    assert [f.seq for f in frames] == list(range(1, 121))
    assert all(f.flags == Flags.RESPONSE for f in frames)
    tags = [pb.SleepReply.FromString(f.payload).tag for f in frames if f.msg_id == 1001]
    assert tags == [seq for seq in range(1, 121) if seq % 4]
    assert a.owned.forwarded > 0 and a.owned.served_here > 0  # both kinds were in the mix
    await peer.close()


async def test_keys_move_with_their_hooks_as_nodes_join_and_leave(
    start_node: StartNode,
) -> None:
    events: list[tuple[str, str, str]] = []
    a = await start_node(owned_app(events), node_id="a")
    # Alone, a owns every declared key.
    assert sorted(key for kind, node, key in events if kind == "acquired") == sorted(
        f"k{i}" for i in range(20)
    )
    events.clear()
    b = await start_node(owned_app(events), node_id="b")
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])
    assert b.cluster is not None
    moved = {f"k{i}" for i in range(20) if b.cluster.owner(f"k{i}") == "b"}
    assert moved and len(moved) < 20
    await wait_for(
        lambda: {key.split("->")[0] for kind, node, key in events if kind == "released"} == moved
    )
    assert all(key.endswith("->b") for kind, node, key in events if kind == "released")
    await wait_for(
        lambda: {key for kind, node, key in events if kind == "acquired" and node == "b"} == moved
    )
    events.clear()
    await b.stop(timeout=0.5)
    await wait_for(
        lambda: {key for kind, node, key in events if kind == "acquired" and node == "a"} == moved
    )
    # And a request for one of them now runs on a.
    async with await AsyncClient.connect(*a.address, app_registry()) as client:
        reply = await client.request(pb.NoteRequest(text=sorted(moved)[0]))
        assert reply.thread_name == "a"  # type: ignore[attr-defined]


async def test_server_call_reaches_a_node_or_a_keys_owner(start_node: StartNode) -> None:
    a, b = await two_nodes(start_node)
    reply = await a.call("b", pb.NoteRequest(text=key_owned_by(a, "a")))
    assert reply is not None and reply.thread_name == "b"  # type: ignore[attr-defined]
    by_key = await a.call(key_owned_by(a, "b"), pb.NoteRequest(text="whatever"))
    assert by_key is not None and by_key.thread_name == "b"  # type: ignore[attr-defined]
    here = await b.call("b", pb.NoteRequest(text="x"))
    assert here is not None and here.thread_name == "b"  # type: ignore[attr-defined]
    with pytest.raises(RemoteError) as refused:
        await a.call("b", pb.NoteRequest(text="refuse"))
    assert refused.value.code == 150
    with pytest.raises(ValueError, match="no handler"):
        await a.call("b", pb.BigRequest(size=1))


async def test_without_a_cluster_owned_handlers_run_here(start_server: StartServer) -> None:
    events: list[tuple[str, str, str]] = []
    server = await start_server(owned_app(events))
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        reply = await client.request(pb.NoteRequest(text="any key"))
        assert reply.thread_name == server.node_id  # type: ignore[attr-defined]
    assert ("acquired", server.node_id, "any key") in events
    called = await server.call("some key", pb.NoteRequest(text="x"))
    assert called is not None and called.thread_name == server.node_id  # type: ignore[attr-defined]
