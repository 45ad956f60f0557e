"""The one key-value interface behind sessions, tokens and the handlers' ``ctx.cache``.

Everything that keeps state between requests talks to a :class:`Store`, so a deployment
picks a backend in config (embedded memory, or Redis when several nodes must share
state) without any caller changing. The interface is deliberately the subset of Redis
semantics both backends can honour exactly; the shared test suite in ``tests/store``
holds them to it.

Conventions, the same on every backend:

- keys are ``str``; values, hash field values and set members are ``bytes`` (callers
  choose their own encoding, usually msgspec or protobuf);
- ``ttl`` is in seconds as a ``float``; ``None`` means the key never expires; a TTL must
  be finite and greater than 0 (Redis rounds it up to whole milliseconds);
- an expired key is gone: no operation ever returns it, even before a sweep removes it;
- writing a string (``set``, ``compare_and_set``) replaces the key whatever it held and
  sets its expiry from ``ttl``; ``incr``, ``hset`` and ``sadd`` keep the key's expiry;
- a hash or set whose last field or member is removed ceases to exist;
- an operation on a key of the wrong kind raises :class:`StoreTypeError`; a backend that
  cannot be reached raises :class:`StoreUnavailable`; nothing else escapes but
  :class:`StoreError` (and ``TypeError``/``ValueError`` for wrong arguments).

Writes that need no answer in between can go together in a :class:`Batch`
(``store.batch()``): on Redis one round trip instead of one per write, which is most of
what a login costs there.
"""

from __future__ import annotations

import builtins
import math
from abc import ABC, abstractmethod
from types import TracebackType

#: How many keys :meth:`Store.scan_prefix` returns at most unless told otherwise: admin
#: lookups must not be able to pull a whole production keyspace into one list.
DEFAULT_SCAN_LIMIT = 1000


#: The largest TTL both backends honour the same way: Redis counts milliseconds in a
#: signed 64-bit integer; 2**53 ms keeps the float-to-ms conversion exact too.
MAX_TTL = 2**53 / 1000


def check_ttl(ttl: float) -> float:
    """Refuse a TTL no backend could honour the same way (0, negative, NaN, infinite)."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be seconds as a float or None, not {type(ttl).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a finite number of seconds > 0, not {ttl!r}")
    if ttl > MAX_TTL:
        raise ValueError(
            f"ttl must be at most {MAX_TTL:g} s (what Redis can count in ms), not {ttl!r}"
        )
    return float(ttl)


def check_value(value: object, what: str = "value") -> bytes:
    """Values are bytes on every backend; a ``str`` would round-trip as ``bytes`` through
    Redis but stay ``str`` in memory, so it is refused up front on both."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_fields(mapping: dict[str, bytes]) -> dict[str, bytes]:
    """A hash's fields as they will be stored: str names, bytes values (see check_value)."""
    fields: dict[str, bytes] = {}
    for field, value in mapping.items():
        if not isinstance(field, str):
            raise TypeError(f"hash field names must be str, not {type(field).__name__}")
        fields[field] = check_value(value)
    return fields


#: What each queued operation of a :class:`Batch` returns, as its single call would.
BatchResult = bool | int


