"""The example chat service: join a room, say lines to it, leave it (docs/chat.md).

`tickwire serve` runs it when no ``--app`` is given, so ``make run`` and two clients show
server push working. Every handler is private: log in first.

Decisions, each a choice a real service could make differently:

- **The sayer gets its own line.** `SayRequest` broadcasts the `Line` to every member of
  the room, the sayer's session included. Every member then sees one transcript in one
  order, with the server's timestamp, built from pushes alone; a client does not have to
  merge its own lines into it. The push goes out ahead of the `SayReply`.
- **History lives in the store** (``ctx.cache``), not in this process: a ring of the last
  `history` lines per room, in a hash under ``app:chat:history:<room>`` plus a counter
  under ``app:chat:seq:<room>``, both expiring `history_ttl` seconds after the room's
  last line. So it outlives a handler reload (``--reload`` re-imports this module), a
  zero-downtime ``tickwire restart`` and a stop with ``store_snapshot_path`` set, and with
  ``store = "redis"`` every node shows the same history. Room membership is the
  server's (``server.room``): in a cluster a room spans the nodes, but after a restart
  clients join again, and the history catches them up. The price is that join and say
  are async handlers (a store call each).
- **Members are the cluster's.** `JoinReply.members`, `MemberJoined` and `MemberLeft`
  go by the users in the room on every node (``await room.all_user_ids()``), so a user
  whose other session is on another node is neither announced twice nor left twice.
  While the cluster's Redis is unreachable they go by this node's members.
- **Lines are rate-limited per user**: `say_rate` (10 a second) with a burst of
  `say_burst` (20), nginx ``limit_req`` style, counted per user over all their
  connections; past it a Say gets RATE_LIMITED with the wait, and nothing is broadcast
  or stored. Joins are limited the same way (`join_rate`), since each one reads the
  room's history from the store. A line is at most `max_text` characters (1,000).
- A session that joins sees, in the reply, the history up to the moment it joined; a
  line said while the history is being read may, on Redis, also arrive as a push just
  before the reply (a duplicate, never a gap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import IntEnum

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
from protocol.errors import ErrorCode
from server import App, Context, HandlerError, Server
from server.cluster import ClusterUnavailable
from server.push import Room
from server.sessions import Session
from server.store import Store, StoreError, is_reported

log = logging.getLogger("tickwire.chat")

#: Lines a join gets back (the room's last ones), unless make_app is told otherwise.
HISTORY = 50
#: Longest line, in characters (Unicode code points).
MAX_TEXT = 1000
#: Longest room name, in characters.
MAX_ROOM = 64
#: Seconds a room's history is kept after its last line.
HISTORY_TTL = 7 * 24 * 3600.0
#: Lines a user may say, per second on average and at once (server/ratelimit.py).
SAY_RATE, SAY_BURST = "10/s", 20
#: Joins a user may make, likewise: each reads the room's history from the store.
JOIN_RATE, JOIN_BURST = "5/s", 20

_SEQ_BYTES = 8


class ChatError(IntEnum):
    """The service's application error codes (HandlerError, 100 and up)."""

    #: SayRequest.text longer than the limit.
    LINE_TOO_LONG = 100
    #: Say or leave in a room this session has not joined.
    NOT_IN_ROOM = 101
    #: A room name that is empty, too long, or has unprintable characters.
    BAD_ROOM = 102
    #: SayRequest.text empty or only whitespace.
    EMPTY_LINE = 103


def _session(ctx: Context) -> Session:
    session = ctx.session
    if session is None:  # private handlers never run without one; this is for the types
        raise HandlerError(ErrorCode.UNAUTHENTICATED, "log in first")
    return session


def _room_name(name: str) -> str:
    if not name or len(name) > MAX_ROOM or not name.isprintable():
        raise HandlerError(
            ChatError.BAD_ROOM,
            f"bad room name {name!r}: 1-{MAX_ROOM} printable characters",
        )
    return name


def _not_in(room: str) -> HandlerError:
    return HandlerError(
        ChatError.NOT_IN_ROOM, f"you are not in room {room!r}: send chat.JoinRequest first"
    )


async def read_history(cache: Store, room: str, limit: int) -> list[Line]:
    """The room's last `limit` lines, oldest first."""
    if limit <= 0:
        return []
    stored = await cache.hgetall(f"history:{room}")
    entries = sorted(
        (int.from_bytes(value[:_SEQ_BYTES], "big"), value[_SEQ_BYTES:]) for value in stored.values()
    )
    return [Line.FromString(body) for _, body in entries[-limit:]]


