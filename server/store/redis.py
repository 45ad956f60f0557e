"""The shared store: Redis, for when several nodes must see the same sessions and tokens.

Built on ``redis.asyncio`` with the hiredis reply parser (pulled in by the
``redis[hiredis]`` requirement and picked by redis-py whenever it is importable), over
one bounded, blocking connection pool: its size caps how many commands a node has in
flight, and a command beyond it waits (up to ``timeout``) for a free connection instead
of failing, so a burst of logins queues here rather than opening thousands of sockets
or erroring out (redis-py's plain pool raises "Too many connections").

Choices that are not redis-py's defaults, and why:

- **Timeouts on connect and on every read** (``connect_timeout``, ``timeout``): a Redis
  that stops answering must fail a request, not hang the handler forever.
- **One retry, on connection errors only** (``retries``): after Redis restarts, every
  pooled connection is dead and the first command on each fails; one retry on a fresh
  connection hides that. Timeouts are not retried, because the command may have run:
  a second INCR or compare-and-set would apply twice. (A connection that dies after
  Redis received a command is the one case where a retried command can run twice.)
- **compare_and_set is a Lua script**, so the read and the write happen inside Redis
  with nothing in between; it is sent by SHA (EVALSHA) and, when Redis does not know
  the script (after a restart or SCRIPT FLUSH), once in full (EVAL), which also caches it.
- **A batch is one MULTI/EXEC transaction** (:class:`RedisBatch`), read with
  ``raise_on_error=False`` so that every reply is translated as its single command's
  would be. It is retried like a single command (once, after a connection error, never
  after a timeout), and that is safe because Redis runs a transaction only once it has
  its EXEC, in full, and a batch holds only idempotent writes: a replay after a lost
  reply writes again what was written (the counts it returns may then be lower, as for
  a retried single SADD).
- **Every redis-py exception is translated** into StoreUnavailable, StoreTypeError or
  StoreError, so callers never import redis.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import os
import re
from collections.abc import Callable, Sized
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.store.base import (
    DEFAULT_SCAN_LIMIT,
    Batch,
    BatchResult,
    Store,
    check_ttl,
    check_value,
)
from server.store.errors import StoreError, StoreTypeError, StoreUnavailable

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"

#: ARGV: has_expected ("1"/"0"), expected, value, ttl in ms ("" for none).
CAS_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""
CAS_SHA: Final = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()

_FAILURES: Final = (RedisError, OSError)
_GLOB = re.compile(r"([*?\[\]\\])")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _ms(ttl: float) -> int:
    """Redis counts whole milliseconds; round up, so a TTL never becomes 0 (an error)
    nor ends earlier than asked."""
    return max(1, math.ceil(round(ttl * 1000, 6)))


def _redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def _connection_reason(exc: BaseException) -> str:
    """The OS-level cause of a connection failure ("Connection refused"), which redis-py
    buries in a sentence that repeats the address we already put in the message."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    # "Error 111 connecting to 127.0.0.1:6390. Connection refused." -> the last sentence
    match = re.match(r"Error \S+ (?:connecting to|while writing to|reading from) \S+?\. (.+)", text)
    return (match.group(1) if match else text).rstrip(".")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _own_words(exc: ResponseError) -> str:
    """Redis' message for a refused transaction, without what redis-py wraps it in: the
    command and its arguments, which may be session data or a token's hash."""
    text = str(exc)
    match = re.search(r"of pipeline caused error: \((['\"])(.*)\1,\)$", text, re.S)
    return match.group(2) if match else text.split(" of pipeline caused error: ")[-1]


def _first_int(replies: list[Any]) -> BatchResult:
    return int(replies[0])


def _first_bool(replies: list[Any]) -> BatchResult:
    return bool(replies[0])


def _second_bool(replies: list[Any]) -> BatchResult:
    return bool(replies[1])


def _zero(replies: list[Any]) -> BatchResult:
    return 0