class Batch(ABC):
    """Writes queued to run together: ``batch = store.batch()``, queue with ``set``,
    ``hset``, ``expire``, ``sadd``, ``srem`` and ``delete``, then
    ``results = await batch.run()``.

    Why: on Redis every call is a network round trip plus redis-py's work, so a login's
    five writes cost five of them; a batch is one (a MULTI/EXEC transaction). Only
    writes whose answer nothing needs in between belong in one.

    The contract, the same on every backend:

    - each queue method checks its arguments at once, with the single call's checks
      (TypeError/ValueError), so a bad argument is raised where it was written and
      nothing of the batch has run;
    - ``run()`` executes the operations in the order queued and returns their results
      in a list, each what the single call returns (``set``: True; ``expire``: whether
      the key existed; the others: a count);
    - **a failing operation does not stop the others** (it is what Redis does inside
      MULTI/EXEC): every operation runs, and ``run()`` then raises the error of the
      first one that failed (StoreTypeError for a key of the wrong kind). Nothing is
      undone; the caller cleans up as after a failed single call;
    - StoreUnavailable: the backend could not be reached. On Redis the transaction
      then ran in full or not at all (usually not at all), as a single command either
      ran or did not;
    - a batch runs once; queueing into or running a batch that ran is a RuntimeError.

    Only idempotent writes can be queued (no ``incr``, no ``set(nx=True)``, no
    compare-and-set): running the same batch twice leaves what running it once
    leaves. That is what makes the Redis backend's one retry after a lost connection
    safe for a batch too (see server/store/redis.py).

    Atomicity is not part of the contract: Redis runs the transaction with nothing in
    between, and the memory store never suspends in the middle, but another backend
    need not do either.
    """

    __slots__ = ("_ran",)

    def __init__(self) -> None:
        self._ran = False

    def _open(self) -> None:
        if self._ran:
            raise RuntimeError("this batch has run already; start another with store.batch()")

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Queue :meth:`Store.set` (without `nx`: a conditional write is not idempotent)."""
        self._open()
        self._set(key, check_value(value), None if ttl is None else check_ttl(ttl))

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        """Queue :meth:`Store.hset`."""
        self._open()
        self._hset(key, check_fields(mapping))

    def expire(self, key: str, ttl: float | None) -> None:
        """Queue :meth:`Store.expire`."""
        self._open()
        self._expire(key, None if ttl is None else check_ttl(ttl))

    def sadd(self, key: str, *members: bytes) -> None:
        """Queue :meth:`Store.sadd`."""
        self._open()
        self._sadd(key, [check_value(m, "member") for m in members])

    def srem(self, key: str, *members: bytes) -> None:
        """Queue :meth:`Store.srem`."""
        self._open()
        self._srem(key, [check_value(m, "member") for m in members])

    def delete(self, *keys: str) -> None:
        """Queue :meth:`Store.delete`."""
        self._open()
        self._delete(list(keys))

    async def run(self) -> list[BatchResult]:
        """Execute the queued operations, in order; their results, or the first error
        (after every operation ran, see the class docstring)."""
        self._open()
        self._ran = True
        return await self._run()

    # What a backend implements; the arguments arrive checked (bytes, a valid TTL).

    @abstractmethod
    def _set(self, key: str, value: bytes, ttl: float | None) -> None: ...

    @abstractmethod
    def _hset(self, key: str, fields: dict[str, bytes]) -> None: ...

    @abstractmethod
    def _expire(self, key: str, ttl: float | None) -> None: ...

    @abstractmethod
    def _sadd(self, key: str, members: list[bytes]) -> None: ...

    @abstractmethod
    def _srem(self, key: str, members: list[bytes]) -> None: ...

    @abstractmethod
    def _delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    async def _run(self) -> list[BatchResult]: ...


class NamespacedBatch(Batch):
    """A namespaced view's batch: the prefix goes before every key, and the operations
    go into the underlying store's batch, so it is still one round trip on Redis."""

    __slots__ = ("_inner", "_prefix")

    def __init__(self, inner: Batch, prefix: str) -> None:
        super().__init__()
        self._inner = inner
        self._prefix = prefix

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._inner.set(self._prefix + key, value, ttl=ttl)

    def _hset(self, key: str, fields: dict[str, bytes]) -> None:
        self._inner.hset(self._prefix + key, fields)

    def _expire(self, key: str, ttl: float | None) -> None:
        self._inner.expire(self._prefix + key, ttl)

    def _sadd(self, key: str, members: list[bytes]) -> None:
        self._inner.sadd(self._prefix + key, *members)

    def _srem(self, key: str, members: list[bytes]) -> None:
        self._inner.srem(self._prefix + key, *members)

    def _delete(self, keys: list[str]) -> None:
        p = self._prefix
        self._inner.delete(*[p + k for k in keys])

    async def _run(self) -> list[BatchResult]:
        return await self._inner.run()


