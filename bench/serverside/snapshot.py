"""A memory-store snapshot of N disconnected sessions, for `tickwire bench restore`.

Made with the server's own `SessionManager` on a `MemoryStore`, the code path a
LoginRequest takes after the password check, so the snapshot holds exactly what a
stopping server would write.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

from server.sessions import DuplicateLogin, SessionManager
from server.store import MemoryStore

if TYPE_CHECKING:
    from server.connection import Connection

#: Sessions in the snapshot wait this long for a Resume (the server's default is 120 s):
#: long enough that none expires while the bench runs, and it changes nothing the
#: restore does (every key has an expiry either way).
SESSION_TTL_S = 3600.0
TOKEN_TTL_S = 86_400.0


class SampledSession(NamedTuple):
    user: str
    session_id: str
    token: str


class BuiltSnapshot(NamedTuple):
    path: Path
    sessions: int
    keys: int
    size: int
    build_s: float
    write_s: float
    sample: list[SampledSession]


class _OfflineConnection:
    """What `SessionManager.login` and `connection_closed` use of a connection."""

    __slots__ = ("closing", "id", "session")

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.closing = False
        self.session: object = None

    def set_session(self, session: object) -> None:
        self.session = session

    def close_with(self, code: int, message: str, **kwargs: object) -> None:
        self.closing = True


async def build_snapshot(path: Path, sessions: int, sample: int, *, seed: int = 0) -> BuiltSnapshot:
    """Write a memory-store snapshot at `path` holding `sessions` disconnected sessions of
    as many users; return it with `sample` of them (user, session id, token) drawn at
    random."""
    path.unlink(missing_ok=True)
    store = await MemoryStore.open(path, snapshot_interval=0)
    manager = SessionManager(
        session_ttl=SESSION_TTL_S,
        token_ttl=TOKEN_TTL_S,
        duplicate_login=DuplicateLogin.REPLACE,
        node="bench-restore",
    )
    manager.bind(store)
    picks = set(random.Random(seed).sample(range(sessions), min(sample, sessions)))
    sampled: list[SampledSession] = []
    t0 = time.monotonic()
    for i in range(sessions):
        conn = cast("Connection", _OfflineConnection(i + 1))
        session, token = await manager.login(conn, f"user{i}", "bench")
        if i in picks:
            sampled.append(SampledSession(session.user_id, session.session_id, token))
        manager.connection_closed(conn)
        if i % 1000 == 999:
            await manager.flush()  # the disconnect writes, before they pile up
    await manager.flush()
    keys = len(store)
    t1 = time.monotonic()
    await store.close()
    t2 = time.monotonic()
    return BuiltSnapshot(path, sessions, keys, path.stat().st_size, t1 - t0, t2 - t1, sampled)
