"""The SDK's sessions against a real server: login, refresh, logout, resume by hand and
after a reconnect (a reconnect callback's request failing fast when the link drops
again), duplicate logins, remembered credentials, close() leaving no task behind, the
blocking Client."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from pathlib import Path

import pytest

from client_sdk import (
    AsyncClient,
    AuthTimeout,
    Client,
    ClientError,
    ConnectionClosed,
    Reconnect,
    ServerShutdown,
    Session,
    SessionReplaced,
    Unauthenticated,
)
from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import (
    EchoReply,
    EchoRequest,
    LoginReply,
    ResumeReply,
    ResumeRequest,
)
from protocol.registry import MessageRegistry, system_registry
from server import App, Context, Server, ServerConfig
from server.auth import MemoryUsers
from tests.conftest import StartServer, wait_for
from tests.proto import testapp_pb2 as pb

pytestmark = pytest.mark.timeout(60)

USERS = {"alice": "pw-a", "bob": "pw-b"}
FAST = Reconnect(initial=0.02, maximum=0.2)


def private_app() -> App:
    """One private handler: who the connection is logged in as (testapp's NoteRequest
    answered with a BlockingReply, whose string field carries `user/session`)."""
    app = App("private")

    @app.handler(pb.NoteRequest)
    def whoami(ctx: Context, msg: pb.NoteRequest) -> pb.BlockingReply:
        session = ctx.session
        assert session is not None
        return pb.BlockingReply(thread_name=f"{session.user_id}/{session.session_id}")

    return app


def registry() -> MessageRegistry:
    return system_registry([pb])


async def whoami(client: AsyncClient, timeout: float = 10.0) -> str:
    reply = await client.call(pb.NoteRequest(text="?"), pb.BlockingReply, timeout=timeout)
    return reply.thread_name


async def start(start_server: StartServer, **config: object) -> Server:
    return await start_server(private_app(), authenticator=MemoryUsers(USERS), **config)


async def connect(
    server: Server, opened: list[AsyncClient], reconnect: Reconnect | None = None
) -> AsyncClient:
    client = await AsyncClient.connect(*server.address, registry(), reconnect=reconnect)
    opened.append(client)
    return client


def sole_session_conn(server: Server, user: str) -> asyncio.Transport:
    sessions = server.sessions.local_sessions(user)
    assert len(sessions) == 1, sessions
    conn = sessions[0].conn
    assert conn is not None
    return conn.transport


def session_of(client: AsyncClient) -> Session:
    """`client.session`, which must be there (and is not narrowed by earlier asserts)."""
    assert client.session is not None
    return client.session


# -- login, refresh, logout, resume by hand -------------------------------------------


async def test_login_keeps_the_session_and_a_bad_password_is_unauthenticated(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)
    with pytest.raises(Unauthenticated) as refused:
        await client.login("alice", "wrong")
    assert refused.value.code == ErrorCode.UNAUTHENTICATED
    assert client.session is None and not client.closed
    assert await client.ping() > 0  # the connection stays open

    before_ms = time.time() * 1000
    reply = await client.login("alice", "pw-a", "laptop")
    assert isinstance(reply, LoginReply) and reply.user_id == "alice"
    session = session_of(client)
    assert session == Session(
        "alice", reply.session_id, reply.token, reply.expires_at_ms, reply.session_ttl_s
    )
    assert session.token and session.session_id and session.expires_at_ms > before_ms
    assert session.token not in repr(session)  # logging a Session leaks no token
    assert await whoami(client) == f"alice/{session.session_id}"


async def test_a_private_message_before_login_is_refused_and_the_connection_stays(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)
    with pytest.raises(Unauthenticated):
        await whoami(client)
    assert (await client.call(EchoRequest(data=b"x"), EchoReply)).data == b"x"  # public
    await client.login("bob", "pw-b")
    assert (await whoami(client)).startswith("bob/")


async def test_refresh_rotates_the_token_and_the_old_one_is_refused_at_once(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    first = await connect(server, clients, FAST)
    await first.login("alice", "pw-a")
    old = first.session
    assert old is not None
    reply = await first.refresh_token()
    new = first.session
    assert new is not None and new.token == reply.token != old.token
    assert new.session_id == old.session_id and new.user_id == "alice"

    other = await connect(server, clients)
    with pytest.raises(Unauthenticated):
        await other.resume(old.token)
    assert other.session is None
    assert await whoami(first) == f"alice/{old.session_id}"  # first is untouched

    # The new token moves the session to `other`; `first` is told so, and stays closed
    # although it has a Reconnect policy (it would only take the session back).
    lost: list[ClientError] = []
    first.on_session_lost(lost.append)
    resumed = await other.resume(new.token)
    assert isinstance(resumed, ResumeReply) and resumed.session_id == old.session_id
    assert other.session is not None and other.session.token == new.token
    assert await whoami(other) == f"alice/{old.session_id}"
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced) and closed.code == 12
    assert first.session is None and len(lost) == 1 and isinstance(lost[0], SessionReplaced)
    await asyncio.sleep(0.2)  # several reconnect waits
    assert first.reconnects == 0
    with pytest.raises(ConnectionClosed):
        await first.ping()


async def test_logout_drops_the_session_and_keeps_the_connection(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)
    await client.login("alice", "pw-a")
    token = client.session.token if client.session else ""
    await client.logout()
    assert client.session is None and not client.closed
    with pytest.raises(Unauthenticated):
        await whoami(client)
    other = await connect(server, clients)
    with pytest.raises(Unauthenticated):
        await other.resume(token)  # a logged-out token is refused
    await client.login("alice", "pw-a")  # the same connection can log in again
    assert (await whoami(client)).startswith("alice/")


# -- the session across reconnects ---------------------------------------------------


async def test_a_dropped_connection_resumes_the_session_before_anything_else(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a")
    session = client.session
    assert session is not None
    seen_in_callback: list[Session | None] = []
    client.on_reconnect(lambda c: seen_in_callback.append(c.session))
    sole_session_conn(server, "alice").abort()  # the network drops it: no GoAway
    await wait_for(lambda: not client.connected)
    # Made while the connection is down: it waits for the reconnect and goes out only
    # after the Resume, so it runs logged in.
    assert await whoami(client) == f"alice/{session.session_id}"
    assert client.reconnects == 1 and client.session is not None
    assert client.session.session_id == session.session_id
    assert client.session.token == session.token  # a Resume does not rotate it
    assert seen_in_callback == [client.session]  # the Resume came before the callbacks
    # The server's session follows the new connection, and it can drop again.
    sole_session_conn(server, "alice").abort()
    await wait_for(lambda: not client.connected)
    assert await whoami(client) == f"alice/{session.session_id}"
    assert client.reconnects == 2 and client.connected


async def test_a_duplicate_login_kicks_the_first_client_which_does_not_reconnect(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)  # duplicate_login defaults to "replace"
    first = await connect(server, clients, FAST)
    await first.login("alice", "pw-a", "phone", remember=True)
    lost: list[ClientError] = []
    first.on_session_lost(lost.append)
    second = await connect(server, clients, FAST)
    await second.login("alice", "pw-a", "laptop")
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)
    assert first.goaway is not None and first.goaway.reason == ErrorCode.SESSION_REPLACED
    assert first.session is None and [type(e) for e in lost] == [SessionReplaced]
    await asyncio.sleep(0.3)  # remember=True must not log in again and kick back
    assert first.reconnects == 0 and first.closed
    assert second.session is not None and not second.closed
    assert await whoami(second) == f"alice/{second.session.session_id}"


async def test_the_reject_policy_refuses_the_second_login(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server, duplicate_login="reject")
    first = await connect(server, clients)
    await first.login("alice", "pw-a")
    second = await connect(server, clients)
    with pytest.raises(Unauthenticated):
        await second.login("alice", "pw-a")
    assert second.session is None
    assert (await whoami(first)).startswith("alice/") and not first.closed


async def restart_on_same_port(server: Server) -> Server:
    """Stop `server` (GoAway SERVER_SHUTDOWN) and start a fresh one on its port: its
    memory store knows none of the old sessions, so every Resume is refused."""
    port = server.address[1]
    await server.stop(timeout=1, reconnect_after_ms=50)
    fresh = Server(
        private_app(),
        config=ServerConfig(host="127.0.0.1", port=port),
        authenticator=MemoryUsers(USERS),
    )
    await fresh.start()
    return fresh


async def test_remember_logs_in_again_when_the_resume_is_refused(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a", remember=True)
    old = client.session
    assert old is not None
    lost: list[ClientError] = []
    client.on_session_lost(lost.append)
    fresh = await restart_on_same_port(server)
    try:
        name = await whoami(client)  # waits for the reconnect and the new login
        assert client.session is not None and client.session.session_id != old.session_id
        assert name == f"alice/{client.session.session_id}"
        assert client.reconnects == 1 and lost == []
    finally:
        await client.close()
        await fresh.stop(timeout=1)


async def test_without_remember_a_refused_resume_loses_the_session(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a")
    lost: list[ClientError] = []
    order: list[str] = []

    async def session_lost(reason: ClientError) -> None:
        await asyncio.sleep(0)
        lost.append(reason)
        order.append("lost")

    client.on_session_lost(session_lost)
    client.on_reconnect(lambda c: order.append("reconnect"))
    fresh = await restart_on_same_port(server)
    try:
        await wait_for(lambda: client.reconnects == 1 and bool(order))
        with pytest.raises(Unauthenticated):
            await whoami(client)  # connected, but nobody is logged in
        assert order == ["lost", "reconnect"] and client.session is None
        assert len(lost) == 1 and isinstance(lost[0], Unauthenticated)
        assert client.goaway is None and not client.closed
        await client.login("alice", "pw-a")  # the app logs in again when it likes
        assert (await whoami(client)).startswith("alice/")
    finally:
        await client.close()
        await fresh.stop(timeout=1)


async def test_the_session_is_resumed_on_the_server_that_comes_back_after_a_goaway(
    start_server: StartServer, clients: list[AsyncClient], tmp_path: Path
) -> None:
    """A server stop sends GoAway SERVER_SHUTDOWN; its successor restores the memory
    store from the snapshot, so the client's automatic Resume finds the session."""
    snapshot = str(tmp_path / "store.snapshot")
    server = await start(start_server, store_snapshot_path=snapshot)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a")
    session = session_of(client)
    port = server.address[1]
    await server.stop(timeout=1, reconnect_after_ms=50)
    successor = Server(
        private_app(),
        config=ServerConfig(host="127.0.0.1", port=port, store_snapshot_path=snapshot),
        authenticator=MemoryUsers(USERS),
    )
    await successor.start()
    try:
        assert await whoami(client) == f"alice/{session.session_id}"
        assert client.reconnects == 1 and session_of(client).token == session.token
    finally:
        await client.close()
        await successor.stop(timeout=1)


