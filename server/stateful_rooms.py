"""Authoritative rooms: a room type with its own state, seats, lifecycle and tick loop
(docs/server.md, "Authoritative rooms"), as Colyseus rooms or Nakama matches are.

A pub/sub room (server/push.py) is a set of sessions a broadcast goes to; an
authoritative room is a piece of the application that owns state: a match, a table, an
auction. The server runs it:

- **Lifecycle.** ``on_create(options)`` when made, ``on_join(seat, options)`` for each
  player (raise HandlerError to refuse), ``on_leave(seat, consented)``,
  ``on_reconnect(seat)``, ``on_dispose()`` at the end: when the last seat leaves
  (``auto_dispose``), on ``dispose()``, or at the server's stop. Hooks may be async.
- **Seats are users**, not connections: a player whose connection drops keeps the seat
  for ``reconnect_grace`` seconds, and a login or Resume of the same user within it gets
  ``on_reconnect``; after it, ``on_leave(seat, consented=False)``.
- **Ticks.** With ``tick_rate`` (Hz) a loop calls ``on_tick(dt)`` on a schedule fixed
  from the room's start, so it never drifts: a late tick is late against its own due
  time, and a tick more than a period late skips the ticks it missed (``dt`` covers
  them) instead of running them back to back. Late and skipped ticks are counted
  (``tickwire_room_ticks_late_total``, ``..._skipped_total``).
- **Serialized.** The room's messages (methods marked ``@room_message(Type)``), its
  ticks and its hooks run one at a time under the room's lock, so a handler never sees
  a tick half done, even when either awaits.
- **Bounded.** ``max_rooms`` rooms per server, ``max_seats`` per room; a tick body that
  keeps failing disposes its room after ``MAX_TICK_FAILURES`` in a row.
- **A reload** gives every live room the new module's class of the same name (its state
  is its attributes, kept), so the one tick loop runs the new code: never two
  generations. A reload whose apps lack a live room's type is refused.
- **In a cluster** a room whose messages name it (``room_of=``) is an owned key
  (``room:<id>``): its messages run on the key's owner, where it must be created
  (docs/scaling.md, "Owned keys").
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from google.protobuf.message import Message
from hdrh.histogram import HdrHistogram

from protocol.errors import ErrorCode
from server.errors import HandlerError

if TYPE_CHECKING:
    from server.app import Context
    from server.server import Server
    from server.sessions import EndReason, Session

log = logging.getLogger("tickwire.rooms")

#: Consecutive failed ticks after which a room is disposed (its loop would only log).
MAX_TICK_FAILURES = 100
#: A tick later than this fraction of its period counts as late.
LATE_FRACTION = 0.25
#: The application error code of a message for a room that does not exist or has no
#: seat for the sender (a room type may set its own).
NOT_IN_ROOM = 404

RoomMethod = Callable[..., Any]


#: The hooks a room type may override.
HOOKS = ("on_create", "on_join", "on_leave", "on_reconnect", "on_tick", "on_dispose")


def is_sync(cls: type[StatefulRoom]) -> bool:
    """Whether no hook and no message method of the room type is a coroutine function:
    such a room's messages run inline (the read fast path's plain handlers) and its ticks
    take no lock."""
    found = cls.__dict__.get("_tickwire_sync")
    if found is None:
        methods = [getattr(cls, name) for name in HOOKS]
        methods += [getattr(cls, name) for name in StatefulRooms.messages_of(cls).values()]
        found = not any(inspect.iscoroutinefunction(method) for method in methods)
        cls._tickwire_sync = found  # type: ignore[attr-defined]
    return bool(found)


def room_message(message_type: type[Message]) -> Callable[[RoomMethod], RoomMethod]:
    """Mark a room method as the handler of `message_type`: ``(self, seat, msg)``,
    returning the reply (or None); it runs under the room's lock."""

    def mark(fn: RoomMethod) -> RoomMethod:
        fn.__room_message__ = message_type  # type: ignore[attr-defined]
        return fn

    return mark


class Seat:
    """A user's place in a room; `data` is the room's to use."""

    __slots__ = ("away_since", "data", "index", "user_id")

    def __init__(self, user_id: str, index: int) -> None:
        self.user_id = user_id
        self.index = index
        #: Monotonic time the user's last connection here dropped; 0 while connected.
        self.away_since = 0.0
        self.data: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        return not self.away_since

    def __repr__(self) -> str:
        return f"<Seat {self.index} {self.user_id!r}{'' if self.connected else ' away'}>"


