"""Server push: reliable pushes (sequenced per session, buffered until acknowledged,
replayed after a Resume), latest-value pushes (replaced by newer values of the same key
while a client lags), rooms, and one write per connection per loop iteration.

How a push travels: the message is encoded once, whatever the number of recipients. A
reliable push takes the session's next push sequence, goes into the session's bounded
`PushBuffer` (a tuple sharing the one payload), and its 11-byte header plus the shared
payload are appended to the connection's pending output; a latest-value push is one
frame (seq 0, so the very same bytes) appended as is, or, while latest_queue_bytes or
more wait for the peer (or its writes are paused), parked in the connection's `latest`
map under its key, where a newer value replaces it (docs/server.md, "Latest-value
conflation"). A connection that got
output is handed to the Outbox (server/outbox.py), the one the fast path's replies wait
in, which writes it once at the end of the loop iteration: a member of ten rooms that
each broadcast in one iteration costs one syscall, not ten.

A push made while a handler runs goes out in the same write as the replies of that
connection's turn, ahead of the handler's own reply (behind it for a reply_first
handler: server/dispatch.py). A reliable push to a connection
that is write-paused still goes to its transport (it must not be dropped) until the
buffer passes `slow_consumer_bytes`; then the connection is closed with SLOW_CONSUMER:
a client that stops reading costs at most that much.

The Pusher is built from what it works with: the sessions (who is reachable), the
Outbox (where output waits), the message-ID lookup (it follows a handler reload) and,
once the server has started, the offline queue (the inbox writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from hdrh.histogram import HdrHistogram

from protocol.errors import ErrorCode
from protocol.frame import HEADER, MIN_LENGTH, Flags
from server.errors import HandlerError
from server.store import StoreError, is_reported

if TYPE_CHECKING:
    from server.cluster.rooms import ClusterRooms
    from server.cluster.users import UserPush
    from server.connection import Connection
    from server.inbox import Inbox
    from server.outbox import Outbox
    from server.sessions import Session, SessionManager

log = logging.getLogger("tickwire.push")

_PUSH = int(Flags.PUSH)
_pack = HEADER.pack

#: One push as every recipient's buffer shares it: (msg_id, payload).
Pushed = tuple[int, bytes]
#: A buffered push with its sequence number: (seq, msg_id, payload).
Buffered = tuple[int, int, bytes]
LatestKey = Callable[[Any], Hashable]


class Delivery(StrEnum):
    #: Sequenced, buffered until acknowledged, replayed after a Resume, stored in the
    #: offline inbox when the user has no session. The default.
    RELIABLE = "reliable"
    #: Unsequenced (seq 0): while a client lags, a newer value of the same key replaces
    #: the older one instead of queueing behind it; never buffered, never stored.
    LATEST = "latest"


class PushBuffer:
    """A session's reliable pushes not yet acknowledged, oldest first, at most `limit`.

    Sequence numbers are contiguous, so they are not stored: entry i has sequence
    ``first_seq + i``. An entry is the push's ``(msg_id, payload)`` tuple, made once per
    push and shared by every recipient, so buffering a broadcast costs each member one
    deque slot (8 bytes), not a tuple and an integer of its own. Past the limit the
    oldest are dropped: a Resume that would need them is told there is a gap
    (ResumeReply.push_gap) instead of getting a partial replay unannounced."""

    __slots__ = ("items", "last_seq")

    def __init__(self, limit: int, last_seq: int = 0) -> None:
        self.last_seq = last_seq
        #: A bounded deque drops its oldest entry on append, in C: no test per push.
        self.items: deque[Pushed] = deque(maxlen=limit)

    @property
    def limit(self) -> int:
        return self.items.maxlen or 0

    @property
    def first_seq(self) -> int:
        """The sequence of the oldest entry held (last_seq + 1 when none is)."""
        return self.last_seq - len(self.items) + 1

    def __len__(self) -> int:
        return len(self.items)

    def entries(self, after: int = 0) -> list[Buffered]:
        """The held pushes with a sequence above `after`, as (seq, msg_id, payload)."""
        first = self.first_seq
        skip = max(0, after - first + 1)
        return [
            (first + i, msg_id, payload)
            for i, (msg_id, payload) in enumerate(self.items)
            if i >= skip
        ]

    def make_room(self, count: int) -> None:
        """Hold at least `count` more pushes without dropping any (the inbox, taken out
        of the store, must not be dropped on its way in)."""
        needed = len(self.items) + count
        if needed > self.limit:
            self.items = deque(self.items, maxlen=needed)

    def add(self, msg_id: int, payload: bytes) -> int:
        self.items.append((msg_id, payload))
        self.last_seq += 1
        return self.last_seq

    def ack(self, seq: int) -> int:
        """Forget every push up to `seq`; returns how many went."""
        gone = min(len(self.items), seq - self.first_seq + 1)
        popleft = self.items.popleft
        for _ in range(gone):
            popleft()
        return max(0, gone)

    def take_newer(self, seq: int) -> list[Pushed]:
        """Remove the pushes after `seq` (never written: they get new numbers) and
        return them in order; the sequence goes back to `seq`."""
        count = min(len(self.items), self.last_seq - seq)
        if count <= 0:
            return []
        taken = [self.items.pop() for _ in range(count)]
        taken.reverse()
        self.last_seq = seq
        return taken

    def since(self, seq: int) -> tuple[list[Buffered], bool]:
        """The pushes after `seq` still held, and whether some after it are not."""
        missing = self.entries(after=seq)
        wanted = seq + 1
        gap = wanted <= self.last_seq and (not missing or missing[0][0] != wanted)
        return missing, gap


class RoomLimit(HandlerError):
    """A session tried to join one room more than ``max_rooms_per_session`` allows.

    OVERLOADED, the protocol's code for "refused to keep the server bounded": the
    request is well-formed, and it would succeed after the session leaves a room. An app
    that wants its own code catches this around ``room.join`` and raises that instead.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            ErrorCode.OVERLOADED,
            f"this session is in {limit} rooms, the most one may be in: leave one first",
        )
        self.limit = limit