class RedisBatch(Batch):
    """A batch sent as one MULTI/EXEC transaction: one round trip whatever its length.

    Each operation queues the commands its single call sends (with the same TTL-to-ms
    rounding), and records how many replies are its own and how to turn them into its
    result, so that results and errors come out as the single calls' would.
    """

    __slots__ = ("_ops", "_pipe", "_store")

    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self._store = store
        # No connection is taken before execute(), so an abandoned batch holds nothing.
        self._pipe = store._redis.pipeline(transaction=True)
        #: Per operation: its name and key (for error messages), how many replies are
        #: its own, and the function that makes its result of them.
        self._ops: list[tuple[str, str | None, int, Callable[[list[Any]], BatchResult]]] = []

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._pipe.set(key, value, px=None if ttl is None else _ms(ttl))
        self._ops.append(("set", key, 1, _first_bool))

    def _counted(self, op: str, key: str | None, items: Sized, send: Callable[[], object]) -> None:
        """Queue a command that answers a count. As its single call: with nothing to act
        on (no fields, members or keys) nothing is sent, nothing checked, and it is 0."""
        if not items:
            self._ops.append((op, key, 0, _zero))
            return
        send()
        self._ops.append((op, key, 1, _first_int))

    def _hset(self, key: str, fields: dict[str, bytes]) -> None:
        mapping: dict[Any, bytes] = dict(fields)  # redis-py's Mapping key type is a wide union
        self._counted("hset", key, fields, lambda: self._pipe.hset(key, mapping=mapping))

    def _expire(self, key: str, ttl: float | None) -> None:
        if ttl is not None:
            self._pipe.pexpire(key, _ms(ttl))
            self._ops.append(("expire", key, 1, _first_bool))
            return
        # As RedisStore.expire: PERSIST cannot tell "no key" from "no expiry"; EXISTS can.
        self._pipe.persist(key)
        self._pipe.exists(key)
        self._ops.append(("expire", key, 2, _second_bool))

    def _sadd(self, key: str, members: list[bytes]) -> None:
        self._counted("sadd", key, members, lambda: self._pipe.sadd(key, *members))

    def _srem(self, key: str, members: list[bytes]) -> None:
        self._counted("srem", key, members, lambda: self._pipe.srem(key, *members))

    def _delete(self, keys: list[str]) -> None:
        named = keys[0] if len(keys) == 1 else None
        self._counted("delete", named, keys, lambda: self._pipe.delete(*keys))

    async def _run(self) -> list[BatchResult]:
        ops = self._ops
        if not any(n for _, _, n, _ in ops):
            return [convert([]) for _, _, _, convert in ops]  # nothing to send
        try:
            # raise_on_error=False: a command's error comes back in its place, and is
            # translated below as its single call's would be, naming its key. An error
            # for the whole transaction (EXECABORT: out of memory, say) is raised here,
            # and then nothing ran.
            replies = await self._pipe.execute(raise_on_error=False)
        except ResponseError as exc:
            raise StoreError(
                f"redis at {self._store.address}: a batch was refused whole, none of it "
                f"ran: {_own_words(exc)}"
            ) from exc
        except _FAILURES as exc:
            self._store._fail(exc, "MULTI")
        results: list[BatchResult] = []
        failed: tuple[BaseException, str, str | None] | None = None
        at = 0
        for op, key, n, convert in ops:
            own = replies[at : at + n]
            at += n
            error = next((r for r in own if isinstance(r, BaseException)), None)
            if error is None:
                results.append(convert(own))
            elif failed is None:
                failed = (error, op, key)
        if failed is not None:
            self._store._fail(*failed)
        return results


