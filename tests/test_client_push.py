"""The SDK's push side against a real server: each reliable push handed to the
application exactly once and in order (across a forced reconnect mid-burst too),
automatic batched acknowledgements (never one of an old session reaching a new one),
push gaps reported after a Resume, duplicates from a replay dropped, latest-value pushes
passed straight through, the blocking Client (its push callbacks included)."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import pytest

from client_sdk import AsyncClient, Client, ConnectionClosed, Push, PushGap, Reconnect
from protocol.proto.system_pb2 import LoginRequest
from server import App, Context, Server
from server.auth import MemoryUsers
from server.sessions import Session
from tests.conftest import StartServer, wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

pytestmark = pytest.mark.timeout(60)

USERS = {"alice": "a", "bob": "b"}
FAST = Reconnect(initial=0.02, maximum=0.2)


def push_app() -> App:
    """Registers the testapp messages (so the server can push SleepReply); pushes
    UnorderedSleepRequest latest-value, keyed by its tag."""
    app = App("pushes")

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=len(msg.text))

    app.latest_value(pb.UnorderedSleepRequest, key=lambda m: m.tag)
    return app


async def start(start_server: StartServer, **config: Any) -> Server:
    return await start_server(push_app(), authenticator=MemoryUsers(USERS), **config)


async def connect(server: Server, opened: list[AsyncClient], **options: Any) -> AsyncClient:
    client = await AsyncClient.connect(*server.address, registry=app_registry(), **options)
    opened.append(client)
    return client


def collect(client: AsyncClient) -> list[Push]:
    got: list[Push] = []
    client.on_push(pb.SleepReply, got.append)
    client.on_push(pb.UnorderedSleepRequest, got.append)
    return got


def tags(pushes: list[Push]) -> list[int]:
    return [p.message.tag for p in pushes]  # type: ignore[attr-defined]


def the_session(server: Server, user: str = "alice") -> Session:
    [session] = server.sessions.local_sessions(user)
    return session


def acks(server: Server) -> int:
    return server.route_stats()["system.PushAck"]["calls"]


async def test_exactly_once_in_order_across_a_forced_reconnect_in_the_middle_of_a_burst(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    # The buffer holds the whole burst: this test is about delivery, not about gaps.
    server = await start(start_server, push_buffer=4096)
    client = await connect(server, clients, reconnect=FAST)
    await client.login("alice", "a")
    got = collect(client)
    iterated: list[int] = []

    async def iterate() -> None:
        async for push in client.pushes():
            iterated.append(push.message.tag)  # type: ignore[attr-defined]

    reader = asyncio.create_task(iterate())
    await asyncio.sleep(0)
    session = the_session(server)
    total = 2000
    seen_at_abort = 0
    for n in range(1, total + 1):
        server.push("alice", pb.SleepReply(tag=n))
        if n == total // 4:
            await wait_for(lambda: len(got) >= total // 8)  # the client is receiving
        if n == total // 2:
            # Before the last 50 are even written: the replay after the Resume has to
            # bring at least those.
            seen_at_abort = client.last_push_seq
            assert session.conn is not None
            session.conn.transport.abort()
        if n % 50 == 0:
            await asyncio.sleep(0)  # let the burst reach the wire as it goes
    await wait_for(lambda: len(got) >= total and len(iterated) >= total, timeout=30)
    assert tags(got) == list(range(1, total + 1))
    assert [p.seq for p in got] == list(range(1, total + 1))
    assert iterated == list(range(1, total + 1))
    assert client.reconnects == 1 and not client.push_gap
    assert client.last_push_seq == total
    assert total // 8 <= seen_at_abort < total // 2
    # Acknowledged without user code: the server's buffer drains, in few PushAcks.
    await wait_for(lambda: not session.pushes.items)
    assert 1 <= acks(server) <= total // 20
    reader.cancel()


async def test_acks_are_automatic_batched_and_only_for_reliable_pushes(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)
    await client.login("alice", "a")
    got = collect(client)
    session = the_session(server)
    for n in range(1, 501):
        server.push("alice", pb.SleepReply(tag=n))
        if n % 25 == 0:
            await asyncio.sleep(0)
    await wait_for(lambda: len(got) == 500)
    await wait_for(lambda: not session.pushes.items)
    assert session.pushes.last_seq == 500
    assert 1 <= acks(server) <= 500 // 16  # one per batch, not one per push
    await wait_for(lambda: acks(server) == client.acks_sent)

    # Latest-value pushes (seq 0) are handed over as they come and never acknowledged.
    sent = client.acks_sent
    for tag in (1, 2, 3):
        server.push("alice", pb.UnorderedSleepRequest(tag=tag, ms=tag))
    await wait_for(lambda: len(got) == 503)
    assert [p.seq for p in got[500:]] == [0, 0, 0]
    await client.ping()
    assert client.last_push_seq == 500 and client.acks_sent == sent


async def test_an_ack_goes_out_once_the_delay_passes_and_none_without_a_login(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    # A LoginRequest sent with request() is a session the SDK does not know: its pushes
    # pass through unacknowledged (the application would ack them itself).
    raw = await connect(server, clients, ack_delay=0)
    await raw.request(LoginRequest(user="bob", password="b"))
    got_raw = collect(raw)
    # A few pushes (below ack_every): acknowledged by the timer.
    client = await connect(server, clients, ack_delay=0)
    await client.login("alice", "a")
    got = collect(client)
    for n in (1, 2, 3):
        server.push("alice", pb.SleepReply(tag=n))
        server.push("bob", pb.SleepReply(tag=n))
    await wait_for(lambda: len(got) == 3 and len(got_raw) == 3)
    session = the_session(server)
    await wait_for(lambda: not session.pushes.items)
    await raw.ping()
    await raw.ping()
    assert raw.acks_sent == 0 and len(the_session(server, "bob").pushes.items) == 3
    assert client.acks_sent >= 1


async def test_a_gap_beyond_the_buffer_is_reported_after_an_automatic_resume(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server, push_buffer=4)
    client = await connect(server, clients, reconnect=FAST)
    gaps: list[PushGap] = []
    resumed_at: list[int] = []
    client.on_push_gap(gaps.append)
    client.on_push_gap(lambda gap: resumed_at.append(len(got)))  # before the replay
    await client.login("alice", "a")
    got = collect(client)
    server.push("alice", pb.SleepReply(tag=1))
    server.push("alice", pb.SleepReply(tag=2))
    await wait_for(lambda: len(got) == 2)
    session = the_session(server)
    await wait_for(lambda: not session.pushes.items)  # acknowledged
    assert session.conn is not None
    session.conn.transport.abort()
    # In the same turn: the connection is gone before any of these is written, and the
    # 4-push buffer keeps only the last four of them.
    for n in range(3, 13):
        server.push("alice", pb.SleepReply(tag=n))
    await wait_for(lambda: client.reconnects == 1 and len(got) == 6)
    assert tags(got) == [1, 2, 9, 10, 11, 12]
    assert client.push_gap
    assert gaps == [PushGap(seen=2, last_push_seq=12)]
    assert resumed_at == [2]
    await wait_for(lambda: not session.pushes.items)
    # The next Resume without a gap clears the flag.
    assert session.conn is not None
    session.conn.transport.abort()
    await wait_for(lambda: client.reconnects == 2 and client.connected)
    assert not client.push_gap and len(gaps) == 1


async def test_duplicates_from_a_replay_are_dropped_and_counted(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    # No acknowledgement during the test, so the server still holds every push.
    client = await connect(server, clients, ack_delay=60, ack_every=100_000)
    await client.login("alice", "a")
    got = collect(client)
    for n in range(1, 11):
        server.push("alice", pb.SleepReply(tag=n))
    await wait_for(lambda: len(got) == 10)
    session = the_session(server)
    assert len(session.pushes.items) == 10
    assert client.session is not None
    # Claim to have seen only up to 4: the server replays 5..10, which the app had.
    reply = await client.resume(client.session.token, last_push_seq=4)
    assert not reply.push_gap and reply.last_push_seq == 10
    server.push("alice", pb.SleepReply(tag=11))
    await wait_for(lambda: len(got) == 11)
    assert tags(got) == list(range(1, 12))
    assert client.duplicate_pushes == 6 and client.last_push_seq == 11
    assert client.acks_sent == 0
    # A clean close acknowledges what the application got.
    await client.close()
    await wait_for(lambda: not session.pushes.items)


async def test_a_new_login_counts_pushes_from_one_again(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients)
    await client.login("alice", "a")
    got = collect(client)
    for n in (1, 2, 3):
        server.push("alice", pb.SleepReply(tag=n))
    await wait_for(lambda: len(got) == 3)
    await client.logout()
    for n in (4, 5):  # no session: the offline inbox, seq 1 and 2 of the next login
        server.push("alice", pb.SleepReply(tag=n))
    await server.flush_pushes()
    await client.login("alice", "a")
    await wait_for(lambda: len(got) == 5)
    assert [(p.seq, p.message.tag) for p in got[3:]] == [(1, 4), (2, 5)]  # type: ignore[attr-defined]
    assert client.duplicate_pushes == 0 and client.last_push_seq == 2
    session = the_session(server)
    await wait_for(lambda: not session.pushes.items)


async def test_blocking_client_gets_pushes_once_and_acknowledges_them(
    start_server: StartServer,
) -> None:
    server = await start(start_server)
    received: queue.Queue[Push] = queue.Queue()
    logged_in = asyncio.Event()
    loop = asyncio.get_running_loop()

    def script() -> tuple[list[int], int, int, bool]:
        with Client(*server.address, app_registry(), ack_delay=0) as client:
            client.on_push(pb.SleepReply, received.put)
            client.on_push_gap(lambda gap: None)
            client.login("alice", "a")
            loop.call_soon_threadsafe(logged_in.set)
            seen = [received.get(timeout=10).message.tag for _ in range(3)]  # type: ignore[attr-defined]
            return seen, client.last_push_seq, client.duplicate_pushes, client.push_gap

    job = asyncio.ensure_future(asyncio.to_thread(script))
    await asyncio.wait_for(logged_in.wait(), 10)
    session = the_session(server)
    for n in (7, 8, 9):
        server.push("alice", pb.SleepReply(tag=n))
    assert await asyncio.wait_for(job, 20) == ([7, 8, 9], 3, 0, False)
    await wait_for(lambda: not session.pushes.items)  # acknowledged


class SlowUsers(MemoryUsers):
    """MemoryUsers that takes `delay` seconds to answer once `slow` is set (a remote
    user database), so a push of the old session can arrive while a Login is in flight."""

    def __init__(self) -> None:
        super().__init__(USERS)
        self.slow = False

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        if self.slow:
            await asyncio.sleep(0.2)
        return await super().authenticate(user, password, device)


async def test_an_old_sessions_ack_never_reaches_the_new_session(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    auth = SlowUsers()
    server = await start_server(push_app(), authenticator=auth)
    for tag in (100, 101, 102):  # bob's offline inbox
        server.push("bob", pb.SleepReply(tag=tag))
    await server.flush_pushes()
    client = await connect(server, clients, ack_delay=0.01)
    got = collect(client)
    await client.login("alice", "a")
    for tag in range(5):
        server.push("alice", pb.SleepReply(tag=tag))
    await wait_for(lambda: len(got) == 5)
    auth.slow = True
    login = asyncio.ensure_future(client.login("bob", "b"))
    await asyncio.sleep(0.05)
    server.push("alice", pb.SleepReply(tag=5))  # alice's sixth, during bob's login
    await login
    # A PushAck(6) sent behind the Login would apply to bob's session and empty its buffer.
    await wait_for(lambda: tags(got)[-3:] == [100, 101, 102])
    assert [p.seq for p in got[-3:]] == [1, 2, 3]


async def test_blocking_client_after_close_and_from_its_own_callbacks(
    start_server: StartServer,
) -> None:
    server = await start(start_server)
    host, port = server.address

    def scenario() -> tuple[list[str], str]:
        seen: list[str] = []
        with Client(host, port, app_registry()) as client:
            client.login("alice", "a")
            done = threading.Event()

            def on_push(push: object) -> None:
                try:
                    client.ping(timeout=1)
                    seen.append("no error")
                except RuntimeError as exc:
                    seen.append(str(exc))
                done.set()

            client.on_push(pb.SleepReply, on_push)
            assert done.wait(20)
        closed = client.wait_closed(1)
        errors = []
        for call in (lambda: client.ping(), lambda: client.notify(pb.NoteRequest(text="x"))):
            try:
                call()
            except ConnectionClosed as exc:
                errors.append(type(exc).__name__)
        return seen + errors, type(closed).__name__

    # The push arrives while the client's thread runs the callback.
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, scenario)
    await wait_for(lambda: bool(server.sessions.local_sessions("alice")))
    server.push("alice", pb.SleepReply(tag=1))
    seen, closed = await asyncio.wait_for(future, 30)
    assert seen[0].startswith("a blocking Client method was called from one of its callbacks")
    assert seen[1:] == ["ConnectionClosed", "ConnectionClosed"]
    assert closed == "ConnectionClosed"