async def test_a_server_shutdown_closes_with_its_reason_and_keeps_the_session(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)  # no policy: the close is final
    await client.login("alice", "pw-a")
    await server.stop(timeout=1, reconnect_after_ms=10)
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert isinstance(closed.error, ServerShutdown)
    assert client.session is not None  # kept: another connection may resume it


async def test_auth_timeout_closes_for_good_instead_of_reconnecting(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server, auth_timeout=0.2)
    client = await connect(server, clients, FAST)
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert isinstance(closed.error, AuthTimeout) and closed.code == 14
    await asyncio.sleep(0.2)
    assert client.reconnects == 0


async def test_a_logged_in_client_is_not_timed_out(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server, auth_timeout=0.3)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a")
    sole_session_conn(server, "alice").abort()
    await asyncio.sleep(0.6)  # the new connection was resumed at once
    assert not client.closed and client.reconnects == 1
    assert (await whoami(client)).startswith("alice/")


async def test_auto_refresh_renews_the_token_before_it_expires(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server, token_ttl=1)
    client = await connect(server, clients)
    await client.login("alice", "pw-a", auto_refresh=True)
    first = client.session
    assert first is not None
    await wait_for(lambda: client.session is not None and client.session.token != first.token)
    second = client.session
    assert second is not None and second.session_id == first.session_id
    assert second.expires_at_ms > first.expires_at_ms
    await wait_for(lambda: client.session is not None and client.session.token != second.token)
    await client.logout()
    await asyncio.sleep(1.0)  # no refresh after the logout (it would fail, and log)
    assert client.session is None


