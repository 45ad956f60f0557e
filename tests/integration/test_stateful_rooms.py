"""Authoritative rooms (server/stateful_rooms.py) on a real server with real SDK
clients: lifecycle hooks, seats that survive a dropped connection for the grace time,
a tick loop that never drifts or doubles, messages serialized with ticks, bounds, the
server's stop, and a reload that keeps one tick loop running the new code."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from client_sdk import AsyncClient, Overloaded, ServerError
from protocol.proto.system_pb2 import LoginRequest
from server import App, Server
from server.app import Kind
from server.auth import MemoryUsers
from server.errors import HandlerError
from server.stateful_rooms import (
    MAX_TICK_FAILURES,
    NOT_IN_ROOM,
    Seat,
    StatefulRoom,
    is_sync,
    room_message,
)
from tests.conftest import wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "a", "bob": "b"})


class Counter(StatefulRoom):
    tick_rate = 50
    reconnect_grace = 0.3

    def on_create(self, options: dict[str, Any]) -> None:
        self.ticks = 0
        self.events: list[tuple[Any, ...]] = []
        self.in_tick = False
        self.slow = options.get("slow", False)

    def on_join(self, seat: Seat, options: dict[str, Any]) -> None:
        if options.get("refuse"):
            raise HandlerError(120, "no place for you")
        self.events.append(("join", seat.user_id))

    def on_leave(self, seat: Seat, consented: bool) -> None:
        self.events.append(("leave", seat.user_id, consented))

    def on_reconnect(self, seat: Seat) -> None:
        self.events.append(("back", seat.user_id))

    async def on_tick(self, dt: float) -> None:
        self.ticks += 1
        if self.slow:
            self.in_tick = True
            await asyncio.sleep(0.005)
            self.in_tick = False

    def on_dispose(self) -> None:
        self.events.append(("dispose",))
        self.broadcast(pb.SleepReply(tag=999))

    @room_message(pb.SleepRequest)
    def state(self, seat: Seat, msg: pb.SleepRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=1 if self.in_tick else 0)


def game(cls: type[StatefulRoom] = Counter) -> App:
    app = App("game")
    app.room_type("counter", cls)
    return app


async def connect(server: Server, user: str = "alice") -> AsyncClient:
    client = await AsyncClient.connect(*server.address, registry=app_registry())
    await client.request(LoginRequest(user=user, password=USERS.users[user]))
    return client


async def test_ticks_run_at_their_rate_and_messages_never_see_half_a_tick(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    server = await start_server(game(), authenticator=USERS)
    rooms = server.stateful_rooms
    started = time.monotonic()
    room = await rooms.create("counter", "r1", {"slow": True})
    assert isinstance(room, Counter)
    client = await connect(server)
    opened.append(client)
    await rooms.join("r1", "alice")
    seen = []
    while room.ticks < 10:  # requests keep coming while the room ticks
        seen.append(await client.request(pb.SleepRequest()))
    assert all(reply.tag == 0 for reply in seen)  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    assert 0 < room.ticks <= elapsed * Counter.tick_rate + 1  # never faster than its rate
    assert rooms.stats.ticks >= room.ticks


async def test_a_seat_survives_a_dropped_connection_within_the_grace(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    server = await start_server(game(), authenticator=USERS)
    rooms = server.stateful_rooms
    room = await rooms.create("counter", "r1")
    assert isinstance(room, Counter)
    first = await connect(server)
    bob = await connect(server, "bob")
    opened.append(bob)
    await rooms.join("r1", "alice")
    await rooms.join("r1", "bob")
    await first.close()
    await wait_for(lambda: not room.seats["alice"].connected)
    again = await connect(server)
    opened.append(again)
    await wait_for(lambda: ("back", "alice") in room.events)
    assert room.seats["alice"].connected
    assert (await again.request(pb.SleepRequest())).tag == 0  # type: ignore[attr-defined]

    await again.close()
    await wait_for(lambda: ("leave", "alice", False) in room.events, timeout=3)
    assert "alice" not in room.seats and rooms.of_user("alice") == []
    await rooms.leave("r1", "bob")  # the last seat: the room goes
    assert room.events[-2:] == [("leave", "bob", True), ("dispose",)]
    assert rooms.get("r1") is None and room.disposed
    assert room._tick_task is not None and room._tick_task.done()


async def test_what_has_no_room_or_seat_is_refused(
    start_server: Any, opened: list[AsyncClient]
) -> None:
    server = await start_server(game(), authenticator=USERS)
    client = await connect(server)
    opened.append(client)
    with pytest.raises(ServerError) as refused:
        await client.request(pb.SleepRequest())
    assert refused.value.code == NOT_IN_ROOM
    assert "not in a counter room" in str(refused.value)
    rooms = server.stateful_rooms
    await rooms.create("counter", "r1")
    with pytest.raises(HandlerError, match="no place for you"):
        await rooms.join("r1", "alice", {"refuse": True})
    assert rooms.get("r1").seats == {}  # type: ignore[union-attr]
    with pytest.raises(HandlerError, match="exists already"):
        await rooms.create("counter", "r1")
    with pytest.raises(HandlerError, match="no room type"):
        await rooms.create("nope")


async def test_rooms_and_seats_are_bounded(start_server: Any) -> None:
    class Pair(Counter):
        max_seats = 1

    server = await start_server(game(Pair), authenticator=USERS, max_stateful_rooms=2)
    rooms = server.stateful_rooms
    await rooms.create("counter", "r1")
    await rooms.create("counter", "r2")
    with pytest.raises(HandlerError) as full:
        await rooms.create("counter", "r3")
    assert full.value.code == Overloaded.code
    await rooms.join("r1", "alice")
    with pytest.raises(HandlerError, match="full"):
        await rooms.join("r1", "bob")


async def test_a_late_tick_skips_what_it_missed_instead_of_running_it_twice(
    start_server: Any,
) -> None:
    class Stall(Counter):
        tick_rate = 100

        async def on_tick(self, dt: float) -> None:
            self.ticks += 1
            if self.ticks == 3:
                time.sleep(0.05)  # holds the loop five periods

    server = await start_server(game(Stall), authenticator=USERS)
    room = await server.stateful_rooms.create("counter", "r1")
    await wait_for(lambda: room.ticks >= 6)  # type: ignore[attr-defined]
    stats = server.stateful_rooms.stats
    assert stats.late >= 1 and stats.skipped >= 3


async def test_a_tick_that_keeps_failing_disposes_its_room(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Counter):
        tick_rate = 1000

        def on_tick(self, dt: float) -> None:  # type: ignore[override]
            raise RuntimeError("bug")

    server = await start_server(game(Broken), authenticator=USERS)
    room = await server.stateful_rooms.create("counter", "r1")
    await wait_for(lambda: room.disposed, timeout=10)
    assert server.stateful_rooms.stats.failures == MAX_TICK_FAILURES
    assert caplog.text.count("Traceback") == 1  # the first failure, then one summary
    assert f"on_tick failed {MAX_TICK_FAILURES} times in a row" in caplog.text


async def test_the_stop_disposes_rooms_while_players_can_still_hear(
    start_server: Any,
) -> None:
    server = await start_server(game(), authenticator=USERS)
    client = await connect(server)
    got: list[int] = []
    client.on_push(pb.SleepReply, lambda push: got.append(push.message.tag))
    room = await server.stateful_rooms.create("counter", "r1")
    await server.stateful_rooms.join("r1", "alice")
    await server.stop(timeout=2.0)
    assert room.disposed and room._tick_task is not None and room._tick_task.done()
    await wait_for(lambda: got == [999])
    await client.close()


async def test_a_reload_gives_live_rooms_the_new_class_and_keeps_one_tick_loop(
    start_server: Any,
) -> None:
    server = await start_server(game(), authenticator=USERS)
    room = await server.stateful_rooms.create("counter", "r1")
    await wait_for(lambda: room.ticks > 0)  # type: ignore[attr-defined]
    loop_task = room._tick_task

    class CounterV2(Counter):
        def on_tick(self, dt: float) -> None:  # type: ignore[override]
            self.ticks += 1000

    server.swap_apps(game(CounterV2))
    assert type(room) is CounterV2 and room._tick_task is loop_task
    before = room.ticks  # type: ignore[attr-defined]
    await wait_for(lambda: room.ticks >= before + 1000)  # type: ignore[attr-defined]
    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("tickwire-room-")]
    assert loops == [loop_task]

    with pytest.raises(ValueError, match="no room type 'counter'"):
        server.swap_apps(App("empty"))
    assert type(room) is CounterV2 and "counter" in server.stateful_rooms.types


async def test_the_metrics_show_rooms_and_their_ticks(start_server: Any) -> None:
    server = await start_server(game(), authenticator=USERS, metrics=True, metrics_port=0)
    assert server.metrics is not None
    room = await server.stateful_rooms.create("counter", "r1")
    await wait_for(lambda: room.ticks >= 3)  # type: ignore[attr-defined]
    text = server.metrics.respond("/metrics")[1].decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tickwire_") and " " in line
    }
    assert values["tickwire_stateful_rooms"] == 1
    assert values["tickwire_room_ticks_total"] >= 3
    assert values["tickwire_room_ticks_skipped_total"] == 0
    assert "tickwire_room_tick_lateness_p99_seconds" in values
    assert values['tickwire_pushes_total{delivery="reliable"}'] == 0
    assert "tickwire_pushes_conflated_total" in values


def test_a_room_type_that_never_awaits_gets_plain_handlers() -> None:
    class Plain(StatefulRoom):
        @room_message(pb.SleepRequest)
        def state(self, seat: Seat, msg: pb.SleepRequest) -> pb.SleepReply:
            return pb.SleepReply()

    assert is_sync(Plain) and not is_sync(Counter)  # Counter.on_tick awaits
    plain, awaited = App("a"), App("b")
    plain.room_type("plain", Plain)
    awaited.room_type("counter", Counter)
    assert plain.routes[pb.SleepRequest].kind is Kind.SYNC
    assert awaited.routes[pb.SleepRequest].kind is Kind.ASYNC
