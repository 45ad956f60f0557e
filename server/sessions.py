"""Sessions: who is logged in, on which connection, kept in the store so that a session
outlives its connection (Resume) and, with a snapshot or Redis, the process.

Keys, all under ``tw:`` on the server's store (apps' ``ctx.cache`` lives under ``app:``):

- ``tw:session:<sid>``  hash: user, device, token (sha256 of it), created, expires (token
  expiry, unix ms), node, conn (id on that node, "" while disconnected), data (msgpack).
  TTL: ``token_ttl + session_ttl`` while connected, ``session_ttl`` once disconnected.
- ``tw:token:<sha256>`` the session id; TTL ``token_ttl``. Only the hash of a token is
  ever stored: a copy of the store does not let anyone resume a session.
- ``tw:user:<uid>``     set of the user's session ids (stale ones pruned when read).

Consecutive writes that need no answer in between (a login's token, session and user
index; a resume's; a refresh's; a logout's deletes) go as one store batch: on Redis one
MULTI/EXEC round trip instead of one per write. A batch runs every write even when one
fails (see Store.batch), so each failure path below cleans up as it did after a single
failed write.

Local state is the small part: the live sessions of this node by id and by user, so that
`ctx.session` costs an attribute read and a kick finds the connection without a lookup.
A per-user lock orders logins, resumes and logouts of one user on this node; across nodes
the last writer wins, and a session the record places on another node is ended there by a
kick over the cluster's bus (`end_elsewhere`, server/cluster/kicks.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec

from protocol.errors import ErrorCode
from server.errors import HandlerError
from server.push import Buffered, PushBuffer, Pushed
from server.store.breaker import is_reported
from server.store.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from server.cluster.handover import Taken
    from server.connection import Connection
    from server.store import Store

log = logging.getLogger("tickwire.sessions")

#: The largest last_push_seq a Resume's claim is believed up to: far past any real count,
#: and far enough below 2**64 that the sequence never runs out of the wire's u64.
MAX_CLAIMED_SEQ = 2**62

_encode = msgspec.msgpack.Encoder().encode
_decode_data = msgspec.msgpack.Decoder(dict[str, Any]).decode


class DuplicateLogin(StrEnum):
    """What a second login of a user already logged in does."""

    #: The old session ends: its connection gets GoAway SESSION_REPLACED, its token dies.
    REPLACE = "replace"
    #: The new login is refused while the old session is connected (a disconnected one
    #: waiting for its Resume is replaced, or a crashed client would be locked out).
    REJECT = "reject"
    #: Both live on (several devices).
    ALLOW = "allow"


class EndReason(StrEnum):
    """Why a session left its connection (the disconnected event's second argument)."""

    #: The connection ended; the session waits `session_ttl` for a Resume.
    CLOSED = "closed"
    LOGOUT = "logout"
    #: A newer login of the same user took over (duplicate_login = replace).
    REPLACED = "replaced"
    #: A Resume continued it on another connection.
    RESUMED_ELSEWHERE = "resumed_elsewhere"
    #: `remove_user` ended it.
    REMOVED = "removed"
    #: It waited longer than session_ttl for a Resume.
    EXPIRED = "expired"
    #: Its Login or Resume failed half-way (a store error, the handler's deadline).
    FAILED = "failed"


class SessionInfo(msgspec.Struct, frozen=True):
    """A session as the store has it: what lookups answer, from any node."""

    session_id: str
    user_id: str
    device: str
    node: str
    #: The connection's id on `node`; 0 while the session waits for a Resume.
    conn_id: int
    created_ms: int
    expires_at_ms: int

    @property
    def connected(self) -> bool:
        return self.conn_id != 0


class Session:
    """A logged-in user on a connection: what `ctx.session` is.

    `data` persists with the session: it is written when the connection ends (so a
    Resume, on this node or another, finds it) and by :meth:`save`.
    """

    __slots__ = (
        "conn",
        "created_ms",
        "data",
        "device",
        "expires_at_ms",
        "held",
        "held_from",
        "manager",
        "pushes",
        "pushes_lost",
        "restored",
        "rooms",
        "session_id",
        "token_hash",
        "user_id",
        "waiting_since",
    )

    def __init__(
        self,
        manager: SessionManager,
        user_id: str,
        session_id: str,
        device: str,
        token_hash: str,
        created_ms: int,
        expires_at_ms: int,
        data: dict[str, Any] | None = None,
        last_push_seq: int = 0,
        pushed: list[Buffered] | None = None,
        pushes_lost: bool = False,
    ) -> None:
        self.manager = manager
        self.user_id = user_id
        self.session_id = session_id
        self.device = device
        self.token_hash = token_hash
        self.created_ms = created_ms
        self.expires_at_ms = expires_at_ms
        self.data: dict[str, Any] = data if data is not None else {}
        self.conn: Connection | None = None
        #: Reliable pushes not yet acknowledged (server/push.py).
        self.pushes = PushBuffer(manager.push_buffer, last_push_seq)
        # Restored pushes must end at the sequence the buffer goes on from (they are
        # contiguous, as entries() wrote them); otherwise the client saw past them.
        if not pushed or pushed[-1][0] != last_push_seq:
            pushed = []
        self.pushes.items.extend((msg_id, payload) for _, msg_id, payload in pushed)
        #: The pushes a session rebuilt from the store came back with; a server stop also
        #: put them in the user's inbox, so the Resume takes them out of it once.
        self.restored: list[Pushed] = [(msg_id, payload) for _, msg_id, payload in pushed]
        #: Pushes after the client's last seen may have been lost: the process that held
        #: the session last did not save them at a stop (a crash, another node still
        #: holding it). The next ResumeReply says push_gap, then this is cleared.
        self.pushes_lost = pushes_lost
        #: The push sequence when the session was last held (attached): pushes after it
        #: have not been written yet.
        self.held_from = 0
        #: Names of the rooms this session is in.
        self.rooms: set[str] = set()
        #: Monotonic time its connection ended (it waits for a Resume); 0 while connected.
        self.waiting_since = 0.0
        #: Pushes are buffered but not written until the Login/Resume reply is out
        #: (Pusher.release), so the client sees its new session's pushes after the reply.
        self.held = False

    async def save(self) -> None:
        """Write `data` to the store now (it is also written when the connection ends).
        A session that has ended is not written: that would bring its record back."""
        manager = self.manager
        if not manager.holds(self):
            return
        key = _session_key(self.session_id)
        await manager.store.hset(key, {"data": _encode(self.data)})
        # The TTL it has now (a waiting session's must not outlive its session_ttl), and
        # one at all had it ended during that write and come back with none.
        live = manager.live.get(self.session_id) is self
        await manager.store.expire(key, manager._connected_ttl if live else manager.session_ttl)

    def __repr__(self) -> str:
        return f"<Session {self.session_id} user={self.user_id!r} device={self.device!r}>"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _session_key(sid: str) -> str:
    return "tw:session:" + sid


def _token_key(hashed: str) -> str:
    return "tw:token:" + hashed


def _user_key(uid: str) -> str:
    return "tw:user:" + uid


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _UserLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


ConnectedCallback = Callable[[Session], Awaitable[None] | None]
DisconnectedCallback = Callable[[Session, EndReason], Awaitable[None] | None]


class SessionManager:
    """Logins, resumes, tokens and lookups over the server's store."""

    def __init__(
        self,
        *,
        session_ttl: float,
        token_ttl: float,
        duplicate_login: DuplicateLogin,
        node: str | None = None,
        push_buffer: int = 1024,
    ) -> None:
        self.session_ttl = session_ttl
        self.push_buffer = push_buffer
        self.token_ttl = token_ttl
        self.duplicate_login = duplicate_login
        self.node = node or default_node_id()
        self._store: Store | None = None
        #: Live sessions of this node, by session id and by user id.
        self.live: dict[str, Session] = {}
        self._by_user: dict[str, list[Session]] = {}
        #: Sessions of this node whose connection ended, waiting `session_ttl` for a
        #: Resume; pushes to them are buffered for the replay.
        self.waiting: dict[str, Session] = {}
        self._waiting_by_user: dict[str, list[Session]] = {}
        #: Called with a session that ended for good (not one waiting for a Resume), so
        #: the push layer can take it out of rooms and keep its unacknowledged pushes.
        self.on_end: Callable[[Session, EndReason], None] | None = None
        self._locks: dict[str, _UserLock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_connected: list[ConnectedCallback] = []
        self._on_disconnected: list[DisconnectedCallback] = []
        #: Awaited, in order, when this node starts holding a session it did not hold (a
        #: login; a Resume of a session last held elsewhere or by a process gone), before
        #: its record is written and its inbox read: the cluster subscribes the user's
        #: channel here, so no push to the user falls between the nodes. What one raises
        #: fails the login or resume as a store error would. A session stops being held
        #: through `on_end` (or a handover to another node).
        self.on_hold: list[Callable[[Session], Awaitable[None]]] = []
        #: Called with (session, handed_over) when this node stops holding a session: it
        #: ended for good (after `on_end`; handed_over False), or its Resume moved it
        #: to another node (handed_over True: its rooms and pushes live on there). The
        #: cluster unsubscribes the user's channel here.
        self.on_release: list[Callable[[Session, bool], None]] = []
        #: Sessions whose disconnect the store missed (it was unreachable): their records
        #: still say "connected", with the long TTL; store_recovered sets that right.
        self._unsaved: dict[str, Session] = {}
        #: Set in a cluster (server/cluster/kicks.py): `(node, session id, reason)` ends
        #: a session another node holds; False when that node is gone. Without it, only
        #: sessions held here are ended in place (their store keys go either way).
        self.end_elsewhere: Callable[[str, str, EndReason], Awaitable[bool]] | None = None
        #: Set in a cluster (server/cluster/handover.py): `(node, session id, user id)`
        #: asks the node that holds a session for its state, for a Resume here.
        self.take_over: Callable[[str, str, str], Awaitable[Taken | None]] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the server has not started: no store yet")
        return self._store

    def bind(self, store: Store) -> None:
        self._store = store

    # -- events -------------------------------------------------------------------------

    def on_connected(self, callback: ConnectedCallback) -> None:
        """Call `callback(session)` when a session gets a connection (login or resume).
        An async callback runs as a task; an exception is logged, never raised here."""
        self._on_connected.append(callback)

    def on_disconnected(self, callback: DisconnectedCallback) -> None:
        """Call `callback(session, reason)` when a session leaves its connection."""
        self._on_disconnected.append(callback)

    def _fire(self, callbacks: list[Any], *args: Any) -> None:
        for callback in callbacks:
            try:
                result = callback(*args)
                if result is not None:
                    self._spawn(result)
            except Exception:
                log.exception("session callback %r raised", callback)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except StoreError as exc:
                # A disconnect's or a failed login's store write: one line, no traceback,
                # and none at all during an outage the breaker has reported.
                if not is_reported(exc):
                    log.error("session store write failed: %s", exc)
            except Exception:
                log.exception("session task failed")

        self.track(asyncio.get_running_loop().create_task(run()))

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep `task` until it is done: `flush` waits for it at a stop."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for the store writes and callbacks still running (at stop, before the
        store closes, so the final snapshot holds every disconnected session). After
        `timeout` seconds, what still runs (a callback that hangs) is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                for task in self._tasks:
                    task.cancel()
                log.warning("%d session tasks still running at stop: cancelled", len(self._tasks))
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                return
            await asyncio.wait(list(self._tasks), timeout=left)

    # -- login, resume, refresh, logout -------------------------------------------------

    async def _locked(self, user_id: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run `work` holding the user's lock. A lock lives only while someone holds or
        waits for it, so a million users who logged in once leave no million locks."""
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = _UserLock()
        entry.users += 1
        try:
            async with entry.lock:
                return await work()
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[user_id]

    async def login(self, conn: Connection, user_id: str, device: str) -> tuple[Session, str]:
        """A new session for `user_id` on `conn`, after the duplicate-login policy ran.
        Returns the session and its token (the only time the token exists in clear)."""

        async def work() -> tuple[Session, str]:
            await self._apply_policy(conn, user_id)
            if conn.closing:
                raise HandlerError(ErrorCode.UNAUTHENTICATED, "connection closed during login")
            if conn.session is not None:
                await self._logout(conn.session, EndReason.LOGOUT)
            token = secrets.token_urlsafe(32)
            hashed = token_hash(token)
            now = _now_ms()
            session = Session(
                self,
                user_id,
                secrets.token_urlsafe(16),
                device,
                hashed,
                now,
                now + int(self.token_ttl * 1000),
            )
            # Reachable before the first await: a push made while the record is written
            # waits in the (held) session's buffer rather than in the offline inbox.
            self._attach(session, conn)
            sid = session.session_id
            try:
                for hook in self.on_hold:
                    await hook(session)
                # One round trip on Redis. Token first: nothing reads the session
                # record without having come through the token.
                batch = self.store.batch()
                batch.set(_token_key(hashed), sid.encode(), ttl=self.token_ttl)
                batch.hset(
                    _session_key(sid),
                    {
                        "user": user_id.encode(),
                        "device": device.encode(),
                        "token": hashed.encode(),
                        "created": str(now).encode(),
                        "expires": str(session.expires_at_ms).encode(),
                        "data": _encode(session.data),
                        **self._where(conn),
                    },
                )
                batch.expire(_session_key(sid), self._connected_ttl)
                batch.sadd(_user_key(user_id), sid.encode())
                batch.expire(_user_key(user_id), self._connected_ttl)
                await batch.run()
            except BaseException:
                # A store error or the handler's deadline: no half-written session may
                # stay behind (a phantom "connected" one would lock `reject` users out).
                self._detach(session, EndReason.FAILED)
                self._spawn(self._delete(session.session_id, user_id, hashed))
                raise
            return session, token

        result: tuple[Session, str] = await self._locked(user_id, work)
        return result

    async def _apply_policy(self, conn: Connection, user_id: str) -> None:
        policy = self.duplicate_login
        others = [
            info
            for info in await self.sessions_of(user_id)
            if not (conn.session is not None and info.session_id == conn.session.session_id)
        ]
        if policy is DuplicateLogin.ALLOW:
            return
        if policy is DuplicateLogin.REJECT and any(info.connected for info in others):
            raise HandlerError(
                ErrorCode.UNAUTHENTICATED,
                f"user {user_id!r} is already logged in elsewhere (duplicate_login = reject)",
            )
        for info in others:
            await self._end(info.session_id, EndReason.REPLACED)

    async def resume(self, conn: Connection, token: str, last_push_seq: int = 0) -> Session:
        """Continue the session `token` belongs to on `conn`; a connection still holding it
        (on this node) gets GoAway SESSION_REPLACED. `last_push_seq` is the last push the
        client saw."""
        hashed = token_hash(token)
        refused = HandlerError(
            ErrorCode.UNAUTHENTICATED, "token unknown, expired, rotated or logged out"
        )
        store = self.store
        sid = await store.get(_token_key(hashed))
        if sid is None:
            raise refused
        record = await store.hgetall(_session_key(sid.decode()))
        if not record or record.get("token") != hashed.encode():
            raise refused
        user_id = record["user"].decode()

        async def work() -> Session:
            # Read again under the lock: a logout or a newer login may have run meanwhile.
            current = await store.hgetall(_session_key(sid.decode()))
            if not current or current.get("token") != hashed.encode():
                raise refused
            session_id = sid.decode()
            previous = current.get("node", b"").decode()
            moved = bool(previous) and previous != self.node
            if moved:
                # Another node took the session over since this one held it (that node's
                # kick has not come yet): the copy here is stale, the store has it.
                self._drop_here(session_id, EndReason.RESUMED_ELSEWHERE)
            live = self.live.get(session_id)
            if live is not None and live.conn is conn:
                return live
            if live is not None:
                self._kick(
                    live, EndReason.RESUMED_ELSEWHERE, "session resumed on another connection"
                )
            waiting = self.waiting.get(session_id)
            if waiting is not None:
                self._unwait(waiting)
            if conn.session is not None:
                self._detach(conn.session, EndReason.CLOSED)
            held = live or waiting
            taken = None
            if held is None and moved and self.take_over is not None:
                # The old node may still hold it, with pushes the store does not have.
                taken = await self.take_over(previous, session_id, user_id)
            if held is not None:
                session = held
            elif taken is not None and taken.state is not None:
                session = self._from_handover(
                    session_id, user_id, hashed, current, last_push_seq, taken
                )
            else:
                session = self._from_store(session_id, user_id, hashed, current, last_push_seq)
                session.pushes_lost |= taken is not None
            # Reachable before the first await (see login).
            self._attach(session, conn)
            if taken is not None and taken.state is not None:
                taken.attached(session)
                session.pushes_lost |= taken.lost
            try:
                if held is None:
                    for hook in self.on_hold:
                        await hook(session)
                batch = store.batch()
                # The pushes saved at a stop, if any, stop being the whole story now.
                batch.hset(_session_key(session_id), {**self._where(conn), "pclean": b""})
                batch.expire(_session_key(session_id), self._connected_ttl)
                batch.expire(_user_key(user_id), self._connected_ttl)
                await batch.run()
            except BaseException:
                self._detach(session, EndReason.CLOSED)  # back to waiting for a Resume
                raise
            finally:
                if taken is not None:
                    taken.finish()
            if moved and (taken is None or taken.state is None):
                await self._drop_elsewhere(previous, session_id)
            return session

        result: Session = await self._locked(user_id, work)
        return result

    async def _drop_elsewhere(self, node: str, sid: str) -> None:
        """The record (now saying this node) named `node` as the holder: it may still
        hold the session, connected or waiting, so it is told to drop it. Only once the
        record is rewritten, so that node reads it as moved, not come back."""
        if self.end_elsewhere is None:
            return
        try:
            await self.end_elsewhere(node, sid, EndReason.RESUMED_ELSEWHERE)
        except HandlerError as exc:  # ClusterUnavailable: the Resume itself went through
            log.warning("resumed session %s not dropped on node %s: %s", sid, node, exc.message)

    def _from_store(
        self, sid: str, user_id: str, hashed: str, record: dict[str, bytes], seen: int
    ) -> Session:
        """A session this node does not hold (another node had it, or the process
        restarted): data and the pushes saved at a stop come from the record.

        Whether the record's pushes are the whole story is the ``pclean`` field: a
        stop's save_pushes sets it with them, every Resume (one store batch it makes
        anyway) clears it, and a Login's new record has none. So a session whose last
        holder crashed, or is another node still holding it, reads as "pushes after the
        client's last seen may be lost" (push_gap), with no store write per push. A
        memory store restored from a snapshot a crash left behind trusts no ``pclean``
        (Store.restored_clean): the snapshot may predate the Resume that cleared it."""
        pushed = _load_pushed(record.get("pbuf"))
        stored = int(record.get("pseq", b"0") or 0)
        clean = record.get("pclean") == b"1" and self.store.restored_clean
        # New pushes go on above anything the client may have seen, or it would drop
        # them as repeats. A claim past MAX_CLAIMED_SEQ cannot be true (and would run
        # the wire's u64 out); it is ignored, and the reply says push_gap.
        claimed = seen if seen <= MAX_CLAIMED_SEQ else stored
        base = max(stored, claimed)
        lost = not clean or seen > stored
        return Session(
            self,
            user_id,
            sid,
            record.get("device", b"").decode(),
            hashed,
            int(record.get("created", b"0")),
            int(record.get("expires", b"0")),
            _load_data(record.get("data")),
            base,
            pushed,
            pushes_lost=lost,
        )

    def _from_handover(
        self,
        sid: str,
        user_id: str,
        hashed: str,
        record: dict[str, bytes],
        seen: int,
        taken: Taken,
    ) -> Session:
        """A session another node handed over: its pushes with their own sequence
        numbers and its data as that node had them (server/cluster/handover.py)."""
        state = taken.state
        assert state is not None
        lost = seen > state.last_seq  # the client saw past what the node held
        session = Session(
            self,
            user_id,
            sid,
            record.get("device", b"").decode(),
            hashed,
            int(record.get("created", b"0")),
            int(record.get("expires", b"0")),
            state.data,
            max(state.last_seq, seen) if seen <= MAX_CLAIMED_SEQ else state.last_seq,
            state.pushes if not lost else [],
            pushes_lost=lost,
        )
        session.restored = []  # none of these is in the inbox
        return session

    def held_session(self, sid: str) -> Session | None:
        """The session `sid` if this node holds it, connected or waiting."""
        return self.live.get(sid) or self.waiting.get(sid)

    async def hand_over(self, session: Session, cut: Callable[[], None]) -> bool:
        """Let `session` go to another node that is resuming it: out of its connection
        (GoAway SESSION_REPLACED) or its wait, with no end hooks (it lives on there), and
        `cut()` called in the same step. False when it is not held here any more."""

        async def work() -> bool:
            if not self.holds(session):
                return False
            sid = session.session_id
            if self.live.get(sid) is session:
                self._kick(
                    session, EndReason.RESUMED_ELSEWHERE, _KICK_TEXT[EndReason.RESUMED_ELSEWHERE]
                )
            else:
                self._unwait(session)
            cut()
            self._released(session, handed_over=True)
            return True

        result: bool = await self._locked(session.user_id, work)
        return result

    def holds(self, session: Session) -> bool:
        """Whether `session` is alive on this node (connected, or waiting for a Resume)."""
        sid = session.session_id
        return self.live.get(sid) is session or self.waiting.get(sid) is session

    def _check_current(self, session: Session, conn: Connection | None) -> None:
        # A Refresh or Logout queued behind the lock may find the session resumed on
        # another connection, replaced or ended: it must not act on it from there.
        # Without a connection (server code), the session only has to be held here.
        if conn is None:
            if not self.holds(session):
                raise HandlerError(ErrorCode.UNAUTHENTICATED, "the session ended")
        elif self.live.get(session.session_id) is not session or session.conn is not conn:
            raise HandlerError(ErrorCode.UNAUTHENTICATED, "the session ended")

    def abandon(self, session: Session) -> None:
        """A Login or Resume whose handler failed after the session was attached (its
        deadline, say): the client never got the token, so the session must not stay."""
        if self.holds(session):
            self._detach(session, EndReason.FAILED)
            self._spawn(self._delete(session.session_id, session.user_id, session.token_hash))

    async def refresh(self, session: Session, conn: Connection | None = None) -> str:
        """A new token for `session` (on `conn`); the old one is refused from now on."""

        async def work() -> str:
            self._check_current(session, conn)
            store = self.store
            token = secrets.token_urlsafe(32)
            hashed = token_hash(token)
            old = session.token_hash
            expires_at_ms = _now_ms() + int(self.token_ttl * 1000)
            # One round trip on Redis, in this order: the new token exists before the
            # record names it, and the old one goes last.
            batch = store.batch()
            batch.set(_token_key(hashed), session.session_id.encode(), ttl=self.token_ttl)
            batch.hset(
                _session_key(session.session_id),
                {"token": hashed.encode(), "expires": str(expires_at_ms).encode()},
            )
            batch.expire(_session_key(session.session_id), self._connected_ttl)
            batch.expire(_user_key(session.user_id), self._connected_ttl)
            batch.delete(_token_key(old))
            await batch.run()
            # Only once it is written: a batch that failed to reach the store (the usual
            # StoreUnavailable: nothing ran) leaves the session on the token the client
            # still holds.
            session.token_hash = hashed
            session.expires_at_ms = expires_at_ms
            return token

        result: str = await self._locked(session.user_id, work)
        return result

    async def logout(self, session: Session, conn: Connection | None = None) -> None:
        """End `session` (on `conn`): its token is refused, its connection stays open,
        unauthenticated."""

        async def work() -> None:
            self._check_current(session, conn)
            await self._logout(session, EndReason.LOGOUT)

        await self._locked(session.user_id, work)

    async def _logout(self, session: Session, reason: EndReason) -> None:
        self._detach(session, reason)
        await self._delete(session.session_id, session.user_id, session.token_hash)

    async def _delete(self, sid: str, user_id: str, hashed: str | None) -> None:
        store = self.store
        keys = [_session_key(sid)]
        if hashed:
            keys.append(_token_key(hashed))
        batch = store.batch()
        batch.delete(*keys)
        batch.srem(_user_key(user_id), sid.encode())
        await batch.run()

    async def _end(self, sid: str, reason: EndReason) -> None:
        """End a session wherever it is: its keys go, and on this node its connection is
        told why and closed."""
        record = await self.store.hgetall(_session_key(sid))
        if not self._drop_here(sid, reason) and record and self.end_elsewhere is not None:
            node = record.get("node", b"").decode()
            if node and node != self.node:
                await self.end_elsewhere(node, sid, reason)
        if record:
            user = record["user"].decode()
            await self._delete(sid, user, record.get("token", b"").decode())

    def holds_id(self, sid: str) -> bool:
        """Whether the session `sid` is held on this node (connected or waiting)."""
        return sid in self.live or sid in self.waiting

    async def end_here(self, sid: str, reason: EndReason) -> bool:
        """End the session `sid` held on this node because another node ended it (a
        newer login there, `remove_user`, a Resume there), as a kick here would: its
        connection gets GoAway SESSION_REPLACED, the hooks fire. The store keys are the
        other node's to delete. Returns whether a session was ended."""
        held = self.live.get(sid) or self.waiting.get(sid)
        if held is None:
            return False

        async def work() -> bool:
            live, waiting = self.live.get(sid), self.waiting.get(sid)
            if live is None and waiting is None:
                return False
            # A client resumed elsewhere may have come back here since: the record says so.
            if (
                reason is EndReason.RESUMED_ELSEWHERE
                and await self.store.hget(_session_key(sid), "node") == self.node.encode()
            ):
                return False
            return self._drop_here(sid, reason)

        result: bool = await self._locked(held.user_id, work)
        return result

    async def recheck(self, session: Session) -> bool:
        """End `session` here if the store says another node ended or took it meanwhile
        (a kick this node could not hear: server/cluster/kicks.py). Its record names
        another node: resumed there. Its record is gone while its user's set lists other
        sessions but not this one: replaced. Both gone (a Redis that restarted empty, a
        logout or removal with nothing after it) proves nothing, so it stays. Returns
        whether it ended."""

        async def work() -> bool:
            if not self.holds(session):
                return False
            sid = session.session_id
            store = self.store
            record = await store.hgetall(_session_key(sid))
            if record:
                if record.get("node", b"").decode() in ("", self.node):
                    return False
                return self._drop_here(sid, EndReason.RESUMED_ELSEWHERE)
            members = await store.smembers(_user_key(session.user_id))
            if not members or sid.encode() in members:
                return False
            return self._drop_here(sid, EndReason.REPLACED)

        result: bool = await self._locked(session.user_id, work)
        return result

    def _drop_here(self, sid: str, reason: EndReason) -> bool:
        """`end_here` without the lock and the store: the caller holds the user's lock
        and knows the session is not this node's any more."""
        live, waiting = self.live.get(sid), self.waiting.get(sid)
        if live is not None:
            self._kick(live, reason, _KICK_TEXT[reason])
            if reason is EndReason.RESUMED_ELSEWHERE:
                # Not a Resume on this node: the session object is not held here any more
                # (the other node rebuilt its own from the store).
                self._ended(live, reason)
        elif waiting is not None:
            self._detach(waiting, reason)
        else:
            return False
        return True

    def _kick(self, session: Session, reason: EndReason, text: str) -> None:
        conn = session.conn
        self._detach(session, reason)
        if conn is not None:
            conn.close_with(ErrorCode.SESSION_REPLACED, text, goaway=True)

    # -- attach / detach ----------------------------------------------------------------

    @property
    def _connected_ttl(self) -> float:
        return self.token_ttl + self.session_ttl

    def _where(self, conn: Connection) -> dict[str, bytes]:
        return {"node": self.node.encode(), "conn": str(conn.id).encode()}

    def _attach(self, session: Session, conn: Connection) -> None:
        session.held = True
        session.held_from = session.pushes.last_seq
        session.conn = conn
        conn.set_session(session)
        self.live[session.session_id] = session
        self._by_user.setdefault(session.user_id, []).append(session)
        self._fire(self._on_connected, session)
        if conn.closing:
            # It closed while the store calls were awaited, so its connection_lost found
            # no session: the session must not stay "live" on a dead connection.
            self._detach(session, EndReason.CLOSED)

    def _detach(self, session: Session, reason: EndReason) -> None:
        """Take `session` off its connection. CLOSED (the connection ended): the session
        waits `session_ttl` for a Resume, here (pushes buffered) and in the store (its
        data written). Any other reason but RESUMED_ELSEWHERE ends it for good."""
        conn = session.conn
        if conn is not None and conn.session is session:
            conn.set_session(None)
        session.conn = None
        if self.live.pop(session.session_id, None) is None:
            if reason is not EndReason.CLOSED and self._unwait(session):
                self._ended(session, reason)
            return
        _drop(self._by_user, session)
        if reason is EndReason.CLOSED:
            session.waiting_since = time.monotonic()
            self.waiting[session.session_id] = session
            self._waiting_by_user.setdefault(session.user_id, []).append(session)
            self._spawn(self._persist_disconnected(session))
        elif reason is not EndReason.RESUMED_ELSEWHERE:
            self._ended(session, reason)
        self._fire(self._on_disconnected, session, reason)

    def _unwait(self, session: Session) -> bool:
        if self.waiting.pop(session.session_id, None) is None:
            return False
        _drop(self._waiting_by_user, session)
        session.waiting_since = 0.0
        return True

    def _ended(self, session: Session, reason: EndReason) -> None:
        if self.on_end is not None:
            try:
                self.on_end(session, reason)
            except Exception:
                log.exception("session end hook failed for %r", session)
        self._released(session, handed_over=False)

    def _released(self, session: Session, *, handed_over: bool) -> None:
        for hook in self.on_release:
            try:
                hook(session, handed_over)
            except Exception:
                log.exception("session release hook %r failed for %r", hook, session)

    def expire_waiting(self) -> int:
        """End the sessions that waited longer than `session_ttl` for a Resume (the
        sweep calls this); returns how many."""
        limit = time.monotonic() - self.session_ttl
        expired = []
        for session in self.waiting.values():  # in the order they started waiting
            if session.waiting_since > limit:
                break
            expired.append(session)
        for session in expired:
            self._unwait(session)
            self._ended(session, EndReason.EXPIRED)
        return len(expired)

    def reachable(self, user_id: str) -> list[Session]:
        """The user's sessions on this node a push can go to: connected ones, and those
        waiting for a Resume (which will replay it)."""
        return [*self._by_user.get(user_id, ()), *self._waiting_by_user.get(user_id, ())]

    def all_sessions(self) -> list[Session]:
        """Every session held on this node, connected or waiting."""
        return [*self.live.values(), *self.waiting.values()]

    async def _persist_disconnected(self, session: Session) -> None:
        # Under the user's lock, and only while the session still waits: a Resume that
        # got in first must not be overwritten with "disconnected" (and a short TTL).
        try:
            await self._locked(session.user_id, lambda: self._write_disconnected(session))
        except StoreUnavailable:
            self._unsaved[session.session_id] = session
            raise

    def store_recovered(self) -> None:
        """The store answers again (the breaker's on_recovery): write the disconnects it
        missed, or, for a session that ended meanwhile (it expired, say), remove the
        record that still calls it connected. Left as it was, such a record would keep
        the session "connected" for token_ttl, refusing the user's logins under
        duplicate_login = reject, and resumable after its session_ttl."""
        unsaved, self._unsaved = self._unsaved, {}
        for session in unsaved.values():
            if self.waiting.get(session.session_id) is session:
                self._spawn(self._persist_disconnected(session))
            elif not self.holds(session):
                self._spawn(self._forget(session))

    async def _forget(self, session: Session) -> None:
        async def work() -> None:
            key = _session_key(session.session_id)
            record = await self.store.hgetall(key)
            # Only if it is still ours: a Resume elsewhere may have taken it over.
            if self._ours(record, session):
                await self._delete(session.session_id, session.user_id, session.token_hash)

        await self._locked(session.user_id, work)

    async def _write_disconnected(self, session: Session) -> None:
        if session.conn is not None:
            return
        store = self.store
        key = _session_key(session.session_id)
        # Only if it is still ours: a Resume elsewhere may already have moved it (the same
        # token, another node), and this node's kick for it may not have come yet.
        if not self._ours(await store.hgetall(key), session):
            return
        batch = store.batch()
        batch.hset(
            key,
            {
                "conn": b"",
                "data": _encode(session.data),
                "pseq": str(session.pushes.last_seq).encode(),
            },
        )
        batch.expire(key, self.session_ttl)
        await batch.run()

    def _ours(self, record: dict[str, bytes], session: Session) -> bool:
        """Whether the store's `record` is still `session` as held by this node."""
        return (
            record.get("token") == session.token_hash.encode()
            and record.get("node") == self.node.encode()
        )

    async def save_pushes(self, sessions: list[Session]) -> None:
        """Write each session's unacknowledged pushes into its record (at a stop), so a
        Resume on the next process replays them with their own sequence numbers.

        Only at a stop: written at every disconnect, each stalled member of a busy room
        would keep a private copy of up to push_buffer pushes in the store, where the live
        buffer shares them (docs/bench.md, "Figures behind the server's design")."""
        store = self.store
        failed = 0
        reason: StoreError | None = None
        for session in sessions:
            key = _session_key(session.session_id)
            try:
                if not self._ours(await store.hgetall(key), session):
                    continue
                await store.hset(
                    key,
                    {
                        "pseq": str(session.pushes.last_seq).encode(),
                        "pbuf": _encode_pushed(session.pushes.entries()),
                        # What a Resume elsewhere may trust: these are all there were.
                        "pclean": b"1",
                    },
                )
            except StoreError as exc:
                failed += 1
                reason = exc
        if reason is not None:
            # One line for all of them: with the store down, each would say the same.
            log.error(
                "pushes of %d sessions not saved (a Resume will report push_gap): %s",
                failed,
                reason,
            )

    def connection_closed(self, conn: Connection) -> None:
        """The connection is gone: its session (if any) waits `session_ttl` for a Resume."""
        session = conn.session
        if session is not None:
            self._detach(session, EndReason.CLOSED)

    # -- lookups ------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        """The live session on this node with that id."""
        return self.live.get(session_id)

    def local_sessions(self, user_id: str) -> list[Session]:
        """The user's sessions connected to this node (no store round trip)."""
        return list(self._by_user.get(user_id, ()))

    async def sessions_of(self, user_id: str) -> list[SessionInfo]:
        """Every session of the user the store knows, on any node, connected or waiting
        for a Resume. Ids whose session expired are pruned from the user's set."""
        store = self.store
        infos: list[SessionInfo] = []
        stale: list[bytes] = []
        for raw in await store.smembers(_user_key(user_id)):
            record = await store.hgetall(_session_key(raw.decode()))
            if not record:
                stale.append(raw)
                continue
            infos.append(_info(raw.decode(), record))
        if stale:
            await store.srem(_user_key(user_id), *stale)
        infos.sort(key=lambda info: info.created_ms)
        return infos

    async def by_token(self, token: str) -> SessionInfo | None:
        """The session `token` opens, if it still does."""
        hashed = token_hash(token)
        sid = await self.store.get(_token_key(hashed))
        if sid is None:
            return None
        record = await self.store.hgetall(_session_key(sid.decode()))
        if not record or record.get("token") != hashed.encode():
            return None
        return _info(sid.decode(), record)

    async def user_of_token(self, token: str) -> str | None:
        info = await self.by_token(token)
        return info.user_id if info is not None else None

    async def where(self, user_id: str) -> list[tuple[str, int]]:
        """(node, connection id) of each connected session of the user."""
        return [(i.node, i.conn_id) for i in await self.sessions_of(user_id) if i.connected]

    async def remove_user(self, user_id: str) -> int:
        """End every session of the user: tokens refused, connections on this node closed
        with GoAway SESSION_REPLACED. Returns how many sessions ended."""

        async def work() -> int:
            infos = await self.sessions_of(user_id)
            for info in infos:
                await self._end(info.session_id, EndReason.REMOVED)
            for session in self.local_sessions(user_id):  # live but already gone from the store
                self._kick(session, EndReason.REMOVED, _KICK_TEXT[EndReason.REMOVED])
            return len(infos)

        result: int = await self._locked(user_id, work)
        return result


def _drop(index: dict[str, list[Session]], session: Session) -> None:
    same_user = index.get(session.user_id)
    if same_user is not None and session in same_user:
        same_user.remove(session)
        if not same_user:
            del index[session.user_id]


_KICK_TEXT = {
    EndReason.REPLACED: "the same user logged in elsewhere",
    EndReason.REMOVED: "the session was ended by the server",
    EndReason.RESUMED_ELSEWHERE: "session resumed on another connection",
}


_decode_pushed = msgspec.msgpack.Decoder(list[tuple[int, int, bytes]]).decode


def _encode_pushed(items: list[Buffered]) -> bytes:
    return _encode(items)


def _load_pushed(raw: bytes | None) -> list[Buffered]:
    if not raw:
        return []
    try:
        return _decode_pushed(raw)
    except msgspec.DecodeError:
        log.warning("a session's stored pushes are not readable; resuming without them")
        return []


def _load_data(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        return _decode_data(raw)
    except msgspec.DecodeError:
        log.warning("session data is not a msgpack map; starting from an empty one")
        return {}


def _info(sid: str, record: dict[str, bytes]) -> SessionInfo:
    conn = record.get("conn", b"")
    return SessionInfo(
        session_id=sid,
        user_id=record.get("user", b"").decode(),
        device=record.get("device", b"").decode(),
        node=record.get("node", b"").decode(),
        conn_id=int(conn) if conn else 0,
        created_ms=int(record.get("created", b"0")),
        expires_at_ms=int(record.get("expires", b"0")),
    )
