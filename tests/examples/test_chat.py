"""The example chat service (examples/chat) on real servers, with real SDK clients, and
as `tickwire serve` runs it by default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient, Push
from client_sdk.errors import RateLimited, ServerError, Unauthenticated, UnknownMessage
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import (
    JoinReply,
    JoinRequest,
    LeaveReply,
    LeaveRequest,
    Line,
    MemberJoined,
    MemberLeft,
    SayReply,
    SayRequest,
)
from examples.chat.service import (
    HISTORY,
    JOIN_BURST,
    MAX_TEXT,
    SAY_BURST,
    ChatError,
    make_app,
)
from protocol.errors import ErrorCode
from protocol.registry import MessageRegistry, system_registry
from server import Server, ServerConfig
from server.auth import MemoryUsers
from tests.conftest import StartNode, StartServer, wait_for
from tests.serveproc import ROOT, server_log, spawn_serve

PASSWORDS = {"alice": "a", "bob": "b", "carol": "c"}
USERS = MemoryUsers(PASSWORDS)


def chat_registry() -> MessageRegistry:
    return system_registry([chat_pb2])


Connect = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def clients() -> AsyncIterator[Connect]:
    opened: list[AsyncClient] = []

    async def connect(server: Server | tuple[str, int], user: str | None = None) -> AsyncClient:
        address = server.address if isinstance(server, Server) else server
        client = await AsyncClient.connect(*address, registry=chat_registry())
        opened.append(client)
        if user is not None:
            await client.login(user, PASSWORDS[user])
        return client

    yield connect
    for client in opened:
        await client.close()


class Inbox:
    """Every chat push one client got, in arrival order."""

    def __init__(self, client: AsyncClient) -> None:
        self.pushes: list[Push] = []
        for kind in (Line, MemberJoined, MemberLeft):
            client.on_push(kind, self.pushes.append)

    def lines(self) -> list[tuple[str, str, str]]:
        return [
            (p.message.room, p.message.user, p.message.text)  # type: ignore[attr-defined]
            for p in self.pushes
            if isinstance(p.message, Line)
        ]

    def of(self, kind: type[Any]) -> list[Any]:
        return [p.message for p in self.pushes if isinstance(p.message, kind)]


async def join(client: AsyncClient, room: str) -> JoinReply:
    return await client.call(JoinRequest(room=room), JoinReply)


async def say(client: AsyncClient, room: str, text: str) -> SayReply:
    return await client.call(SayRequest(room=room, text=text), SayReply)


async def test_a_line_is_pushed_to_every_member_the_sayer_included(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob, carol = [await clients(server, u) for u in ("alice", "bob", "carol")]
    got_alice, got_bob, got_carol = Inbox(alice), Inbox(bob), Inbox(carol)
    await join(alice, "lobby")
    reply = await join(bob, "lobby")
    assert reply.room == "lobby" and list(reply.members) == ["alice", "bob"]
    assert list(reply.history) == []
    await join(carol, "elsewhere")

    await say(alice, "lobby", "hi bob")
    want = [("lobby", "alice", "hi bob")]
    await wait_for(lambda: got_bob.lines() == want and got_alice.lines() == want)
    [line] = got_bob.of(Line)
    assert line.time_ms > 0
    assert [(m.room, m.user) for m in got_alice.of(MemberJoined)] == [("lobby", "bob")]
    assert got_bob.of(MemberJoined) == []  # the joiner learns the members from JoinReply
    await say(carol, "elsewhere", "marker")
    await wait_for(lambda: got_carol.lines() == [("elsewhere", "carol", "marker")])
    assert got_carol.of(Line)[0].room == "elsewhere" and len(got_bob.pushes) == 1


async def test_the_sayers_own_line_comes_ahead_of_the_say_reply(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice = await clients(server, "alice")
    got = Inbox(alice)
    await join(alice, "lobby")
    await say(alice, "lobby", "first")
    assert got.lines() == [("lobby", "alice", "first")]


async def test_join_returns_the_last_n_lines_in_order(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(history=3), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    await join(alice, "lobby")
    for n in range(1, 8):
        await say(alice, "lobby", f"line {n}")
    reply = await join(bob, "lobby")
    assert [(h.user, h.text) for h in reply.history] == [
        ("alice", "line 5"),
        ("alice", "line 6"),
        ("alice", "line 7"),
    ]
    times = [h.time_ms for h in reply.history]
    assert times == sorted(times) and all(h.room == "lobby" for h in reply.history)
    # Rooms keep separate histories; joining again answers the same way.
    assert list((await join(bob, "quiet")).history) == []
    assert [h.text for h in (await join(alice, "lobby")).history] == ["line 5", "line 6", "line 7"]


async def test_the_default_history_is_fifty_lines(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(say_rate=None), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    await join(alice, "lobby")
    for n in range(HISTORY + 5):
        await say(alice, "lobby", str(n))
    reply = await join(bob, "lobby")
    assert [h.text for h in reply.history] == [str(n) for n in range(5, HISTORY + 5)]


async def test_history_zero_keeps_nothing(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(history=0), authenticator=USERS)
    alice = await clients(server, "alice")
    await join(alice, "lobby")
    await say(alice, "lobby", "gone")
    assert list((await join(alice, "lobby")).history) == []
    assert server.store is not None and await server.store.scan_prefix("app:chat:") == []


async def test_leave_stops_delivery(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    got_alice, got_bob = Inbox(alice), Inbox(bob)
    for client in (alice, bob):
        await join(client, "lobby")
        await join(client, "side")
    await client_leaves(bob, "lobby")
    await wait_for(lambda: len(got_alice.of(MemberLeft)) == 1)
    assert [(m.room, m.user) for m in got_alice.of(MemberLeft)] == [("lobby", "bob")]

    await say(alice, "lobby", "bob cannot hear this")
    await say(alice, "side", "but this")
    # Pushes arrive in order: had the lobby line reached bob, it would be here first.
    await wait_for(lambda: len(got_bob.lines()) == 1)
    assert got_bob.lines() == [("side", "alice", "but this")]
    assert list((await join(alice, "lobby")).members) == ["alice"]
    # Saying in the room just left is refused like any room not joined.
    with pytest.raises(ServerError) as info:
        await say(bob, "lobby", "hello?")
    assert info.value.code == ChatError.NOT_IN_ROOM


async def client_leaves(client: AsyncClient, room: str) -> None:
    assert isinstance(await client.call(LeaveRequest(room=room), LeaveReply), LeaveReply)


async def test_member_left_only_when_the_users_last_session_leaves(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS, duplicate_login="allow")
    phone, laptop, bob = [await clients(server, u) for u in ("alice", "alice", "bob")]
    got_bob = Inbox(bob)
    await join(bob, "lobby")
    await join(phone, "lobby")
    await join(laptop, "lobby")  # alice is there already: no second MemberJoined
    await client_leaves(phone, "lobby")
    await client_leaves(laptop, "lobby")
    await say(bob, "lobby", "marker")
    await wait_for(lambda: len(got_bob.lines()) == 1)
    assert [type(p.message).__name__ for p in got_bob.pushes] == [
        "MemberJoined",
        "MemberLeft",
        "Line",
    ]


async def test_member_left_when_a_session_ends_in_the_room(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    got_alice = Inbox(alice)
    await join(alice, "lobby")
    await join(bob, "lobby")
    await bob.logout()  # no LeaveRequest: the session ends in the room
    await wait_for(lambda: len(got_alice.of(MemberLeft)) == 1)
    assert [(m.room, m.user) for m in got_alice.of(MemberLeft)] == [("lobby", "bob")]
    assert list((await join(alice, "lobby")).members) == ["alice"]


async def test_a_line_too_long_is_refused(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    got_bob = Inbox(bob)
    await join(alice, "lobby")
    await join(bob, "lobby")
    with pytest.raises(ServerError) as info:
        await say(alice, "lobby", "x" * (MAX_TEXT + 1))
    assert info.value.code == ChatError.LINE_TOO_LONG == 100
    assert "line too long" in info.value.message and str(MAX_TEXT) in info.value.message
    # Characters, not bytes: the longest line of 3-byte characters still goes.
    await say(alice, "lobby", "€" * MAX_TEXT)
    await wait_for(lambda: len(got_bob.lines()) == 1)
    assert got_bob.lines()[0][2] == "€" * MAX_TEXT
    assert [h.text for h in (await join(bob, "lobby")).history] == ["€" * MAX_TEXT]


async def test_saying_in_a_room_not_joined_is_refused(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    got_bob = Inbox(bob)
    await join(bob, "lobby")
    with pytest.raises(ServerError) as info:
        await say(alice, "lobby", "let me in")
    assert info.value.code == ChatError.NOT_IN_ROOM
    assert "not in room 'lobby'" in info.value.message and "JoinRequest" in info.value.message
    with pytest.raises(ServerError) as info:
        await client_leaves(alice, "lobby")
    assert info.value.code == ChatError.NOT_IN_ROOM
    # Nothing reached the room, and the connection is still fine.
    await join(alice, "lobby")
    await say(alice, "lobby", "now I'm in")
    await wait_for(lambda: len(got_bob.lines()) == 1)
    assert got_bob.lines() == [("lobby", "alice", "now I'm in")]


@pytest.mark.parametrize("room", ["", "r" * 65, "tab\there"])
async def test_a_bad_room_name_is_refused(
    start_server: StartServer, clients: Connect, room: str
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice = await clients(server, "alice")
    with pytest.raises(ServerError) as info:
        await join(alice, room)
    assert info.value.code == ChatError.BAD_ROOM
    assert server.pusher.rooms == {}


async def test_an_empty_line_is_refused(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice = await clients(server, "alice")
    await join(alice, "lobby")
    for text in ("", "   \n"):
        with pytest.raises(ServerError) as info:
            await say(alice, "lobby", text)
        assert info.value.code == ChatError.EMPTY_LINE


async def test_chat_needs_a_login(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    anonymous = await clients(server)
    with pytest.raises(Unauthenticated):
        await join(anonymous, "lobby")
    assert server.pusher.rooms == {}


async def test_a_session_that_ends_leaves_its_rooms(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await bob.logout()
    await wait_for(lambda: server.room("lobby").user_ids() == {"alice"})
    assert list((await join(alice, "lobby")).members) == ["alice"]


async def test_history_survives_a_restart_with_a_snapshot(tmp_path: Path, clients: Connect) -> None:
    config = ServerConfig(
        host="127.0.0.1", port=0, store_snapshot_path=str(tmp_path / "store.snap")
    )
    first = Server(make_app(), config=config, authenticator=USERS)
    await first.start()
    try:
        alice = await clients(first, "alice")
        await join(alice, "lobby")
        await say(alice, "lobby", "still here after the restart")
    finally:
        await first.stop(timeout=1)  # writes the final snapshot
    second = Server(make_app(), config=config, authenticator=USERS)
    await second.start()
    try:
        bob = await clients(second, "bob")
        reply = await join(bob, "lobby")
        assert [(h.user, h.text) for h in reply.history] == [
            ("alice", "still here after the restart")
        ]
    finally:
        await second.stop(timeout=1)


async def test_two_nodes_share_the_history_through_redis(redis_url: str, clients: Connect) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, store="redis", redis_url=redis_url)
    nodes = [Server(make_app(history=2), config=config, authenticator=USERS) for _ in range(2)]
    for node in nodes:
        await node.start()
    try:
        alice = await clients(nodes[0], "alice")
        await join(alice, "lobby")
        for text in ("one", "two", "three"):
            await say(alice, "lobby", text)
        bob = await clients(nodes[1], "bob")
        assert [h.text for h in (await join(bob, "lobby")).history] == ["two", "three"]
    finally:
        for node in nodes:
            await node.stop(timeout=1)


async def test_members_are_listed_and_announced_across_the_nodes_of_a_cluster(
    start_node: StartNode, clients: Connect
) -> None:
    a = await start_node(make_app(history=0), node_id="a", authenticator=USERS)
    b = await start_node(make_app(history=0), node_id="b", authenticator=USERS)
    await wait_for(lambda: all(n.cluster is not None and len(n.cluster.live) == 2 for n in (a, b)))
    alice, carol = await clients(a, "alice"), await clients(a, "carol")
    bob = await clients(b, "bob")
    got_alice = Inbox(alice)
    assert list((await join(alice, "lobby")).members) == ["alice"]
    assert a.pusher.cluster_rooms is not None
    await a.pusher.cluster_rooms.settled()

    # bob, on the other node, sees alice listed; alice hears that bob joined.
    assert list((await join(bob, "lobby")).members) == ["alice", "bob"]
    await wait_for(
        lambda: [(m.room, m.user) for m in got_alice.of(MemberJoined)] == [("lobby", "bob")]
    )
    assert list((await join(carol, "lobby")).members) == ["alice", "bob", "carol"]

    # A leave on b, then a session ending on b: alice on a hears both.
    await client_leaves(bob, "lobby")
    await wait_for(lambda: len(got_alice.of(MemberLeft)) == 1)
    assert list((await join(bob, "lobby")).members) == ["alice", "bob", "carol"]
    await bob.logout()
    await wait_for(lambda: len(got_alice.of(MemberLeft)) == 2)
    assert [(m.room, m.user) for m in got_alice.of(MemberLeft)] == [("lobby", "bob")] * 2
    assert list((await join(alice, "lobby")).members) == ["alice", "carol"]


def test_make_app_refuses_nonsense_limits() -> None:
    for kwargs in ({"history": -1}, {"max_text": 0}, {"history_ttl": 0.0}):
        with pytest.raises(ValueError):
            make_app(**kwargs)


# -- `tickwire serve` ------------------------------------------------------------------

DEMO_USERS = f"users_file={ROOT / 'examples' / 'demo-users.txt'}"


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    return await server_log(proc)


async def test_tickwire_serve_runs_chat_by_default(clients: Connect) -> None:
    """What `make run` serves, with the demo users: two clients, one push."""
    proc, address = await spawn_serve("--set", DEMO_USERS)
    try:
        alice, bob = await clients(address), await clients(address)
        await alice.login("alice", "demo-alice")
        await bob.login("bob", "demo-bob")
        got_bob = Inbox(bob)
        await join(alice, "lobby")
        assert list((await join(bob, "lobby")).members) == ["alice", "bob"]
        await say(alice, "lobby", "hello from alice")
        await wait_for(lambda: got_bob.lines() == [("lobby", "alice", "hello from alice")])
        schema = await bob.describe()
        assert {"chat.Line", "chat.JoinRequest", "system.Ping"} <= set(schema.table().values())
    finally:
        log = await stop(proc)
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("args", "other"),
    [
        (["--no-chat"], None),
        # --app replaces the default: that app, and no chat.
        (["--app", "tests.integration.testapp:make_app"], "testapp.SleepRequest"),
    ],
    ids=["no-chat", "app"],
)
async def test_tickwire_serve_without_chat(
    clients: Connect, args: list[str], other: str | None
) -> None:
    proc, address = await spawn_serve("--set", DEMO_USERS, *args, cwd=str(ROOT))
    try:
        alice = await clients(address, None)
        await alice.login("alice", "demo-alice")
        with pytest.raises(UnknownMessage) as info:
            await join(alice, "lobby")
        assert info.value.code == ErrorCode.UNKNOWN_MESSAGE
        names = set((await alice.describe()).table().values())
        assert "chat.Line" not in names and "system.Ping" in names
        if other is not None:
            assert other in names
    finally:
        await stop(proc)


async def test_a_users_lines_are_rate_limited_and_a_refused_one_goes_nowhere(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(make_app(say_rate="1/h"), authenticator=USERS)
    alice, bob = await clients(server, "alice"), await clients(server, "bob")
    got_bob = Inbox(bob)
    await join(alice, "lobby")
    await join(bob, "lobby")
    for n in range(SAY_BURST):
        await say(alice, "lobby", f"line {n}")
    with pytest.raises(RateLimited) as info:
        await say(alice, "lobby", "one too many")
    assert info.value.retry_after is not None and info.value.retry_after > 0
    # Per user: bob still speaks, and nobody heard the refused line.
    await say(bob, "lobby", "marker")
    await wait_for(lambda: any(text == "marker" for _, _, text in got_bob.lines()))
    assert "one too many" not in [text for _, _, text in got_bob.lines()]
    history = [h.text for h in (await join(bob, "lobby")).history]
    assert "one too many" not in history and len(history) == SAY_BURST + 1


async def test_joins_are_rate_limited_per_user(start_server: StartServer, clients: Connect) -> None:
    server = await start_server(make_app(join_rate="1/h"), authenticator=USERS)
    alice = await clients(server, "alice")
    for n in range(JOIN_BURST):
        await join(alice, f"room{n}")
    with pytest.raises(RateLimited):
        await join(alice, "one more")
