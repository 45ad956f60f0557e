"""Idempotent requests (server/idempotency.py): a resend of the same key by the same user
gets the first reply, byte for byte, without a second run; across connections, a server
restart on the same store, and nodes of a cluster. Real SDK clients, real servers, and a
real redis-server where the store is Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client_sdk import AsyncClient, ConnectionClosed, Overloaded, Reconnect, ServerError
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import LoginRequest
from server import App, Context, Server
from server.auth import MemoryUsers
from server.errors import HandlerError
from tests.conftest import wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "a", "bob": "b"})
CODE_REJECTED = 120


def venue() -> App:
    """SleepRequest is an order (its tag the client order ID): each run is counted and
    answers with the run's number, so a stored reply is told from a second run."""
    app = App("venue")
    app.runs: list[int] = []  # type: ignore[attr-defined]
    app.gate = asyncio.Event()  # type: ignore[attr-defined]
    app.gate.set()  # type: ignore[attr-defined]

    @app.handler(pb.SleepRequest, idempotent=lambda msg: msg.tag)
    async def order(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        app.runs.append(msg.tag)  # type: ignore[attr-defined]
        await app.gate.wait()  # type: ignore[attr-defined]
        if msg.ms == 1:
            raise HandlerError(CODE_REJECTED, f"order {msg.tag} rejected")
        if msg.ms == 2:
            raise HandlerError(ErrorCode.OVERLOADED, "busy: retry after 0 ms")
        return pb.SleepReply(tag=msg.tag * 1000 + len(app.runs))  # type: ignore[attr-defined]

    @app.handler(pb.GateRequest, idempotent=lambda msg: msg.tag)
    def sync_order(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        app.runs.append(msg.tag)  # type: ignore[attr-defined]
        return pb.SleepReply(tag=len(app.runs))  # type: ignore[attr-defined]

    @app.handler(pb.NoteRequest, idempotent=lambda msg: msg.text)
    def note(ctx: Context, msg: pb.NoteRequest) -> None:
        app.runs.append(msg.text)  # type: ignore[attr-defined]

    return app


async def connect(server: Server, user: str = "alice", password: str = "a") -> AsyncClient:
    client = await AsyncClient.connect(*server.address, registry=app_registry())
    await client.request(LoginRequest(user=user, password=password))
    return client


async def test_a_resend_gets_the_first_reply_without_a_second_run(
    start_server: Any, opened: list[AsyncClient], store_config: dict[str, Any]
) -> None:
    app = venue()
    server = await start_server(app, authenticator=USERS, **store_config)
    first = await connect(server)
    opened.append(first)
    reply = await first.request(pb.SleepRequest(tag=7))
    await first.close()
    again = await connect(server)  # a new connection, as after a reconnect
    opened.append(again)
    assert await again.request(pb.SleepRequest(tag=7)) == reply
    assert app.runs == [7]  # type: ignore[attr-defined]
    assert server.idempotency.first == 1 and server.idempotency.repeated == 1
    # Another key runs; the same key of another user is that user's own.
    assert await again.request(pb.SleepRequest(tag=8)) != reply
    bob = await connect(server, "bob", "b")
    opened.append(bob)
    assert (await bob.request(pb.SleepRequest(tag=7))).tag == 7003  # type: ignore[attr-defined]
    # A sync handler declared idempotent is awaited around its store calls.
    sync_first = await again.request(pb.GateRequest(tag=1))
    assert await again.request(pb.GateRequest(tag=1)) == sync_first
    assert app.runs == [7, 8, 7, 1]  # type: ignore[attr-defined]


async def test_a_resend_while_the_first_runs_waits_for_its_reply(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    app = venue()
    server = await start_server(app, authenticator=USERS, duplicate_login="allow")
    a, b = await connect(server), await connect(server)
    opened += [a, b]
    app.gate.clear()  # type: ignore[attr-defined]
    first = asyncio.ensure_future(a.request(pb.SleepRequest(tag=5)))
    await wait_for(lambda: app.runs == [5])  # type: ignore[attr-defined]
    second = asyncio.ensure_future(b.request(pb.SleepRequest(tag=5)))
    await asyncio.sleep(0.05)
    assert not second.done()
    app.gate.set()  # type: ignore[attr-defined]
    assert await first == await second
    assert app.runs == [5]  # type: ignore[attr-defined]


async def test_an_error_is_kept_but_an_answer_that_did_not_run_is_not(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    app = venue()
    server = await start_server(app, authenticator=USERS)
    client = await connect(server)
    opened.append(client)
    for _ in range(2):
        with pytest.raises(ServerError) as rejected:
            await client.request(pb.SleepRequest(tag=3, ms=1))
        assert rejected.value.code == CODE_REJECTED
        assert "order 3 rejected" in str(rejected.value)
    assert app.runs == [3]  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(Overloaded):
            await client.request(pb.SleepRequest(tag=4, ms=2))
    assert app.runs == [3, 4, 4]  # type: ignore[attr-defined]
    # The key was released: a resend that now succeeds runs and is kept.
    done = await client.request(pb.SleepRequest(tag=4))
    assert await client.request(pb.SleepRequest(tag=4)) == done
    assert app.runs == [3, 4, 4, 4]  # type: ignore[attr-defined]


async def test_an_unusable_key_is_refused_before_the_handler(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    app = venue()
    server = await start_server(app, authenticator=USERS)
    client = await connect(server)
    opened.append(client)
    with pytest.raises(ServerError) as refused:
        await client.request(pb.NoteRequest(text=""))
    assert refused.value.code == ErrorCode.DECODE_ERROR
    assert "needs an idempotency key" in str(refused.value)
    with pytest.raises(ServerError, match="longer than 256 bytes"):
        await client.request(pb.NoteRequest(text="x" * 257))
    assert app.runs == []  # type: ignore[attr-defined]


async def test_a_resend_after_a_restart_on_the_same_store_gets_the_first_reply(
    start_server: Any, redis_url: str
) -> None:
    app = venue()
    first = await start_server(app, authenticator=USERS, store="redis", redis_url=redis_url)
    client = await connect(first)
    reply = await client.request(pb.SleepRequest(tag=11))
    await client.close()
    await first.stop(timeout=1.0)

    second = await start_server(venue(), authenticator=USERS, store="redis", redis_url=redis_url)
    client = await connect(second)
    try:
        assert await client.request(pb.SleepRequest(tag=11)) == reply
        assert second.apps[-1].runs == []  # type: ignore[attr-defined]
    finally:
        await client.close()


def test_an_idempotent_handler_must_need_a_login() -> None:
    app = App("anon", public=True)
    with pytest.raises(ValueError, match="needs a login"):
        app.add_handler(pb.SleepRequest, lambda ctx, msg: None, idempotent=lambda m: m.tag)


async def test_the_sdk_resends_an_idempotent_request_after_it_resumes(start_server: Any) -> None:
    """The connection drops while the order runs: with resend=True the SDK sends it again
    once it has resumed, and gets the first run's reply; the handler ran once."""
    app = venue()
    server = await start_server(app, authenticator=USERS)
    client = await AsyncClient.connect(
        *server.address, registry=app_registry(), reconnect=Reconnect(initial=0.05)
    )
    try:
        await client.login("alice", "a")
        app.gate.clear()  # type: ignore[attr-defined]
        order = asyncio.ensure_future(client.request(pb.SleepRequest(tag=21), resend=True))
        plain = asyncio.ensure_future(client.request(pb.SleepRequest(tag=22)))
        await wait_for(lambda: app.runs == [21])  # type: ignore[attr-defined]  # 22 waits
        [session] = server.sessions.local_sessions("alice")
        assert session.conn is not None
        session.conn.transport.abort()
        with pytest.raises(ConnectionClosed):
            await plain  # not marked for resending: it fails as before
        await wait_for(lambda: client.reconnects == 1 and client.resent == 1)
        app.gate.set()  # type: ignore[attr-defined]
        reply = await order
        assert reply.tag == 21 * 1000 + 1  # type: ignore[attr-defined]  # the first run's
        assert app.runs == [21]  # type: ignore[attr-defined]
        assert server.idempotency.repeated == 1
    finally:
        await client.close()