class Store(ABC):
    """The async TTL key-value store. Every method is a coroutine so that a network
    backend fits behind the same calls; the memory backend never actually suspends."""

    # -- strings ---------------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value of a string key, or None when there is none (or it expired)."""

    @abstractmethod
    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        """Store `value` under `key`, replacing whatever the key held and its expiry.

        `nx`: only when the key does not exist. Returns whether the value was written
        (always True without `nx`).
        """

    @abstractmethod
    async def incr(self, key: str, amount: int = 1) -> int:
        """Add `amount` to the decimal integer stored as a string (0 when absent) and
        return the result. The key keeps its expiry. A value that is not a 64-bit decimal
        integer raises StoreTypeError; a result beyond 64 bits raises StoreError."""

    @abstractmethod
    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Atomically write `value` only if the key holds `expected` now.

        `expected` None means "only if the key is absent" (a create that cannot race).
        When it writes, it writes like :meth:`set`: `ttl` becomes the key's expiry (None:
        none). Returns whether it wrote; of many concurrent calls expecting the same
        value, exactly one wins. A key holding a hash or a set raises StoreTypeError.
        """

    # -- any key ---------------------------------------------------------------------

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove the keys, of any kind; returns how many existed."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether the key exists (of any kind, not expired)."""

    @abstractmethod
    async def expire(self, key: str, ttl: float | None) -> bool:
        """Give an existing key a new expiry, `ttl` seconds from now; None removes its
        expiry. Returns False (and does nothing) when the key does not exist."""

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds the key has left, or None both when the key does not exist and when it
        never expires: callers that must tell the two apart ask :meth:`exists` too. One
        None keeps the common case (``if remaining := await store.ttl(k)``) simple,
        where Redis' -2/-1 codes would leak into every caller."""

    @abstractmethod
    async def scan_prefix(self, prefix: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[str]:
        """Up to `limit` existing keys that start with `prefix`, in no particular order.

        For admin lookups (which sessions does this node hold?), not for request paths:
        it walks the keyspace, so its cost grows with the store, but the answer stays
        bounded by `limit`.
        """

    # -- hashes ----------------------------------------------------------------------

    @abstractmethod
    async def hset(self, key: str, mapping: dict[str, bytes]) -> int:
        """Set fields of the hash at `key` (created when absent; its expiry is kept).
        Returns how many fields are new."""

    @abstractmethod
    async def hget(self, key: str, field: str) -> bytes | None:
        """One field of a hash, None when the key or the field is absent."""

    @abstractmethod
    async def hgetall(self, key: str) -> dict[str, bytes]:
        """Every field of a hash; {} when the key is absent."""

    @abstractmethod
    async def hdel(self, key: str, *fields: str) -> int:
        """Remove fields of a hash; returns how many existed. The last one removes the key."""

    # -- sets ------------------------------------------------------------------------

    @abstractmethod
    async def sadd(self, key: str, *members: bytes) -> int:
        """Add members to the set at `key` (created when absent; its expiry is kept).
        Returns how many are new."""

    @abstractmethod
    async def srem(self, key: str, *members: bytes) -> int:
        """Remove members; returns how many were there. The last one removes the key."""

    @abstractmethod
    async def smembers(self, key: str) -> builtins.set[bytes]:
        """Every member of a set; an empty set when the key is absent."""

    @abstractmethod
    async def sismember(self, key: str, member: bytes) -> bool:
        """Whether `member` is in the set at `key`."""

    # -- lifecycle -------------------------------------------------------------------

    async def ping(self) -> None:
        """Round-trip to the backend; StoreUnavailable when it does not answer. What the
        circuit breaker probes with (server/store/breaker.py). An embedded backend is
        always there."""
        return None

    @property
    def restored_clean(self) -> bool:
        """False when the contents came back from a state that a crash left behind (a
        memory snapshot written while the previous process was still running): records
        that say "saved cleanly at a stop" may then be older than what happened after
        them. True for a backend that keeps its own state (Redis) and a fresh store."""
        return True

    @abstractmethod
    async def close(self) -> None:
        """Release the backend (connections, background tasks; the memory backend writes
        its final snapshot). The store must not be used afterwards."""

    @abstractmethod
    def batch(self) -> Batch:
        """A new :class:`Batch` of writes on this store, run with ``await batch.run()``:
        Redis sends the whole batch as one transaction, the memory store runs its write
        code directly."""

    def namespaced(self, prefix: str) -> Store:
        """A view of this store that puts `prefix` before every key it is given and takes
        it off every key it returns, so each app's ``ctx.cache`` cannot see or clobber
        another's keys, nor the sessions'.

        The prefix is used verbatim: end it with a separator (``"app:game:"``), or
        ``namespaced("a")`` and ``namespaced("ab")`` could meet on ``"abx"``. Closing a
        view does nothing; the store's owner closes the store.
        """
        return NamespacedStore(self, prefix)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class NamespacedStore(Store):
    """A prefixing view over another store (see :meth:`Store.namespaced`).

    It adds one string concatenation per key and nothing else: atomicity (CAS, NX) and
    errors are the underlying store's, because every call maps onto exactly one call
    (and a batch onto one batch of the store).
    """

    def __init__(self, base: Store, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("a namespace prefix must be a non-empty str")
        self.base = base
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"NamespacedStore({self.base!r}, {self.prefix!r})"

    def namespaced(self, prefix: str) -> Store:
        # Flattened, so a view of a view costs one concatenation per key, not two.
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("a namespace prefix must be a non-empty str")
        return NamespacedStore(self.base, self.prefix + prefix)

    def batch(self) -> Batch:
        return NamespacedBatch(self.base.batch(), self.prefix)

    async def get(self, key: str) -> bytes | None:
        return await self.base.get(self.prefix + key)

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        return await self.base.set(self.prefix + key, value, ttl=ttl, nx=nx)

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self.base.incr(self.prefix + key, amount)

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        return await self.base.compare_and_set(self.prefix + key, expected, value, ttl=ttl)

    async def delete(self, *keys: str) -> int:
        p = self.prefix
        return await self.base.delete(*[p + k for k in keys])

    async def exists(self, key: str) -> bool:
        return await self.base.exists(self.prefix + key)

    async def expire(self, key: str, ttl: float | None) -> bool:
        return await self.base.expire(self.prefix + key, ttl)

    async def ttl(self, key: str) -> float | None:
        return await self.base.ttl(self.prefix + key)

    async def scan_prefix(self, prefix: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[str]:
        n = len(self.prefix)
        return [k[n:] for k in await self.base.scan_prefix(self.prefix + prefix, limit=limit)]

    async def hset(self, key: str, mapping: dict[str, bytes]) -> int:
        return await self.base.hset(self.prefix + key, mapping)

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self.base.hget(self.prefix + key, field)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        return await self.base.hgetall(self.prefix + key)

    async def hdel(self, key: str, *fields: str) -> int:
        return await self.base.hdel(self.prefix + key, *fields)

    async def sadd(self, key: str, *members: bytes) -> int:
        return await self.base.sadd(self.prefix + key, *members)

    async def srem(self, key: str, *members: bytes) -> int:
        return await self.base.srem(self.prefix + key, *members)

    async def smembers(self, key: str) -> builtins.set[bytes]:
        return await self.base.smembers(self.prefix + key)

    async def sismember(self, key: str, member: bytes) -> bool:
        return await self.base.sismember(self.prefix + key, member)

    async def ping(self) -> None:
        await self.base.ping()

    @property
    def restored_clean(self) -> bool:
        return self.base.restored_clean

    async def close(self) -> None:
        """Nothing: the view does not own the store, and one app shutting down must not
        close the store every other app and the sessions still use."""
