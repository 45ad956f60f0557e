"""kill -9 of a node of a real cluster (`tickwire serve --cluster` processes on a real
redis-server): its logged-in client moves to another node by itself and resumes the
same session there, push_gap reported and no push twice; its owned keys move to the
survivors within the heartbeat TTL, and `tickwire nodes` stops listing it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient, ClientError, Push, PushGap, Reconnect
from protocol.registry import system_registry
from server.cluster.ring import owner
from tests.cluster.failover_app import PUSHED_USER
from tests.cluster.test_nodes_cmd import nodes_cmd
from tests.cluster.test_processes import wait_nodes
from tests.conftest import wait_for
from tests.hostile.harness import users_file
from tests.proto import testapp_pb2 as pb
from tests.serveproc import spawn_serve

pytestmark = pytest.mark.timeout(90)

HEARTBEAT = 0.2
NODE_TTL = 1.0
PASSWORD = "alice-pw"
RECONNECT = Reconnect(initial=0.05, maximum=0.5)
Node = tuple[asyncio.subprocess.Process, tuple[str, int]]


@pytest.fixture
async def opened() -> AsyncIterator[list[AsyncClient]]:
    clients: list[AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def start_nodes(redis_url: str, tmp_path: Path, *ids: str) -> dict[str, Node]:
    """`tickwire serve` nodes serving failover_app, with a short heartbeat, each seeing
    all the others when this returns (tests/conftest.py kills them after the test)."""
    users = users_file(tmp_path, {PUSHED_USER: PASSWORD})
    nodes = {}
    for node_id in ids:
        nodes[node_id] = await spawn_serve(
            "--app",
            "tests.cluster.failover_app:app",
            "--cluster",
            redis_url,
            "--node-id",
            node_id,
            "--set",
            f"cluster_heartbeat={HEARTBEAT}",
            "--set",
            f"cluster_node_ttl={NODE_TTL}",
            "--set",
            f"users_file={users}",
        )
    await wait_nodes(redis_url, len(ids))
    await asyncio.sleep(2 * HEARTBEAT)  # each has read the others' records since
    return nodes


async def connect(
    opened: list[AsyncClient], address: tuple[str, int], *fallbacks: tuple[str, int]
) -> AsyncClient:
    client = await AsyncClient.connect(
        *address, system_registry([pb]), reconnect=RECONNECT, fallbacks=fallbacks
    )
    opened.append(client)
    return client


async def kill(node: Node) -> None:
    proc, _ = node
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()


async def test_a_killed_nodes_client_resumes_its_session_on_another_node(
    redis_url: str, tmp_path: Path, opened: list[AsyncClient]
) -> None:
    nodes = await start_nodes(redis_url, tmp_path, "a", "b")
    a, b = nodes["a"][1], nodes["b"][1]
    client = await connect(opened, a, a, b)
    await client.login(PUSHED_USER, PASSWORD)
    session = client.session
    assert session is not None
    pushes: list[Push] = []
    gaps: list[PushGap] = []
    client.on_push(pb.SleepReply, pushes.append)
    client.on_push_gap(gaps.append)
    # A push made on a, delivered there: the client has seen seq 1.
    on_a = await connect(opened, a)
    assert await on_a.call(pb.SleepRequest(tag=1), pb.SleepReply) == pb.SleepReply(tag=1)
    await wait_for(lambda: len(pushes) == 1)

    await kill(nodes["a"])
    # Nothing but the fallbacks brings it to b: a refuses, b answers the Resume. (A
    # request sent before the client saw the connection drop would fail with it.)
    await wait_for(lambda: client.reconnects == 1 and client.connected, timeout=20)
    reply = await client.call(pb.BlockingRequest(), pb.BlockingReply)
    assert reply.thread_name == f"b/{PUSHED_USER}/{session.session_id}"
    assert client.address == b and client.reconnects == 1
    assert client.session is not None and client.session.session_id == session.session_id
    assert client.session.user_id == PUSHED_USER
    # a died without saving the session's pushes: whatever it pushed after seq 1 may be
    # gone, and the Resume says so rather than pretend the replay is complete.
    assert client.push_gap
    assert gaps == [PushGap(seen=1, last_push_seq=1)]

    # A push made on b reaches the resumed session there, numbered after what it saw.
    on_b = await connect(opened, b)
    assert await on_b.call(pb.SleepRequest(tag=2), pb.SleepReply) == pb.SleepReply(tag=1)
    await wait_for(lambda: len(pushes) == 2)
    await client.ping()  # anything pushed ahead of this Pong has arrived
    assert [(p.seq, p.message.tag) for p in pushes] == [(1, 1), (2, 2)]  # type: ignore[attr-defined]
    assert client.duplicate_pushes == 0


async def test_a_killed_nodes_keys_move_to_the_survivors_within_the_ttl(
    redis_url: str, tmp_path: Path, opened: list[AsyncClient]
) -> None:
    nodes = await start_nodes(redis_url, tmp_path, "a", "b", "c")
    key = next(f"key-{i}" for i in range(1000) if owner(f"key-{i}", ["a", "b", "c"]) == "b")
    heir = owner(key, ["a", "c"])
    addresses = [nodes[n][1] for n in "abc"]
    on_a = await connect(opened, nodes["a"][1])
    on_c = await connect(opened, nodes["c"][1])
    # b's own client, with every node to fall back to.
    on_b = await connect(opened, nodes["b"][1], *addresses)
    for client in (on_a, on_b, on_c):
        reply = await client.call(pb.NoteRequest(text=key), pb.BlockingReply)
        assert reply.thread_name == "b"

    await kill(nodes["b"])
    killed = time.monotonic()
    bound = NODE_TTL + HEARTBEAT + 2.0  # docs/scaling.md: gone within ttl + heartbeat

    async def served_by_heir(client: AsyncClient) -> None:
        while True:
            assert time.monotonic() - killed < bound, f"{key} still not served by {heir}"
            try:
                reply = await client.call(pb.NoteRequest(text=key), pb.BlockingReply, timeout=1)
            except (ClientError, TimeoutError):
                # Forwarded to b while this node still counts it live (NodeGone, no
                # answer), or b's own client still reconnecting.
                await asyncio.sleep(0.05)
                continue
            # Every view without b names the same owner: the key moved to one node.
            assert reply.thread_name == heir
            return

    await asyncio.gather(*(served_by_heir(client) for client in (on_a, on_b, on_c)))
    assert on_b.address == nodes["a"][1]  # b refused: the next address in its list
    code, out, err = await nodes_cmd("--cluster", redis_url, "--json")
    assert code == 0, err
    assert {node["id"] for node in json.loads(out)} == {"a", "c"}
