"""The TTL key-value store behind sessions, tokens and the handlers' ``ctx.cache``.

One interface (:class:`Store`), two backends: :class:`MemoryStore`, embedded and the
default, and :class:`RedisStore`, for state shared by several nodes. Callers get one
from :func:`open_store`, so the choice stays a line of config. See ``docs/store.md``.
"""

from __future__ import annotations

import os
from typing import Literal

from server.store.base import DEFAULT_SCAN_LIMIT, NamespacedStore, Store
from server.store.breaker import BreakerState, BreakerStore, StoreDown, is_reported
from server.store.errors import StoreError, StoreTypeError, StoreUnavailable
from server.store.memory import MemoryStore
from server.store.redis import DEFAULT_URL, RedisStore

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "BreakerState",
    "BreakerStore",
    "MemoryStore",
    "NamespacedStore",
    "RedisStore",
    "Store",
    "StoreDown",
    "StoreError",
    "StoreTypeError",
    "StoreUnavailable",
    "is_reported",
    "open_store",
]


async def open_store(
    kind: Literal["memory", "redis"] = "memory",
    *,
    redis_url: str = DEFAULT_URL,
    redis_max_connections: int = 64,
    redis_connect_timeout: float = 2.0,
    redis_timeout: float = 2.0,
    snapshot_path: str | os.PathLike[str] | None = None,
    snapshot_interval: float = 60.0,
    max_keys: int | None = None,
    sweep_interval: float = 1.0,
    append_only: bool = False,
    append_fsync: float = 1.0,
) -> Store:
    """A ready store of the given kind; each backend reads only its own options.

    memory: restores `snapshot_path` if it exists (a bad file is reported on the
    store's ``restore_error`` and skipped), snapshots there every `snapshot_interval`
    seconds and on close (None: keeps nothing across restarts); `max_keys` caps it with
    LRU eviction; `sweep_interval` is the expiry sweep's period; `append_only` also logs
    every write beside the snapshot, written and fsynced every `append_fsync` seconds.
    redis: connects to `redis_url` and raises StoreUnavailable, naming the address,
    when Redis does not answer, so a misconfigured node fails at start, not at the first
    login.
    """
    if kind == "memory":
        if append_only and snapshot_path is None:
            # A StoreError, so that `tickwire serve` refuses to start and says why.
            raise StoreError("the append-only log needs a snapshot path (store_snapshot_path)")
        return await MemoryStore.open(
            snapshot_path,
            snapshot_interval=snapshot_interval,
            max_keys=max_keys,
            sweep_interval=sweep_interval,
            append_only=append_only,
            append_fsync=append_fsync,
        )
    if kind == "redis":
        return await RedisStore.connect(
            redis_url,
            max_connections=redis_max_connections,
            connect_timeout=redis_connect_timeout,
            timeout=redis_timeout,
        )
    raise ValueError(f"unknown store kind {kind!r}; expected 'memory' or 'redis'")