class StatefulRoom:
    """Subclass it; the class attributes are the room type's settings."""

    #: Ticks per second; None: no tick loop.
    tick_rate: ClassVar[float | None] = None
    max_seats: ClassVar[int] = 8
    #: Seconds a seat waits for its user to come back after the connection dropped.
    reconnect_grace: ClassVar[float] = 10.0
    #: Dispose when the last seat leaves.
    auto_dispose: ClassVar[bool] = True
    #: The error code of a message for this room type that finds no room or no seat.
    not_in_room_code: ClassVar[int] = NOT_IN_ROOM

    def __init__(self, manager: StatefulRooms, type_name: str, room_id: str) -> None:
        self.manager = manager
        self.server: Server = manager.server
        self.type_name = type_name
        self.room_id = room_id
        self.seats: dict[str, Seat] = {}
        self.disposed = False
        self.lock = asyncio.Lock()
        self._seat_numbers = itertools.count()
        self._tick_task: asyncio.Task[None] | None = None
        self._grace: dict[str, asyncio.TimerHandle] = {}

    # -- hooks (override) ------------------------------------------------------------

    def on_create(self, options: dict[str, Any]) -> Awaitable[None] | None:
        return None

    def on_join(self, seat: Seat, options: dict[str, Any]) -> Awaitable[None] | None:
        return None

    def on_leave(self, seat: Seat, consented: bool) -> Awaitable[None] | None:
        return None

    def on_reconnect(self, seat: Seat) -> Awaitable[None] | None:
        return None

    def on_tick(self, dt: float) -> Awaitable[None] | None:
        return None

    def on_dispose(self) -> Awaitable[None] | None:
        return None

    # -- what a room does ------------------------------------------------------------

    def send(self, seat: Seat | str, message: Message) -> int:
        """Push `message` to one seat's user (on any node)."""
        user = seat if isinstance(seat, str) else seat.user_id
        return self.server.push(user, message)

    def broadcast(self, message: Message, *, exclude: Seat | None = None) -> int:
        """Push `message` to every seat's user, encoded once."""
        users = [u for u, s in self.seats.items() if s is not exclude]
        return self.server.multicast(users, message) if users else 0

    def dispose(self) -> None:
        """End the room (from a hook, a message or a tick): it runs on_dispose and goes."""
        if not self.disposed:
            self.manager._spawn(self.manager.dispose(self.room_id))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.room_id} seats={len(self.seats)}>"