# -- the push sequence a Resume carries (a scripted peer stands in for the server) -----


async def test_resume_sends_the_last_push_seq_seen() -> None:
    resumes: list[ResumeRequest] = []
    connections = 0

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if frame.msg_id == 6:  # LoginRequest
                    reply = LoginReply(user_id="u", session_id="s1", token="t1")
                    writer.write(
                        encode_frame(7, Flags.RESPONSE, frame.seq, reply.SerializeToString())
                    )
                    pushes = (
                        encode_frame(11, Flags.PUSH, seq, EchoReply(data=b"p").SerializeToString())
                        for seq in (1, 2, 3)
                    )
                    writer.write(b"".join(pushes))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.close()  # drop it: the client comes back with a Resume
                    return
                if frame.msg_id == 13:
                    resumes.append(ResumeRequest.FromString(frame.payload))
                    reply14 = ResumeReply(user_id="u", session_id="s1")
                    writer.write(
                        encode_frame(14, Flags.RESPONSE, frame.seq, reply14.SerializeToString())
                    )
                else:  # Echo
                    writer.write(encode_frame(11, Flags.RESPONSE, frame.seq, frame.payload))

    listener = await asyncio.start_server(peer, "127.0.0.1", 0)
    address = listener.sockets[0].getsockname()[:2]
    client = await AsyncClient.connect(*address, reconnect=FAST)
    try:
        await client.login("u", "p")
        await wait_for(lambda: client.reconnects == 1 and client.connected)
        echo = await client.call(EchoRequest(data=b"after"), EchoReply)
        assert echo.data == b"after"
        assert [(r.token, r.last_push_seq) for r in resumes] == [("t1", 3)]
        assert client.last_push_seq == 3 and client.session is not None
        assert client.session.token == "t1" and connections == 2
    finally:
        await client.close()
        listener.close()