class Room:
    """A named set of sessions that broadcasts go to.

    A `Room` is a handle: the members live in the pusher under the room's name, so a
    handle kept in a variable, or made again by ``server.room(name)``, always sees the
    same members, and a room nobody is in takes no memory (making a handle, or
    broadcasting to an empty room, stores nothing).

    Members are sessions, not connections: a member whose connection dropped stays in
    the room while its session waits for a Resume, and what the room said meanwhile is
    replayed to it. A session that ends (logout, replaced, expired) leaves its rooms.

    In a cluster a room spans the nodes (server/cluster/rooms.py): a broadcast reaches
    the members on every node. The sync answers (``len``, ``members``, ``user_ids``,
    ``in``) are this node's members, as a sync call cannot ask Redis; the awaited ones
    (``count``, ``all_user_ids``, ``all_members``) are the whole cluster's.
    """

    __slots__ = ("name", "pusher")

    def __init__(self, pusher: Pusher, name: str) -> None:
        self.pusher = pusher
        self.name = name

    @property
    def members(self) -> dict[str, Session]:
        """This node's members by session id (a copy)."""
        return dict(self.pusher.room_members.get(self.name, {}))

    def join(self, session: Session) -> bool:
        """Add `session`; False if it was already a member. A session already in
        `Pusher.max_rooms` rooms is refused with :class:`RoomLimit` (an OVERLOADED
        HandlerError: raised from a handler, it is the client's answer). In a cluster the
        membership is written to Redis without waiting: a join works while Redis is
        unreachable (the other nodes learn of it when it is back)."""
        pusher = self.pusher
        members = pusher.room_members.get(self.name)
        if members is not None and session.session_id in members:
            return False
        cap = pusher.max_rooms
        if cap and len(session.rooms) >= cap:
            raise RoomLimit(cap)
        first = members is None
        if members is None:
            members = pusher.room_members[self.name] = {}
        members[session.session_id] = session
        session.rooms.add(self.name)
        if pusher.cluster_rooms is not None:
            pusher.cluster_rooms.joined(self.name, session, first)
        return True

    def leave(self, session: Session) -> bool:
        return self.pusher.leave(self.name, session)

    def __contains__(self, session: object) -> bool:
        members = self.pusher.room_members.get(self.name)
        return members is not None and getattr(session, "session_id", None) in members

    def __len__(self) -> int:
        """This node's members (``await count()``: the cluster's)."""
        return len(self.pusher.room_members.get(self.name, ()))

    def user_ids(self) -> set[str]:
        """This node's members' users (``await all_user_ids()``: the cluster's)."""
        return {s.user_id for s in self.pusher.room_members.get(self.name, {}).values()}

    async def all_members(self) -> dict[str, tuple[str, str]]:
        """Every member on any node: session id -> (user id, node id). Without a cluster,
        this node's. ClusterUnavailable while the cluster's Redis is unreachable."""
        cluster_rooms = self.pusher.cluster_rooms
        if cluster_rooms is None:
            node = self.pusher.sessions.node
            return {
                sid: (s.user_id, node)
                for sid, s in self.pusher.room_members.get(self.name, {}).items()
            }
        return await cluster_rooms.members(self.name)

    async def count(self) -> int:
        """How many sessions are members, on any node."""
        return len(await self.all_members())

    async def all_user_ids(self) -> set[str]:
        """The users with a session in the room, on any node."""
        return {user_id for user_id, _ in (await self.all_members()).values()}

    def broadcast(self, message: Message, *, exclude: Session | str | None = None) -> int:
        """Push `message` to every member (but `exclude`: a session, or a user id whose
        sessions are all skipped); returns how many sessions it went to on this node.

        In a cluster the other nodes' members get it through one PUBLISH, whatever the
        number of nodes; while Redis is unreachable only this node's members do, and the
        miss is counted (``pusher.cluster_rooms.failures``), not raised."""
        pusher = self.pusher
        found = pusher.room_members.get(self.name)
        cluster_rooms = pusher.cluster_rooms
        if not found and cluster_rooms is None:
            return 0
        members: Iterable[Session] = found.values() if found else ()
        if exclude is not None:
            if isinstance(exclude, str):
                members = [s for s in members if s.user_id != exclude]
            else:
                members = [s for s in members if s is not exclude]
        encoded = pusher.encode(message)
        count = pusher.to_sessions(members, message, encoded) if found else 0
        if cluster_rooms is not None:
            wire_exclude = (
                None
                if exclude is None
                else ["u", exclude]
                if isinstance(exclude, str)
                else ["s", exclude.session_id]
            )
            latest = type(message) in pusher.latest_keys
            cluster_rooms.publish(self.name, *encoded, wire_exclude, latest)
        return count


