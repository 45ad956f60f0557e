"""SDK defects a review reproduced, each pinned by a test: acknowledgements across a new
Login, a reconnect callback's request on a connection that dropped again, and the
blocking Client after close() and from its own callbacks."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings

from client_sdk import AsyncClient, Client, ConnectionClosed
from server.auth import MemoryUsers
from tests.conftest import StartServer, wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb
from tests.test_client_push import (
    FAST,
    USERS,
    collect,
    connect,
    push_app,
    start,
    tags,
)


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
    # Without the fix, PushAck(6) went out behind the Login and emptied bob's buffer.
    await wait_for(lambda: tags(got)[-3:] == [100, 101, 102])
    assert [p.seq for p in got[-3:]] == [1, 2, 3]


async def test_a_reconnect_callbacks_request_fails_fast_when_the_link_drops_again(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    client = await connect(server, clients, reconnect=FAST)
    await client.login("alice", "a")
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


async def test_close_leaves_no_task_running(
    start_server: StartServer, clients: list[AsyncClient]
) -> None:
    server = await start(start_server)
    first = await connect(server, clients)
    await first.login("alice", "a")
    started = asyncio.Event()

    async def slow_lost(reason: BaseException) -> None:
        started.set()
        await asyncio.sleep(30)

    first.on_session_lost(slow_lost)
    second = await connect(server, clients)
    await second.login("alice", "a")  # replaces the first: its session is lost
    await asyncio.wait_for(started.wait(), 10)
    await first.close()
    assert not first._callback_tasks or all(t.done() for t in first._callback_tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()