class RedisStore(Store):
    """A Store on a Redis server. Open it with ``await RedisStore.connect(url, ...)``,
    which fails with StoreUnavailable at once, naming the address, when Redis cannot be
    reached: a node configured for Redis must not start serving without it."""

    def __init__(
        self,
        client: Redis,
        pool: BlockingConnectionPool,
        *,
        address: str,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self._redis = client
        self._pool = pool
        self.address = address
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_connections: int = pool.max_connections

    def __repr__(self) -> str:
        return f"RedisStore({self.address})"

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        max_connections: int = 64,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        retries: int = 1,
    ) -> RedisStore:
        """Connect to `url` (``redis://[:password@]host:port/db``, ``rediss://`` for
        TLS, ``unix:///path``) and PING it. `max_connections` bounds the pool;
        `connect_timeout` and `timeout` (every reply) are in seconds; `retries` is how
        many times a command is retried after a connection error (never after a
        timeout)."""
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout,  # how long a command waits for a free pooled connection
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                retry=Retry(
                    ExponentialWithJitterBackoff(base=0.01, cap=0.2),
                    retries,
                    supported_errors=(RedisConnectionError,),
                ),
            )
        except (ValueError, TypeError) as exc:
            raise StoreError(f"invalid redis URL {_redact(url)}: {exc}") from None
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            address = f"unix:{kwargs['path']}"
        else:
            address = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        store = cls(
            Redis(connection_pool=pool),
            pool,
            address=address,
            connect_timeout=connect_timeout,
            timeout=timeout,
        )
        try:
            await store.ping()
        except BaseException:
            await store.close()
            raise
        return store

    def _fail(self, exc: BaseException, op: str, key: str | None = None) -> NoReturn:
        """Raise the Store error for a redis-py (or socket) exception."""
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            if "connecting" in str(exc):
                reason = f"no connection within {self.connect_timeout:g} s"
            else:
                reason = f"no answer to {op} within {self.timeout:g} s"
            raise StoreUnavailable("redis", self.address, reason) from exc
        if isinstance(exc, RedisConnectionError) and str(exc) == "No connection available.":
            raise StoreUnavailable(
                "redis",
                self.address,
                f"all {self.max_connections} pooled connections stayed busy for "
                f"{self.timeout:g} s ({op})",
            ) from exc
        if isinstance(exc, RedisConnectionError | OSError):
            raise StoreUnavailable("redis", self.address, _connection_reason(exc)) from exc
        if isinstance(exc, InvalidResponse):
            raise StoreUnavailable(
                "redis", self.address, f"the server there does not speak Redis' protocol ({exc})"
            ) from exc
        text = str(exc)
        where = f"{op} on key {key!r}" if key is not None else op
        if isinstance(exc, ResponseError):
            if text.startswith("WRONGTYPE"):
                raise StoreTypeError(f"{where}: the key holds another kind of value") from exc
            if "not an integer" in text:
                raise StoreTypeError(f"{where}: its value is not a 64-bit integer") from exc
            if "overflow" in text:
                raise StoreError(f"{where}: the result would overflow 64 bits") from exc
        raise StoreError(f"redis at {self.address}: {where} failed: {text}") from exc

    def batch(self) -> Batch:
        """One MULTI/EXEC transaction: the whole batch in one round trip."""
        return RedisBatch(self)

    async def ping(self) -> None:
        """Round-trip to Redis; StoreUnavailable when it does not answer."""
        try:
            await self._redis.ping()
        except _FAILURES as exc:
            self._fail(exc, "PING")

    async def close(self) -> None:
        try:
            await self._redis.aclose()
            await self._pool.aclose()
        except _FAILURES as exc:
            self._fail(exc, "close")

    # -- strings ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except _FAILURES as exc:
            self._fail(exc, "get", key)
        return None if value is None else _to_bytes(value)

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        value = check_value(value)
        px = None if ttl is None else _ms(check_ttl(ttl))
        try:
            done = await self._redis.set(key, value, px=px, nx=nx)
        except _FAILURES as exc:
            self._fail(exc, "set", key)
        return bool(done)

    async def incr(self, key: str, amount: int = 1) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, not {type(amount).__name__}")
        if not _INT64_MIN <= amount <= _INT64_MAX:
            raise ValueError(f"amount {amount} does not fit 64 bits")
        try:
            return int(await self._redis.incrby(key, amount))
        except _FAILURES as exc:
            self._fail(exc, "incr", key)

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        value = check_value(value)
        args: list[bytes | str] = [
            "0" if expected is None else "1",
            b"" if expected is None else check_value(expected, "expected"),
            value,
            "" if ttl is None else str(_ms(check_ttl(ttl))),
        ]
        try:
            try:
                done = await self._redis.evalsha(CAS_SHA, 1, key, *args)
            except NoScriptError:
                done = await self._redis.eval(CAS_SCRIPT, 1, key, *args)
        except _FAILURES as exc:
            self._fail(exc, "compare_and_set", key)
        return bool(done)

    # -- any key ---------------------------------------------------------------------

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        try:
            return int(await self._redis.delete(*keys))
        except _FAILURES as exc:
            self._fail(exc, "delete", keys[0] if len(keys) == 1 else None)

    async def exists(self, key: str) -> bool:
        try:
            return bool(await self._redis.exists(key))
        except _FAILURES as exc:
            self._fail(exc, "exists", key)

    async def expire(self, key: str, ttl: float | None) -> bool:
        try:
            if ttl is not None:
                return bool(await self._redis.pexpire(key, _ms(check_ttl(ttl))))
            # PERSIST says 0 both for "no key" and "had no expiry"; ask EXISTS in the
            # same round trip to tell them apart.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.persist(key)
                pipe.exists(key)
                _, found = await pipe.execute()
            return bool(found)
        except _FAILURES as exc:
            self._fail(exc, "expire", key)

    async def ttl(self, key: str) -> float | None:
        try:
            ms = int(await self._redis.pttl(key))
        except _FAILURES as exc:
            self._fail(exc, "ttl", key)
        return None if ms < 0 else ms / 1000

    async def scan_prefix(self, prefix: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[str]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        pattern = _GLOB.sub(r"\\\1", prefix) + "*"
        found: dict[str, None] = {}  # SCAN may return a key twice
        cursor = 0
        try:
            while True:
                cursor, batch = await self._redis.scan(
                    cursor, match=pattern, count=max(100, min(limit, 1000))
                )
                for raw in batch:
                    found[_to_str(raw)] = None
                    if len(found) >= limit:
                        return list(found)
                if cursor == 0:
                    return list(found)
        except _FAILURES as exc:
            self._fail(exc, "scan_prefix")

    # -- hashes ----------------------------------------------------------------------

    async def hset(self, key: str, mapping: dict[str, bytes]) -> int:
        if not mapping:
            return 0
        fields: dict[Any, bytes] = {}  # redis-py's Mapping key type is a wide union
        for field, value in mapping.items():
            if not isinstance(field, str):
                raise TypeError(f"hash field names must be str, not {type(field).__name__}")
            fields[field] = check_value(value)
        try:
            return int(await self._redis.hset(key, mapping=fields))
        except _FAILURES as exc:
            self._fail(exc, "hset", key)

    async def hget(self, key: str, field: str) -> bytes | None:
        try:
            value = await self._redis.hget(key, field)
        except _FAILURES as exc:
            self._fail(exc, "hget", key)
        return None if value is None else _to_bytes(value)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        try:
            raw = await self._redis.hgetall(key)
        except _FAILURES as exc:
            self._fail(exc, "hgetall", key)
        return {_to_str(f): _to_bytes(v) for f, v in raw.items()}

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        try:
            return int(await self._redis.hdel(key, *fields))
        except _FAILURES as exc:
            self._fail(exc, "hdel", key)

    # -- sets ------------------------------------------------------------------------

    async def sadd(self, key: str, *members: bytes) -> int:
        if not members:
            return 0
        checked = [check_value(m, "member") for m in members]
        try:
            return int(await self._redis.sadd(key, *checked))
        except _FAILURES as exc:
            self._fail(exc, "sadd", key)

    async def srem(self, key: str, *members: bytes) -> int:
        if not members:
            return 0
        checked = [check_value(m, "member") for m in members]
        try:
            return int(await self._redis.srem(key, *checked))
        except _FAILURES as exc:
            self._fail(exc, "srem", key)

    async def smembers(self, key: str) -> builtins.set[bytes]:
        try:
            raw = await self._redis.smembers(key)
        except _FAILURES as exc:
            self._fail(exc, "smembers", key)
        return {_to_bytes(m) for m in raw}

    async def sismember(self, key: str, member: bytes) -> bool:
        try:
            member = check_value(member, "member")
            # redis-py types the member as str, but sends bytes as they are
            return bool(await self._redis.sismember(key, member))  # type: ignore[arg-type]
        except _FAILURES as exc:
            self._fail(exc, "sismember", key)
