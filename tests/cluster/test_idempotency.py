"""Idempotent requests across the nodes of a cluster: a resend on another node while the
first still runs waits for its reply in the shared store, and never runs it twice."""

from __future__ import annotations

import asyncio

from protocol.proto.system_pb2 import LoginRequest
from tests.clients import Connect
from tests.conftest import StartNode, wait_for
from tests.integration.test_idempotency import USERS, venue
from tests.proto import testapp_pb2 as pb


async def test_a_resend_on_another_node_gets_the_first_nodes_reply(
    start_node: StartNode, clients: Connect
) -> None:
    app_a, app_b = venue(), venue()
    a = await start_node(app_a, node_id="a", authenticator=USERS, duplicate_login="allow")
    b = await start_node(app_b, node_id="b", authenticator=USERS, duplicate_login="allow")
    on_a, on_b = await clients(a), await clients(b)
    for client in (on_a, on_b):
        await client.request(LoginRequest(user="alice", password="a"))
    app_a.gate.clear()  # type: ignore[attr-defined]
    first = asyncio.ensure_future(on_a.request(pb.SleepRequest(tag=9)))
    await wait_for(lambda: app_a.runs == [9])  # type: ignore[attr-defined]
    resend = asyncio.ensure_future(on_b.request(pb.SleepRequest(tag=9)))
    await asyncio.sleep(0.1)
    assert not resend.done()  # polling the store for a's record
    app_a.gate.set()  # type: ignore[attr-defined]
    assert await resend == await first
    assert app_b.runs == []  # type: ignore[attr-defined]
    assert b.idempotency.repeated == 1