class Pusher:
    """The server's push machinery (``server.pusher``)."""

    def __init__(
        self,
        sessions: SessionManager,
        outbox: Outbox,
        message_id: Callable[[type[Message]], int | None],
    ) -> None:
        self.sessions = sessions
        self.outbox = outbox
        #: A message class's ID in the registry in use (it follows a handler reload).
        self.message_id = message_id
        #: Writes reliable pushes for users with no session here to their inbox; set
        #: when the server starts (it needs the store).
        self.offline_queue: OfflineQueue | None = None
        #: Members of every room with any, by room name then session id.
        self.room_members: dict[str, dict[str, Session]] = {}
        #: The cross-node part of the rooms in a cluster (server/cluster/rooms.py), set
        #: by the server; None on its own.
        self.cluster_rooms: ClusterRooms | None = None
        #: Rooms one session may be in at once (0: no cap); the server sets it from
        #: max_rooms_per_session at start.
        self.max_rooms = 0
        #: Message types pushed as latest-value, with the function giving a value's key.
        self.latest_keys: dict[type[Message], LatestKey] = {}
        #: With a cluster: publishes pushes to users held on other nodes (set by it).
        self.remote: UserPush | None = None
        #: perf_counter() of each fan-out made this iteration, until its flush is done.
        self._starts: list[float] = []
        self._timing = False
        #: Microseconds from a fan-out's call to the write of its last member.
        self.fanout_us = HdrHistogram(1, 60_000_000, 2)
        self.reliable = 0
        self.latest = 0
        #: Latest values replaced by a newer one of their key before being written.
        self.conflated = 0
        #: Latest values not kept: their connection had latest_parked_bytes waiting.
        self.latest_dropped = 0
        self.offline = 0

    # -- declaring ----------------------------------------------------------------------

    def latest_value(self, message_type: type[Message], key: LatestKey) -> None:
        """Push `message_type` as latest-value; `key(msg)` names what a newer one replaces
        (a symbol, an account): values of different keys never replace each other."""
        self.latest_keys[message_type] = key

    def room(self, name: str) -> Room:
        """A handle on the room called `name` (it holds members once someone joins)."""
        return Room(self, name)

    @property
    def rooms(self) -> dict[str, Room]:
        """Every room with members, by name (handles, made on each call: for inspection)."""
        return {name: Room(self, name) for name in self.room_members}

    def leave(self, name: str, session: Session) -> bool:
        members = self.room_members.get(name)
        if members is None or members.pop(session.session_id, None) is None:
            return False
        session.rooms.discard(name)
        if not members:
            del self.room_members[name]
        if self.cluster_rooms is not None:
            self.cluster_rooms.left(name, session, not members)
        return True

    # -- pushing ------------------------------------------------------------------------

    def encode(self, message: Message) -> tuple[int, bytes]:
        msg_id = self.message_id(type(message))
        if msg_id is None:
            raise ValueError(
                f"{type(message).__qualname__} has no message ID in this server's registry: "
                "declare its module with App.add_module so clients can decode it"
            )
        return msg_id, message.SerializeToString()

    def to_users(self, user_ids: Iterable[str], message: Message) -> int:
        """Push `message` to every session of each user on this node (connected, or waiting
        for a Resume that will replay it), encoded once. A reliable push for a user with
        no session goes to the offline inbox (one stored body shared by all of them); with
        a cluster, only when no other node holds the user either (server/cluster/users.py),
        and ClusterUnavailable is raised, after the local deliveries, when that cannot be
        known. Returns the sessions reached on this node."""
        sessions: list[Session] = []
        offline: list[str] = []
        present: list[str] = []
        remote = self.remote
        reachable = self.sessions.reachable
        for user_id in user_ids:
            if not isinstance(user_id, str):
                raise TypeError(f"user ids are str, not {type(user_id).__name__}: {user_id!r}")
            found = reachable(user_id)
            if found:
                sessions.extend(found)
                if remote is not None:
                    present.append(user_id)
            else:
                offline.append(user_id)
        encoded = self.encode(message)  # once, for the sessions and the inbox
        count = self.to_sessions(sessions, message, encoded) if sessions else 0
        if remote is not None:
            remote.publish(offline, present, message, encoded)
        elif offline and type(message) not in self.latest_keys:
            self.to_inbox(offline, *encoded)
        return count

    def to_everyone(self, message: Message) -> int:
        """Push `message` to every session on this node."""
        return self.to_sessions(self.sessions.all_sessions(), message)

    def to_sessions(
        self,
        sessions: Iterable[Session],
        message: Message,
        encoded: tuple[int, bytes] | None = None,
    ) -> int:
        """Push `message` to each session (encoded once, or `encoded` already: its
        `encode()`); returns how many."""
        msg_id, payload = encoded or self.encode(message)
        key_of = self.latest_keys.get(type(message))
        key = None if key_of is None else (msg_id, key_of(message))
        return self.fan_out(sessions, msg_id, payload, key)

    def fan_out(
        self,
        sessions: Iterable[Session],
        msg_id: int,
        payload: bytes,
        latest: Hashable | None = None,
    ) -> int:
        """Push an encoded message to each session: reliable, or latest-value under the
        key `latest` (``(msg_id, key)``). Another node's broadcast arrives this way, with
        no message object to ask."""
        self._starts.append(time.perf_counter())
        if latest is None:
            count = self._reliable(sessions, msg_id, payload)
        else:
            count = self._latest(sessions, msg_id, payload, latest)
        self._time_fanouts()
        return count

    def _reliable(self, sessions: Iterable[Session], msg_id: int, payload: bytes) -> int:
        # The fan-out loop: per member, a sequence number, a deque slot pointing at the
        # one shared (msg_id, payload) (the bounded deque drops the oldest by itself), an
        # 11-byte header, one list extend, and the Outbox's mark for a connection not
        # marked yet this iteration.
        pack = _pack
        length = MIN_LENGTH + len(payload)
        push = _PUSH
        mark = self.outbox.mark
        shared = (msg_id, payload)
        count = 0
        for session in sessions:
            buffer = session.pushes
            seq = buffer.last_seq = buffer.last_seq + 1
            buffer.items.append(shared)
            conn = session.conn
            if conn is not None and not session.held and not conn.closing:
                conn.out += (pack(length, msg_id, push, seq), payload)
                if not conn.flush_pending:
                    mark(conn)
            count += 1
        self.reliable += count
        return count

    def _latest(
        self, sessions: Iterable[Session], msg_id: int, payload: bytes, key: Hashable
    ) -> int:
        # Per member, as for a reliable push, one test decides: `conn.latest` is None
        # while the connection's queue is under latest_queue_bytes (the value goes in
        # `out`), a dict while it waits (the value replaces its key's older one there).
        frame = _pack(MIN_LENGTH + len(payload), msg_id, _PUSH, 0) + payload
        size = len(frame)
        mark = self.outbox.mark
        count = 0
        for session in sessions:
            conn = session.conn
            if conn is None or session.held or conn.closing:
                continue  # a latest value is not kept for later: the next one will do
            parked = conn.latest
            if parked is None:
                conn.out.append(frame)
                if not conn.flush_pending:
                    mark(conn)
            else:
                older = parked.get(key)
                if older is not None:
                    self.conflated += 1
                    conn.latest_bytes += size - len(older)
                elif conn.latest_bytes + size > conn.server.budgets.latest_parked:
                    self.latest_dropped += 1
                    continue
                else:
                    conn.latest_bytes += size
                parked[key] = frame
            count += 1
        self.latest += count
        return count

    def release(self, session: Session, after: int) -> None:
        """The Login or Resume reply is written: send what the session holds after push
        `after` (a replay, the inbox, pushes made meanwhile), in sequence order, and let
        new pushes through from now on."""
        session.held = False
        conn = session.conn
        if conn is None or conn.closing:
            return
        self.replay(conn, session.pushes.entries(after))

    def replay(self, conn: Connection, items: Iterable[Buffered]) -> None:
        """Send buffered pushes again with their own sequence numbers."""
        out = conn.out
        for seq, msg_id, payload in items:
            out.append(_pack(MIN_LENGTH + len(payload), msg_id, _PUSH, seq))
            out.append(payload)
        self.outbox.mark(conn)

    def hold_latest(self, conn: Connection) -> None:
        """Too much is queued for `conn` (its writes paused, or latest_queue_bytes wait:
        Connection.pause_writing): its latest values wait in `conn.latest` from now on,
        one per key, until Connection.resume_writing releases them."""
        if conn.latest is None:
            conn.latest = {}
            conn.latest_bytes = 0

    def release_latest(self, conn: Connection) -> None:
        """The connection's queue has room again: its waiting latest values go out, the
        newest of each key, and the next ones go straight to `out`."""
        parked = conn.latest
        conn.latest = None
        conn.latest_bytes = 0
        if parked:
            conn.out.extend(parked.values())
            self.outbox.mark(conn)

    def forget_latest(self, conn: Connection) -> None:
        """`conn` closed: its waiting values go with it (docs/internet.md, "Freed on
        close")."""
        conn.latest = None
        conn.latest_bytes = 0

    def _time_fanouts(self) -> None:
        """Read the fan-out timings once the Outbox has written the marked connections."""
        if self._starts and not self._timing:
            self._timing = True
            self.outbox.after_flush(self._record_timings)

    def _record_timings(self) -> None:
        self._timing = False
        if self._starts:
            done = time.perf_counter()
            record = self.fanout_us.record_value
            for started in self._starts:
                record(max(1, int((done - started) * 1e6)))
            self._starts.clear()

    # -- the offline inbox --------------------------------------------------------------

    def to_inbox(self, user_ids: list[str], msg_id: int, payload: bytes) -> None:
        if self.offline_queue is None:
            raise RuntimeError("the server has not started: no inbox yet")
        self.offline += len(user_ids)
        self.offline_queue.put(user_ids, msg_id, payload)

    def keep_unacked(self, session: Session) -> None:
        """A session's unacknowledged pushes go to its user's inbox, in order."""
        items = list(session.pushes.items)
        session.pushes.items.clear()
        queue = self.offline_queue
        if queue is not None:
            for msg_id, payload in items:
                queue.put([session.user_id], msg_id, payload)

    async def inbox_settled(self, user_id: str) -> None:
        """Wait until every offline push queued so far for the user is in the inbox (a
        login takes the inbox right after)."""
        if self.offline_queue is not None:
            await self.offline_queue.settled(user_id)

    async def drain_offline(self, timeout: float | None = None) -> None:
        """Wait until the offline-inbox writes queued so far are done."""
        if self.offline_queue is not None:
            await self.offline_queue.drain(timeout)


