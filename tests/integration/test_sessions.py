"""Sessions over real sockets: login, the auth gate, tokens, duplicate logins, resume,
lookups and events, on the memory store and on a real Redis.

The requests are built by hand (LoginRequest, ResumeRequest...) rather than through the
SDK's session helpers, so these tests pin the server's side of the wire contract.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient, InternalError, SessionReplaced, Unauthenticated
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import (
    Error,
    LoginReply,
    LoginRequest,
    LogoutReply,
    LogoutRequest,
    Ping,
    Pong,
    RefreshTokenRequest,
    ResumeReply,
    ResumeRequest,
)
from server import App, Context, Server, ServerConfig
from server.auth import MemoryUsers
from server.connection import CloseReason
from server.errors import HandlerError
from server.sessions import EndReason, Session
from tests.clients import Connect, login
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "pw-a", "bob": "pw-b"})


def notes_app() -> App:
    """A private handler: NoteRequest appends to the session's data and answers how many
    notes the session holds (so a Resume shows whether the data came along)."""
    app = App("notes")

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        session = ctx.session
        assert session is not None  # the gate guarantees it
        notes = session.data.setdefault("notes", [])
        notes.append(msg.text)
        return pb.SleepReply(tag=len(notes))

    @app.handler(pb.SleepRequest)
    async def saved(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        session = ctx.session
        assert session is not None
        session.data["saved"] = msg.tag
        await session.save()
        return pb.SleepReply(tag=msg.tag)

    return app


async def note(client: AsyncClient, text: str = "x") -> int:
    reply = await client.request(pb.NoteRequest(text=text))
    assert isinstance(reply, pb.SleepReply)
    return reply.tag


async def test_login_opens_private_handlers_and_logout_closes_them(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(notes_app(), authenticator=USERS, **store_config)
    client = await clients(server)
    with pytest.raises(Unauthenticated, match="needs a logged-in session"):
        await note(client)
    assert isinstance(await client.request(Ping()), Pong)  # public handlers need no login

    reply = await login(client)
    assert reply.user_id == "alice" and reply.session_id and len(reply.token) >= 40
    assert reply.session_ttl_s == 120 and reply.expires_at_ms > 0
    assert await note(client) == 1
    [session] = server.sessions.local_sessions("alice")
    assert session.session_id == reply.session_id and session.device == "test"

    assert isinstance(await client.request(LogoutRequest()), LogoutReply)
    with pytest.raises(Unauthenticated):
        await note(client)
    assert server.sessions.local_sessions("alice") == []
    # The connection stayed open, and the logged-out token opens nothing.
    other = await clients(server)
    with pytest.raises(Unauthenticated, match="token unknown"):
        await other.request(ResumeRequest(token=reply.token))


async def test_wrong_credentials_and_no_authenticator_are_refused(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client = await clients(server)
    with pytest.raises(Unauthenticated, match="wrong user name or password"):
        await login(client, "alice", "wrong")
    with pytest.raises(Unauthenticated, match="wrong user name or password"):
        await login(client, "mallory", "pw-a")
    assert server.sessions.live == {}

    bare = await start_server()
    client = await clients(bare)
    with pytest.raises(Unauthenticated, match="no authenticator"):
        await login(client)


async def test_a_notification_to_a_private_handler_gets_an_unsolicited_error(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(notes_app(), authenticator=USERS)
    client = await clients(server)
    errors: list[int] = []
    client.on_frame(lambda frame: errors.append(frame.msg_id) if frame.flags & 0x02 else None)
    client.notify(pb.NoteRequest(text="x"))
    await wait_for(lambda: errors == [3])
    assert server.stats.errors[ErrorCode.UNAUTHENTICATED] == 1


async def test_second_login_replaces_the_first_by_default(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(notes_app(), authenticator=USERS, **store_config)
    first, second = await clients(server), await clients(server)
    old = await login(first)
    new = await login(second)
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)
    assert first.goaway is not None and first.goaway.reason == ErrorCode.SESSION_REPLACED
    assert await note(second) == 1
    assert [s.session_id for s in server.sessions.local_sessions("alice")] == [new.session_id]
    infos = await server.sessions.sessions_of("alice")
    assert [i.session_id for i in infos] == [new.session_id]
    # The replaced session's token is dead.
    third = await clients(server)
    with pytest.raises(Unauthenticated):
        await third.request(ResumeRequest(token=old.token))


async def test_reject_policy_refuses_while_connected_then_replaces_a_waiting_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS, duplicate_login="reject")
    first, second = await clients(server), await clients(server)
    await login(first)
    with pytest.raises(Unauthenticated, match="already logged in elsewhere"):
        await login(second)
    assert not first.closed
    await first.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    reply = await login(second)
    assert [i.session_id for i in await server.sessions.sessions_of("alice")] == [reply.session_id]


async def test_allow_policy_keeps_every_device(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(authenticator=USERS, duplicate_login="allow", **store_config)
    first, second = await clients(server), await clients(server)
    a, b = await login(first), await login(second)
    infos = await server.sessions.sessions_of("alice")
    assert {i.session_id for i in infos} == {a.session_id, b.session_id}
    assert all(i.connected and i.node == server.sessions.node for i in infos)
    where = await server.sessions.where("alice")
    assert sorted(conn for _, conn in where) == sorted(
        s.conn.id for s in server.sessions.local_sessions("alice") if s.conn is not None
    )
    assert not first.closed and not second.closed


async def test_resume_after_the_client_socket_dies_keeps_session_and_data(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(notes_app(), authenticator=USERS, **store_config)
    client = await clients(server)
    reply = await login(client)
    assert await note(client, "a") == 1
    assert await note(client, "b") == 2
    # Kill the client's socket without a goodbye.
    assert client._transport is not None
    client._transport.abort()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    info = await server.sessions.by_token(reply.token)
    assert info is not None and not info.connected

    again = await clients(server)
    resumed = await again.request(ResumeRequest(token=reply.token))
    assert isinstance(resumed, ResumeReply)
    assert resumed.session_id == reply.session_id and resumed.user_id == "alice"
    assert await note(again, "c") == 3  # the data written at disconnect came back
    [session] = server.sessions.local_sessions("alice")
    assert session.data["notes"] == ["a", "b", "c"]


async def test_resume_takes_the_session_from_a_connection_that_still_holds_it(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(notes_app(), authenticator=USERS)
    old, new = await clients(server), await clients(server)
    reply = await login(old)
    await note(old)
    await new.request(ResumeRequest(token=reply.token))
    closed = await asyncio.wait_for(old.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)
    assert await note(new) == 2  # same live session object, data and all


async def test_refresh_rotates_the_token(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(authenticator=USERS, **store_config)
    client = await clients(server)
    first = await login(client)
    refreshed = await client.request(RefreshTokenRequest())
    assert isinstance(refreshed, LoginReply)
    assert refreshed.session_id == first.session_id and refreshed.token != first.token
    assert refreshed.expires_at_ms >= first.expires_at_ms
    assert await server.sessions.user_of_token(first.token) is None
    assert await server.sessions.user_of_token(refreshed.token) == "alice"
    other = await clients(server)
    with pytest.raises(Unauthenticated):
        await other.request(ResumeRequest(token=first.token))
    resumed = await other.request(ResumeRequest(token=refreshed.token))
    assert isinstance(resumed, ResumeReply) and resumed.session_id == first.session_id


async def test_refresh_and_logout_need_a_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client = await clients(server)
    for request in (RefreshTokenRequest(), LogoutRequest()):
        with pytest.raises(Unauthenticated):
            await client.request(request)


async def test_expired_token_and_expired_session_are_refused(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS, token_ttl=0.3)
    client = await clients(server)
    reply = await login(client)
    await asyncio.sleep(0.5)
    other = await clients(server)
    with pytest.raises(Unauthenticated):
        await other.request(ResumeRequest(token=reply.token))

    # A session that waited longer than session_ttl for its Resume is gone too.
    server = await start_server(authenticator=USERS, session_ttl=0.3)
    client = await clients(server)
    reply = await login(client)
    await client.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    await server.sessions.flush()
    await asyncio.sleep(0.5)
    other = await clients(server)
    with pytest.raises(Unauthenticated):
        await other.request(ResumeRequest(token=reply.token))


async def test_tokens_are_stored_only_hashed(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(authenticator=USERS, **store_config)
    client = await clients(server)
    reply = await login(client)
    assert server.store is not None
    keys = await server.store.scan_prefix("tw:")
    assert keys
    for key in keys:
        assert reply.token not in key
        if key.startswith("tw:session:"):
            record = await server.store.hgetall(key)
            assert all(reply.token.encode() not in value for value in record.values())


async def test_auth_timeout_closes_every_connection_that_did_not_log_in(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(
        notes_app(),
        authenticator=USERS,
        auth_timeout=0.3,
        sweep_interval=0.05,
        trust_loopback=False,
    )
    silent, knocker, pinger, member = [await clients(server) for _ in range(4)]
    with pytest.raises(Unauthenticated):
        await note(knocker)  # only private messages: still anonymous
    await pinger.ping()  # a public message does not stop the auth timeout
    await login(member)
    for client in (silent, knocker, pinger):
        closed = await asyncio.wait_for(client.wait_closed(), 5)
        assert closed.error is not None and closed.error.code == ErrorCode.AUTH_TIMEOUT
    await asyncio.sleep(0.3)
    assert not member.closed
    assert server.stats.close_reasons[CloseReason.AUTH_TIMEOUT] == 3


async def test_auth_timeout_starts_again_when_the_session_ends(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(
        authenticator=USERS, auth_timeout=0.3, sweep_interval=0.05, trust_loopback=False
    )
    client = await clients(server)
    await login(client)
    await asyncio.sleep(0.5)  # past the auth timeout, logged in
    assert not client.closed
    await client.logout()
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert closed.error is not None and closed.error.code == ErrorCode.AUTH_TIMEOUT


@pytest.mark.parametrize(
    "allowed", [{"anonymous": True, "trust_loopback": False}, {"trust_loopback": True}]
)
async def test_anonymous_use_keeps_connections_that_spoke_publicly(
    start_server: StartServer, clients: Connect, allowed: dict[str, bool]
) -> None:
    server = await start_server(
        notes_app(), authenticator=USERS, auth_timeout=0.3, sweep_interval=0.05, **allowed
    )
    silent, knocker, pinger = [await clients(server) for _ in range(3)]
    with pytest.raises(Unauthenticated):
        await note(knocker)  # refused: not a public message
    await pinger.ping()
    for client in (silent, knocker):
        closed = await asyncio.wait_for(client.wait_closed(), 5)
        assert closed.error is not None and closed.error.code == ErrorCode.AUTH_TIMEOUT
    await asyncio.sleep(0.3)
    assert not pinger.closed
    assert server.stats.close_reasons[CloseReason.AUTH_TIMEOUT] == 2


async def test_auth_timeout_zero_never_closes(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(auth_timeout=0, sweep_interval=0.05)
    client = await clients(server)
    await asyncio.sleep(0.4)
    assert not client.closed and len(server.connections) == 1


async def test_events_lookups_and_remove_user(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(authenticator=USERS, duplicate_login="allow", **store_config)
    events: list[tuple[str, str, str]] = []

    def connected(session: Session) -> None:
        events.append(("connected", session.user_id, ""))

    async def disconnected(session: Session, reason: EndReason) -> None:
        await asyncio.sleep(0)  # async callbacks run as tasks
        events.append(("disconnected", session.user_id, str(reason)))

    server.sessions.on_connected(connected)
    server.sessions.on_disconnected(disconnected)
    a, b, c = await clients(server), await clients(server), await clients(server)
    ra = await login(a)
    await login(b)
    await login(c, "bob", "pw-b")
    info = await server.sessions.by_token(ra.token)
    assert info is not None and info.user_id == "alice" and info.session_id == ra.session_id
    assert await server.sessions.user_of_token("not-a-token") is None
    assert server.sessions.get(ra.session_id) is not None

    assert await server.sessions.remove_user("alice") == 2
    for client in (a, b):
        closed = await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(closed.error, SessionReplaced)
        assert "ended by the server" in str(closed.error)
    assert await server.sessions.sessions_of("alice") == []
    assert await server.sessions.user_of_token(ra.token) is None
    await c.close()
    await wait_for(lambda: len(events) == 6)
    assert sorted(events) == sorted(
        [
            ("connected", "alice", ""),
            ("connected", "alice", ""),
            ("connected", "bob", ""),
            ("disconnected", "alice", "removed"),
            ("disconnected", "alice", "removed"),
            ("disconnected", "bob", "closed"),
        ]
    )


async def test_a_raising_event_callback_does_not_break_login(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(notes_app(), authenticator=USERS)

    def broken(session: Session) -> None:
        raise RuntimeError("callback bug")

    server.sessions.on_connected(broken)
    client = await clients(server)
    await login(client)
    assert await note(client) == 1


async def test_sessions_survive_a_restart_through_the_memory_snapshot(
    tmp_path: Path, clients: Connect
) -> None:
    snapshot = tmp_path / "store.snap"
    config = ServerConfig(host="127.0.0.1", port=0, store_snapshot_path=str(snapshot))
    first = Server(notes_app(), config=config, authenticator=USERS)
    await first.start()
    client = await clients(first)
    reply = await login(client)
    await note(client, "before")
    await first.stop(timeout=1.0)  # the connection's session is written, then snapshotted
    await client.close()

    second = Server(notes_app(), config=config, authenticator=USERS)
    await second.start()
    try:
        again = await clients(second)
        resumed = await again.request(ResumeRequest(token=reply.token))
        assert isinstance(resumed, ResumeReply) and resumed.session_id == reply.session_id
        assert await note(again, "after") == 2
    finally:
        await second.stop(timeout=1.0)


async def test_session_save_writes_data_now(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    server = await start_server(notes_app(), authenticator=USERS, **store_config)
    client = await clients(server)
    reply = await login(client)
    await client.request(pb.SleepRequest(tag=7))
    assert server.store is not None
    raw = await server.store.hget(f"tw:session:{reply.session_id}", "data")
    assert raw is not None and b"saved" in raw


async def test_login_on_a_logged_in_connection_ends_its_old_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client = await clients(server)
    alice = await login(client)
    bob = await login(client, "bob", "pw-b")
    assert server.sessions.local_sessions("alice") == []
    assert [s.session_id for s in server.sessions.local_sessions("bob")] == [bob.session_id]
    assert await server.sessions.user_of_token(alice.token) is None
    assert not client.closed


async def test_concurrent_logins_of_one_user_leave_exactly_one_session(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    # With Redis every store call suspends, so the logins interleave: the per-user lock
    # is what keeps two of them from both surviving.
    server = await start_server(authenticator=USERS, **store_config)
    many = [await clients(server) for _ in range(8)]
    results = await asyncio.gather(*(login(c) for c in many), return_exceptions=True)
    assert all(isinstance(r, LoginReply) for r in results)
    await wait_for(lambda: sum(not c.closed for c in many) == 1)
    assert len(await server.sessions.sessions_of("alice")) == 1
    assert len(server.sessions.local_sessions("alice")) == 1


async def test_resume_with_a_garbage_token_is_refused_and_the_connection_stays(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client = await clients(server)
    for token in ("", "x" * 10_000, "\u00e9\u00e8"):
        with pytest.raises(Unauthenticated):
            await client.request(ResumeRequest(token=token))
    assert isinstance(await client.request(Ping()), Pong)


class WaitingUsers:
    """An authenticator that holds every login until released (a slow user database)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = asyncio.Event()

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        self.asked.set()
        await self.release.wait()
        return user