# -- the blocking client ---------------------------------------------------------------


async def test_blocking_client_logs_in_refreshes_and_logs_out(start_server: StartServer) -> None:
    server = await start(start_server)

    def script() -> None:
        with Client(*server.address, registry()) as client:
            with pytest.raises(Unauthenticated):
                client.login("bob", "nope")
            reply = client.login("bob", "pw-b")
            assert client.session is not None and client.session.token == reply.token
            name = client.call(pb.NoteRequest(text="?"), pb.BlockingReply).thread_name
            assert name == f"bob/{reply.session_id}"
            assert client.refresh_token().token != reply.token
            client.logout()
            assert client.session is None
            with pytest.raises(Unauthenticated):
                client.call(pb.NoteRequest(text="?"), pb.BlockingReply)

    await asyncio.to_thread(script)


async def test_a_reconnect_callbacks_request_fails_fast_when_the_link_drops_again(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients, FAST)
    await client.login("alice", "pw-a")
    outcome: list[BaseException | None] = []
    first = asyncio.Event()

    async def callback(c: AsyncClient) -> None:
        if first.is_set():
            return
        first.set()
        await asyncio.sleep(0.3)  # the link drops meanwhile
        try:
            await c.ping(timeout=30)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    client.on_reconnect(callback)
    [session] = server.sessions.local_sessions("alice")
    assert session.conn is not None
    session.conn.transport.abort()
    await asyncio.wait_for(first.wait(), 10)
    await wait_for(lambda: bool(server.sessions.local_sessions("alice")))
    [session] = server.sessions.local_sessions("alice")
    assert session.conn is not None
    session.conn.transport.abort()  # during the callback
    await wait_for(lambda: bool(outcome), timeout=10)  # not after the ping's 30 s
    assert isinstance(outcome[0], ConnectionClosed)
    assert await client.ping(timeout=10) >= 0  # and the client reconnected again


async def test_close_leaves_no_task_running(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    first = await connect(server, clients)
    await first.login("alice", "pw-a")
    started = asyncio.Event()

    async def slow_lost(reason: BaseException) -> None:
        started.set()
        await asyncio.sleep(30)

    first.on_session_lost(slow_lost)
    second = await connect(server, clients)
    await second.login("alice", "pw-a")  # replaces the first: its session is lost
    await asyncio.wait_for(started.wait(), 10)
    await first.close()
    assert not first._callback_tasks or all(t.done() for t in first._callback_tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()