async def append_history(cache: Store, room: str, line: Line, limit: int, ttl: float) -> None:
    """Keep `line` as the room's newest, in a ring of `limit` slots."""
    seq = await cache.incr(f"seq:{room}")
    history, counter = f"history:{room}", f"seq:{room}"
    value = seq.to_bytes(_SEQ_BYTES, "big") + line.SerializeToString()
    await cache.hset(history, {str(seq % limit): value})
    await cache.expire(history, ttl)
    await cache.expire(counter, ttl)


def make_app(
    *,
    history: int = HISTORY,
    max_text: int = MAX_TEXT,
    history_ttl: float = HISTORY_TTL,
    say_rate: str | None = SAY_RATE,
    say_burst: int = SAY_BURST,
    join_rate: str | None = JOIN_RATE,
    join_burst: int = JOIN_BURST,
) -> App:
    """A chat App keeping `history` lines per room (0: none), refusing lines longer than
    `max_text` characters, and limiting each user to `say_rate` lines and `join_rate`
    joins (None: no limit)."""
    if history < 0 or max_text < 1 or history_ttl <= 0:
        raise ValueError("history must be >= 0, max_text >= 1 and history_ttl > 0")
    app = App("chat")
    app.add_module(chat_pb2)  # Line, MemberJoined and MemberLeft are pushed, never requested

    @app.handler(JoinRequest, rate=join_rate, burst=join_burst)
    async def join(ctx: Context, msg: JoinRequest) -> JoinReply:
        session = _session(ctx)
        name = _room_name(msg.room)
        room = ctx.server.room(name)
        new_user = session.user_id not in await user_ids(room)
        room.join(session)
        if new_user:
            room.broadcast(MemberJoined(room=name, user=session.user_id), exclude=session)
        lines = await read_history(ctx.cache, name, history)
        return JoinReply(room=name, history=lines, members=sorted(await user_ids(room)))

    @app.handler(SayRequest, rate=say_rate, burst=say_burst)
    async def say(ctx: Context, msg: SayRequest) -> SayReply:
        session = _session(ctx)
        if msg.room not in session.rooms:
            raise _not_in(msg.room)
        text = msg.text
        if len(text) > max_text:
            raise HandlerError(
                ChatError.LINE_TOO_LONG,
                f"line too long: {len(text)} characters, at most {max_text}",
            )
        if not text.strip():
            raise HandlerError(ChatError.EMPTY_LINE, "empty line")
        line = Line(
            room=msg.room, user=session.user_id, text=text, time_ms=time.time_ns() // 1_000_000
        )
        ctx.server.room(msg.room).broadcast(line)
        if history:
            try:
                await append_history(ctx.cache, msg.room, line, history, history_ttl)
            except StoreError as exc:
                # The line reached the room; only its place in the history is lost. While
                # the store is down the breaker has logged the outage once: no line each.
                if not is_reported(exc):
                    log.warning("chat history of %r not written: %s", msg.room, exc)
        return SayReply()

    @app.handler(LeaveRequest)
    async def leave(ctx: Context, msg: LeaveRequest) -> LeaveReply:
        session = _session(ctx)
        if msg.room not in session.rooms:
            raise _not_in(msg.room)
        room = ctx.server.room(msg.room)
        room.leave(session)
        await announce_left(room, session.user_id)
        return LeaveReply()

    @app.on_room_left
    def session_ended(server: Server, name: str, session: Session) -> None:
        # Logout, a newer login, a session never resumed: the others hear it too.
        room = server.room(name)
        if session.user_id in room.user_ids():
            return
        if server.cluster is None:
            room.broadcast(MemberLeft(room=name, user=session.user_id))
            return
        # The hook is sync; the cluster's members are an await away.
        task = asyncio.get_running_loop().create_task(announce_left(room, session.user_id))
        _announcing.add(task)
        task.add_done_callback(_announcing.discard)

    return app


async def user_ids(room: Room) -> set[str]:
    """The users in `room` on every node; this node's while the cluster is unreachable
    (a join or leave must not fail for it)."""
    try:
        return await room.all_user_ids()
    except ClusterUnavailable:
        return room.user_ids()


async def announce_left(room: Room, user_id: str) -> None:
    """MemberLeft, when `user_id` has no session left in `room` on any node."""
    if user_id not in await user_ids(room):
        room.broadcast(MemberLeft(room=room.name, user=user_id))


#: MemberLeft announcements running: referenced until done, so none is collected.
_announcing: set[asyncio.Task[None]] = set()


#: What `tickwire serve` runs by default (`examples.chat.service:app`).
app = make_app()