class OfflineQueue:
    """Writes pushes to the offline inbox one after the other, in the order they were
    made, and lets a login wait for the writes that concern its user.

    One writer, because concurrent puts would reach a user's inbox in the order their
    store calls finish (on Redis, across pool connections), not the order of the pushes.
    Each put is concurrent inside (one body, a reference per user), so a multicast to
    many offline users still goes at the store's pace.
    """

    def __init__(self, inbox: Inbox, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = inbox
        self.loop = loop
        self._queue: deque[tuple[int, list[str], int, bytes]] = deque()
        self._next = 0
        self._done = -1
        #: The newest queued write of each user with one in the queue.
        self._last: dict[str, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.lost = 0

    def put(self, user_ids: list[str], msg_id: int, payload: bytes) -> None:
        index = self._next
        self._next += 1
        self._queue.append((index, user_ids, msg_id, payload))
        last = self._last
        for user_id in user_ids:
            last[user_id] = index
        if self._writer is None:
            self._writer = self.loop.create_task(self._write(), name="tickwire-inbox-writer")

    async def _write(self) -> None:
        queue = self._queue
        try:
            while queue:
                index, user_ids, msg_id, payload = queue[0]
                try:
                    await self.inbox.put(user_ids, msg_id, payload)
                except StoreError as exc:
                    self.lost += len(user_ids)
                    if not is_reported(exc):  # an outage's are counted, said once
                        log.error("offline push to %d users lost: %s", len(user_ids), exc)
                except Exception:  # one bad item must not stall every one behind it
                    self.lost += len(user_ids)
                    log.exception("offline push to %d users lost", len(user_ids))
                queue.popleft()
                self._finished(index, user_ids)
        finally:
            self._writer = None
            if queue:  # cancelled with work left (a stop past its deadline)
                self.lost += sum(len(item[1]) for item in queue)
                queue.clear()
                self._last.clear()
                for _, future in self._waiters:
                    if not future.done():
                        future.set_result(None)
                self._waiters = []

    def _finished(self, index: int, user_ids: list[str]) -> None:
        self._done = index
        last = self._last
        for user_id in user_ids:
            if last.get(user_id) == index:
                del last[user_id]
        if self._waiters:
            still = []
            for wanted, future in self._waiters:
                if wanted <= index:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((wanted, future))
            self._waiters = still

    async def settled(self, user_id: str) -> None:
        """Return once every write queued so far for `user_id` is in the inbox."""
        wanted = self._last.get(user_id)
        if wanted is None or wanted <= self._done:
            return
        future = self.loop.create_future()
        self._waiters.append((wanted, future))
        await future

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the queue is written (at most `timeout` seconds)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer], timeout=timeout)

    def __len__(self) -> int:
        return len(self._queue)