async def test_a_connection_closed_during_login_leaves_no_live_session(
    start_server: StartServer, clients: Connect, store_config: dict[str, Any]
) -> None:
    auth = WaitingUsers()
    server = await start_server(authenticator=auth, **store_config)
    client = await clients(server)
    pending = asyncio.ensure_future(client.request(LoginRequest(user="alice", password="x")))
    await asyncio.wait_for(auth.asked.wait(), 5)
    # The server drops it (a client that only closes its socket is a half-close, whose
    # pending Login is still answered before the server closes).
    [conn] = server.connections
    conn.transport.abort()
    await wait_for(lambda: not server.connections)
    auth.release.set()
    with pytest.raises(Exception):  # noqa: B017 - the client is closed; any failure will do
        await pending
    await asyncio.sleep(0.1)
    assert server.sessions.live == {}
    assert await server.sessions.sessions_of("alice") == []


async def test_a_hanging_disconnect_callback_cannot_hold_up_a_stop(clients: Connect) -> None:
    server = Server(config=ServerConfig(host="127.0.0.1", port=0), authenticator=USERS)
    await server.start()

    async def hang(session: Session, reason: EndReason) -> None:
        await asyncio.Event().wait()

    server.sessions.on_disconnected(hang)
    client = await clients(server)
    await login(client)
    await asyncio.wait_for(server.stop(timeout=0.5), 10)
    assert not server.sessions._tasks