async def _call(result: Awaitable[Any] | Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result


class TickStats:
    """The tick loops' figures for /metrics and the bench."""

    def __init__(self) -> None:
        self.ticks = 0
        self.late = 0
        self.skipped = 0
        self.failures = 0
        #: Microseconds each tick started after its due time.
        self.lateness_us = HdrHistogram(1, 60_000_000, 2)


class StatefulRooms:
    """The server's authoritative rooms (``server.rooms_stateful``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        #: Room types by name, from the apps in use (a reload replaces them).
        self.types: dict[str, type[StatefulRoom]] = {}
        self.rooms: dict[str, StatefulRoom] = {}
        #: Rooms by the user seated in them.
        self._by_user: dict[str, set[str]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = TickStats()
        self.created = 0
        self.disposed = 0
        server.sessions.on_connected(self._connected)
        server.sessions.on_disconnected(self._disconnected)

    @property
    def max_rooms(self) -> int:
        return self.server.config.max_stateful_rooms

    # -- rooms -----------------------------------------------------------------------

    async def create(
        self, type_name: str, room_id: str | None = None, options: dict[str, Any] | None = None
    ) -> StatefulRoom:
        """Make a room of `type_name` (its id: `room_id`, or a new one) and run its
        on_create. HandlerError: an unknown type, a taken id, max_rooms reached."""
        cls = self.types.get(type_name)
        if cls is None:
            raise HandlerError(ErrorCode.DECODE_ERROR, f"no room type {type_name!r}")
        if len(self.rooms) >= self.max_rooms:
            raise HandlerError(
                ErrorCode.OVERLOADED, f"this node runs {self.max_rooms} rooms already"
            )
        if room_id is None:
            room_id = f"{self.server.node_id}-{next(self._ids)}"
        if room_id in self.rooms:
            raise HandlerError(cls.not_in_room_code, f"room {room_id!r} exists already")
        room = cls(self, type_name, room_id)
        self.rooms[room_id] = room
        try:
            async with room.lock:
                await _call(room.on_create(options or {}))
        except BaseException:
            del self.rooms[room_id]
            room.disposed = True
            raise
        self.created += 1
        if cls.tick_rate:
            room._tick_task = asyncio.get_running_loop().create_task(
                self._tick_loop(room), name=f"tickwire-room-{room_id}"
            )
        return room

    def get(self, room_id: str) -> StatefulRoom | None:
        return self.rooms.get(room_id)

    def of_user(self, user_id: str) -> list[StatefulRoom]:
        """The rooms `user_id` has a seat in, here."""
        return [self.rooms[r] for r in self._by_user.get(user_id, ()) if r in self.rooms]

    async def join(self, room_id: str, user_id: str, options: dict[str, Any] | None = None) -> Seat:
        """Seat `user_id` in the room (the seat it has, if it has one). HandlerError when
        the room is gone or full, or its on_join refuses."""
        room = self._room(room_id)
        async with room.lock:
            seat = room.seats.get(user_id)
            if seat is not None:
                return seat
            if len(room.seats) >= room.max_seats:
                raise HandlerError(
                    room.not_in_room_code, f"room {room_id} is full ({room.max_seats} seats)"
                )
            seat = Seat(user_id, next(room._seat_numbers))
            room.seats[user_id] = seat
            try:
                await _call(room.on_join(seat, options or {}))
            except BaseException:
                del room.seats[user_id]
                raise
            self._by_user.setdefault(user_id, set()).add(room_id)
            if not self.server.sessions.local_sessions(user_id) and self._is_local(user_id):
                self._away(room, seat)
            return seat

    async def leave(self, room_id: str, user_id: str, *, consented: bool = True) -> bool:
        room = self.rooms.get(room_id)
        if room is None:
            return False
        async with room.lock:
            seat = room.seats.pop(user_id, None)
            if seat is None:
                return False
            self._unseat(room, user_id)
            await _call(room.on_leave(seat, consented))
            empty = not room.seats
        if empty and room.auto_dispose:
            await self.dispose(room_id)
        return True

    async def dispose(self, room_id: str) -> bool:
        room = self.rooms.pop(room_id, None)
        if room is None:
            return False
        room.disposed = True
        task = room._tick_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for handle in room._grace.values():
            handle.cancel()
        room._grace.clear()
        for user_id in list(room.seats):
            self._unseat(room, user_id)
        try:
            async with room.lock:
                await _call(room.on_dispose())
        except Exception:
            log.exception("room %s: on_dispose failed", room_id)
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        self.disposed += 1
        return True

    async def stop(self) -> None:
        """Dispose every room (the server's stop): their on_dispose runs while pushes can
        still go out."""
        for room_id in list(self.rooms):
            await self.dispose(room_id)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _room(self, room_id: str) -> StatefulRoom:
        room = self.rooms.get(room_id)
        if room is None:
            raise HandlerError(NOT_IN_ROOM, f"no room {room_id!r} here")
        return room

    def _unseat(self, room: StatefulRoom, user_id: str) -> None:
        handle = room._grace.pop(user_id, None)
        if handle is not None:
            handle.cancel()
        rooms = self._by_user.get(user_id)
        if rooms is not None:
            rooms.discard(room.room_id)
            if not rooms:
                del self._by_user[user_id]

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("room task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- ticks -----------------------------------------------------------------------

    async def _tick_loop(self, room: StatefulRoom) -> None:
        rate = type(room).tick_rate
        assert rate
        period = 1.0 / rate
        loop = asyncio.get_running_loop()
        stats = self.stats
        start = loop.time()
        number = 0
        last = start
        failures = 0
        while not room.disposed:
            number += 1
            due = start + number * period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            late = now - due
            if late > period:
                missed = int(late // period)
                number += missed
                stats.skipped += missed
            if late > period * LATE_FRACTION:
                stats.late += 1
            stats.lateness_us.record_value(max(1, int(late * 1e6)))
            if room.disposed:
                return
            dt, last = now - last, now
            stats.ticks += 1
            try:
                if is_sync(type(room)):
                    # Nothing of a sync room awaits: no lock to take, nothing to interleave.
                    room.on_tick(dt)
                else:
                    async with room.lock:
                        if room.disposed:
                            return
                        await _call(room.on_tick(dt))
                failures = 0
            except Exception:
                failures += 1
                stats.failures += 1
                if failures == 1:
                    log.exception("room %s: on_tick failed", room.room_id)
                if failures >= MAX_TICK_FAILURES:
                    log.error(
                        "room %s: on_tick failed %d times in a row; disposing it",
                        room.room_id,
                        failures,
                    )
                    self._spawn(self.dispose(room.room_id))
                    return

    # -- presence ----------------------------------------------------------------------

    def _is_local(self, user_id: str) -> bool:
        """Whether this node would see the user's connections come and go: always on
        one node; in a cluster only for users with a session held here."""
        return self.server.cluster is None or bool(self.server.sessions.reachable(user_id))

    def _connected(self, session: Session) -> None:
        for room in self.of_user(session.user_id):
            seat = room.seats.get(session.user_id)
            if seat is None or seat.connected:
                continue
            seat.away_since = 0.0
            handle = room._grace.pop(session.user_id, None)
            if handle is not None:
                handle.cancel()
            self._spawn(self._locked(room, room.on_reconnect, seat))

    def _disconnected(self, session: Session, reason: EndReason) -> None:
        user_id = session.user_id
        if user_id not in self._by_user:
            return  # seated nowhere: every disconnect of a server without rooms ends here
        if any(s.conn is not None for s in self.server.sessions.local_sessions(user_id)):
            return  # another connection of the user is still here
        for room in self.of_user(user_id):
            seat = room.seats.get(user_id)
            if seat is not None and seat.connected:
                self._away(room, seat)

    def _away(self, room: StatefulRoom, seat: Seat) -> None:
        seat.away_since = time.monotonic()
        handle = asyncio.get_running_loop().call_later(
            room.reconnect_grace, self._expire_seat, room.room_id, seat
        )
        room._grace[seat.user_id] = handle

    def _expire_seat(self, room_id: str, seat: Seat) -> None:
        room = self.rooms.get(room_id)
        if room is None or room.seats.get(seat.user_id) is not seat or seat.connected:
            return
        room._grace.pop(seat.user_id, None)
        self._spawn(self.leave(room_id, seat.user_id, consented=False))

    async def _locked(self, room: StatefulRoom, hook: Callable[..., Any], *args: Any) -> None:
        async with room.lock:
            if not room.disposed:
                await _call(hook(*args))

    # -- messages and reloads ----------------------------------------------------------

    def _find(
        self, type_name: str, room_of: Callable[[Any], str] | None, ctx: Context, msg: Any
    ) -> tuple[StatefulRoom, Seat]:
        session = ctx.session
        if session is None:
            raise HandlerError(ErrorCode.UNAUTHENTICATED, "a room message needs a login")
        user_id = session.user_id
        if room_of is not None:
            room = self.rooms.get(room_of(msg))
        else:
            mine = [r for r in self.of_user(user_id) if r.type_name == type_name]
            room = mine[0] if len(mine) == 1 else None
        if room is None:
            cls = self.types.get(type_name, StatefulRoom)
            raise HandlerError(cls.not_in_room_code, f"not in a {type_name} room")
        seat = room.seats.get(user_id)
        if seat is None:
            raise HandlerError(room.not_in_room_code, f"no seat in room {room.room_id}")
        if room.disposed:
            raise HandlerError(room.not_in_room_code, f"room {room.room_id} ended")
        return room, seat

    async def dispatch(
        self,
        type_name: str,
        method_name: str,
        room_of: Callable[[Any], str] | None,
        ctx: Context,
        msg: Any,
    ) -> Message | None:
        """Run a room message: find the room (by `room_of`, else the sender's only room
        of the type) and the sender's seat, and call the method under the room's lock.
        The method is looked up on the room's class at each call, so a reload's new code
        runs from the next message."""
        room, seat = self._find(type_name, room_of, ctx, msg)
        async with room.lock:
            if room.disposed:
                raise HandlerError(room.not_in_room_code, f"room {room.room_id} ended")
            result: Message | None = await _call(getattr(room, method_name)(seat, msg))
            return result

    def dispatch_sync(
        self,
        type_name: str,
        method_name: str,
        room_of: Callable[[Any], str] | None,
        ctx: Context,
        msg: Any,
    ) -> Message | None:
        """`dispatch` for a room type none of whose hooks and methods awaits (`is_sync`):
        inline, with no lock, since nothing of the room can be half done meanwhile."""
        room, seat = self._find(type_name, room_of, ctx, msg)
        result: Message | None = getattr(room, method_name)(seat, msg)
        return result

    def check_types(self, types: dict[str, type[StatefulRoom]]) -> None:
        """ValueError when apps with these room types cannot replace the ones in use: a
        live room's type is missing."""
        missing = sorted({r.type_name for r in self.rooms.values()} - types.keys())
        if missing:
            raise ValueError(
                f"the new apps have no room type {', '.join(map(repr, missing))}, and rooms "
                "of it are live: stop them, or keep the type"
            )

    def use_types(self, types: dict[str, type[StatefulRoom]]) -> None:
        """The room types of the apps now in use (at start, and at a reload, once
        `check_types` passed): live rooms take the new class of their type's name,
        keeping their state and their one tick loop."""
        self.types = dict(types)
        for room in self.rooms.values():
            room.__class__ = types[room.type_name]

    @staticmethod
    def messages_of(cls: type[StatefulRoom]) -> dict[type[Message], str]:
        """The message types a room class handles, with its method names."""
        found: dict[type[Message], str] = {}
        for name, member in inspect.getmembers(cls, callable):
            message_type = getattr(member, "__room_message__", None)
            if message_type is not None:
                found[message_type] = name
        return found