async def logged_in_alice(
    server: Server, clients: Connect
) -> tuple[AsyncClient, LoginReply, Session]:
    """A client logged in as alice, its LoginReply and the server's Session of it."""
    client = await clients(server)
    reply = await login(client)
    [session] = server.sessions.local_sessions("alice")
    return client, reply, session


async def test_a_login_by_request_and_a_resume_with_no_token_are_distinct_errors(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client = await clients(server)
    with pytest.raises(Unauthenticated, match="token unknown"):
        await client.request(ResumeRequest(token=""))
    with pytest.raises(Unauthenticated, match="wrong user name"):
        await login(client, "alice", "pw-b")


async def test_a_login_that_fails_half_way_leaves_no_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    assert server.store is not None
    # The user index holds a string: the login's sadd fails after the token and the
    # session record were written.
    await server.store.set("tw:user:alice", b"not a set")
    client = await clients(server)
    with pytest.raises(InternalError):
        await login(client)
    await server.sessions.flush()
    assert server.sessions.live == {} and server.sessions.waiting == {}
    assert sorted(await server.store.scan_prefix("tw:")) == ["tw:user:alice"]


async def test_refresh_and_logout_from_a_connection_the_session_left_are_refused(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    _, reply, session = await logged_in_alice(server, clients)
    old_conn = session.conn
    assert old_conn is not None
    new = await clients(server)
    await new.request(ResumeRequest(token=reply.token))
    for stale in (
        server.sessions.refresh(session, old_conn),
        server.sessions.logout(session, old_conn),
    ):
        with pytest.raises(HandlerError) as caught:
            await stale
        assert caught.value.code == ErrorCode.UNAUTHENTICATED
    assert await server.sessions.user_of_token(reply.token) == "alice"  # not rotated away
    assert server.sessions.local_sessions("alice") == [session]  # not logged out


async def test_saving_an_ended_session_writes_nothing(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client, reply, session = await logged_in_alice(server, clients)
    await client.request(LogoutRequest())
    session.data["late"] = 1
    await session.save()
    assert server.store is not None
    assert not await server.store.exists(f"tw:session:{reply.session_id}")


async def test_saving_a_waiting_session_keeps_its_session_ttl(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS, session_ttl=1, token_ttl=60)
    client, reply, session = await logged_in_alice(server, clients)
    await client.close()
    await wait_for(lambda: bool(server.sessions.waiting))
    await server.sessions.flush()
    await session.save()
    assert server.store is not None
    left = await server.store.ttl(f"tw:session:{reply.session_id}")
    assert left is not None and left <= 1


async def test_server_code_can_log_out_a_waiting_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS)
    client, reply, session = await logged_in_alice(server, clients)
    await client.close()
    await wait_for(lambda: bool(server.sessions.waiting))
    await server.sessions.logout(session)
    assert await server.sessions.user_of_token(reply.token) is None
    assert server.sessions.waiting == {}


async def test_the_user_index_outlives_a_session_kept_alive_by_refresh(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(authenticator=USERS, token_ttl=0.6, session_ttl=0.3)
    client = await clients(server)
    await login(client)
    for _ in range(8):  # 1.6 s: past the login's token_ttl + session_ttl
        await asyncio.sleep(0.2)
        await client.request(RefreshTokenRequest())
    assert len(await server.sessions.sessions_of("alice")) == 1
    assert await server.sessions.remove_user("alice") == 1


async def test_unknown_messages_do_not_stop_the_auth_timeout(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS, auth_timeout=0.3, sweep_interval=0.05)
    peer = await RawPeer.connect(server.address)
    try:
        peer.send_frame(999, 0, 1)  # unknown ID: answered, but no handler ran
        peer.send_frame(10, 0, 2, b"\xff\xff")  # undecodable Echo: same
        frames = await peer.read_until_closed()
        assert frames[-1].msg_id == 3
        assert Error.FromString(frames[-1].payload).code == ErrorCode.AUTH_TIMEOUT
    finally:
        await peer.close()
