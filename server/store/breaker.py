"""A circuit breaker in front of the store, so that a dead Redis costs a request nothing.

Without it, every request that needs the store while Redis is down waits for the
connection to fail (refused: at once; a hung Redis: the whole ``timeout``), and each
failure was an INTERNAL answer with a traceback in the log. With it:

- **closed** (the normal state): calls go through. A call that finds the backend
  unreachable (StoreUnavailable) counts a failure; a call that reaches it (whatever it
  answers) resets the count. The first failure of an outage logs its one WARNING on
  ``tickwire.store``; `failures` failures in a row **open** the breaker. A call that
  reaches the store before that ends the outage (one INFO line).
- **open**: every call fails at once with :class:`StoreDown`, without touching the
  backend. Every `probe_interval` seconds a background task probes it.
- **half-open**: the probe (the backend's ``ping``) is in flight; calls still fail
  fast. Its success closes the breaker (one INFO line saying how long the outage lasted
  and how many calls were refused, then the ``on_recovery`` callbacks); its failure
  opens it again for another `probe_interval`. Recovery needs no restart, no operator
  and no request.

:class:`StoreDown` is a StoreUnavailable (store code keeps catching what it caught) and a
:class:`~server.errors.HandlerError` with code OVERLOADED and a message that says when to
retry, so a handler that lets it through answers that typed Error, never INTERNAL, and
the middleware logs nothing. Every StoreUnavailable that comes out of the breaker is a
StoreDown, the ones before it opens too: the breaker has the outage's one warning, so a
caller that catches a StoreDown need not log it again.

This is the pattern of resilience libraries (Hystrix, resilience4j, pybreaker), kept to
what the store needs: only unavailability counts (a WRONGTYPE answer means Redis is up),
and the probe is a PING rather than a request, so no caller ever waits on a dead store
once the breaker is open.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import TypeVar

from protocol.errors import ErrorCode
from server.errors import HandlerError, retry_text
from server.store.base import DEFAULT_SCAN_LIMIT, Batch, BatchResult, Store
from server.store.errors import StoreUnavailable

log = logging.getLogger("tickwire.store")

_T = TypeVar("_T")


class BreakerState(IntEnum):
    """The breaker's state; the value is what the metric reports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class StoreDown(StoreUnavailable, HandlerError):
    """The store cannot be used now: a StoreUnavailable for store code, and for the
    client an OVERLOADED Error whose message says to retry, and when.

    ``str(exc)`` is the operator's text (backend, address, cause); ``exc.message``, what
    the peer gets, names neither: an address inside the network is nobody's business
    outside it. `retry_after` is in seconds.
    """

    def __init__(self, backend: str, address: str, reason: str, retry_after: float) -> None:
        client_text = "the store is unavailable: " + retry_text(retry_after)
        HandlerError.__init__(self, ErrorCode.OVERLOADED, client_text)
        self.args = (f"{backend} at {address} is unreachable: {reason}",)
        self.backend = backend
        self.address = address
        self.reason = reason
        self.retry_after = retry_after


def _describe(store: Store) -> tuple[str, str]:
    address = getattr(store, "address", None)
    if address is not None:
        return "redis", str(address)
    return type(store).__name__, "this process"


class BreakerStore(Store):
    """A Store that passes every call to `base` through the breaker described above.

    `failures`: unreachable calls in a row that open it. `probe_interval`: seconds between
    its opening (or a failed probe) and the next probe. `clock` exists for tests.
    Counters for the metrics: ``trips`` (times it opened), ``refused`` (calls failed fast
    while open), ``state``.
    """

    def __init__(
        self,
        base: Store,
        *,
        failures: int = 3,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if not probe_interval > 0:
            raise ValueError(f"probe_interval must be > 0, not {probe_interval}")
        self.base = base
        self.failures = failures
        self.probe_interval = float(probe_interval)
        self._clock = clock
        self.backend, self.address = _describe(base)
        self.state = BreakerState.CLOSED
        self.trips = 0
        self.refused = 0
        self._in_a_row = 0
        self._opened_at = 0.0
        self._outage_began = 0.0
        self._refused_in_outage = 0
        self._reason = ""
        self._probe: asyncio.Task[None] | None = None
        #: Called (no arguments) when an outage ends: work that failed during it and
        #: must be done again (a session written as disconnected) registers here.
        self.on_recovery: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"BreakerStore({self.base!r}, state={self.state.name.lower()})"

    # -- the breaker ---------------------------------------------------------------------

    def _retry_after(self) -> float:
        """When a retry may find the store back: the next probe's time while open, a
        probe interval otherwise (a probe is running, or the breaker has not opened)."""
        if self.state is BreakerState.OPEN:
            left = self._opened_at + self.probe_interval - self._clock()
            if left > 0:
                return left
        return self.probe_interval

    def _down(self) -> StoreDown:
        return StoreDown(self.backend, self.address, self._reason, self._retry_after())

    def check(self) -> None:
        """Raise StoreDown at once while the store is known to be down: a caller can then
        skip work whose result it could not store (a Login's password check)."""
        self._check()

    def _check(self) -> None:
        """Fail fast while open or probing."""
        if self.state is BreakerState.CLOSED:
            return
        self.refused += 1
        self._refused_in_outage += 1
        raise self._down()

    def _failed(self, exc: StoreUnavailable) -> StoreDown:
        """A call found the backend unreachable: the outage's warning if it is the first
        failure since the store last answered; open at the threshold."""
        if isinstance(exc, StoreDown):
            return exc
        self._reason = exc.reason
        if self.state is BreakerState.CLOSED:
            if self._in_a_row == 0:
                self._outage_began = self._clock()
                self._refused_in_outage = 0
                log.warning(
                    "store unavailable: %s; store-backed requests get OVERLOADED with a "
                    "retry hint, and after %d failures in a row they fail fast, with a "
                    "probe every %g s until it answers",
                    exc,
                    self.failures,
                    self.probe_interval,
                )
            self._in_a_row += 1
            if self._in_a_row >= self.failures:
                self._open()
        return StoreDown(exc.backend, exc.address, exc.reason, self._retry_after())

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self.trips += 1
        log.debug("store breaker open after %d failures in a row", self._in_a_row)
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(
                self._probe_until_back(), name="tickwire-store-probe"
            )

    def _reached(self) -> None:
        if self._in_a_row and self.state is BreakerState.CLOSED:
            self._recovered()  # it answered again before the breaker opened
        self._in_a_row = 0

    def _recovered(self) -> None:
        log.info(
            "store reachable again after %.1f s; %d calls were refused meanwhile",
            self._clock() - self._outage_began,
            self._refused_in_outage,
        )
        for callback in self.on_recovery:
            try:
                callback()
            except Exception:
                log.exception("store recovery callback %r raised", callback)

    async def _probe_until_back(self) -> None:
        """While open: every `probe_interval`, one PING (half-open while it is in flight),
        until one answers. It runs by itself, so an idle server notices the recovery
        too, and the work that waited for it (on_recovery) runs."""
        try:
            while True:
                await asyncio.sleep(self.probe_interval)
                self.state = BreakerState.HALF_OPEN
                try:
                    await self.base.ping()
                except StoreUnavailable as exc:
                    self._reason = exc.reason
                    self.state = BreakerState.OPEN
                    self._opened_at = self._clock()
                    continue
                except Exception as exc:  # anything else: the backend answered, oddly
                    log.debug("store probe raised %r; counted as an answer", exc)
                break
        finally:
            self._probe = None
        self.state = BreakerState.CLOSED
        self._in_a_row = 0
        self._recovered()

    async def _call(self, call: Awaitable[_T]) -> _T:
        try:
            self._check()
        except StoreDown:
            if asyncio.iscoroutine(call):
                call.close()  # never awaited: no "coroutine was never awaited" warning
            raise
        try:
            result = await call
        except StoreUnavailable as exc:
            raise self._failed(exc) from exc
        self._reached()
        return result

    # -- the Store interface -------------------------------------------------------------

    async def ping(self) -> None:
        await self._call(self.base.ping())

    def batch(self) -> Batch:
        return BreakerBatch(self, self.base.batch())

    async def close(self) -> None:
        probe = self._probe
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        await self.base.close()

    async def get(self, key: str) -> bytes | None:
        return await self._call(self.base.get(key))

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        return await self._call(self.base.set(key, value, ttl=ttl, nx=nx))

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self._call(self.base.incr(key, amount))

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        return await self._call(self.base.compare_and_set(key, expected, value, ttl=ttl))

    async def delete(self, *keys: str) -> int:
        return await self._call(self.base.delete(*keys))

    async def exists(self, key: str) -> bool:
        return await self._call(self.base.exists(key))

    async def expire(self, key: str, ttl: float | None) -> bool:
        return await self._call(self.base.expire(key, ttl))

    async def ttl(self, key: str) -> float | None:
        return await self._call(self.base.ttl(key))

    async def scan_prefix(self, prefix: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[str]:
        return await self._call(self.base.scan_prefix(prefix, limit=limit))

    async def hset(self, key: str, mapping: dict[str, bytes]) -> int:
        return await self._call(self.base.hset(key, mapping))

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._call(self.base.hget(key, field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        return await self._call(self.base.hgetall(key))

    async def hdel(self, key: str, *fields: str) -> int:
        return await self._call(self.base.hdel(key, *fields))

    async def sadd(self, key: str, *members: bytes) -> int:
        return await self._call(self.base.sadd(key, *members))

    async def srem(self, key: str, *members: bytes) -> int:
        return await self._call(self.base.srem(key, *members))

    async def smembers(self, key: str) -> builtins.set[bytes]:
        return await self._call(self.base.smembers(key))

    async def sismember(self, key: str, member: bytes) -> bool:
        return await self._call(self.base.sismember(key, member))

    @property
    def restored_clean(self) -> bool:
        return self.base.restored_clean


class BreakerBatch(Batch):
    """The backend's batch, run through the breaker: one call for the breaker, as it is
    one round trip for Redis."""

    __slots__ = ("_breaker", "_inner")

    def __init__(self, breaker: BreakerStore, inner: Batch) -> None:
        super().__init__()
        self._breaker = breaker
        self._inner = inner

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._inner.set(key, value, ttl=ttl)

    def _hset(self, key: str, fields: dict[str, bytes]) -> None:
        self._inner.hset(key, fields)

    def _expire(self, key: str, ttl: float | None) -> None:
        self._inner.expire(key, ttl)

    def _sadd(self, key: str, members: list[bytes]) -> None:
        self._inner.sadd(key, *members)

    def _srem(self, key: str, members: list[bytes]) -> None:
        self._inner.srem(key, *members)

    def _delete(self, keys: list[str]) -> None:
        self._inner.delete(*keys)

    async def _run(self) -> list[BatchResult]:
        return await self._breaker._call(self._inner.run())


def is_reported(exc: BaseException) -> bool:
    """Whether the breaker has already logged this failure's outage (it warns at the
    outage's first failure): a caller that catches it logs nothing of its own, so an
    outage is one warning, not one per request, push or chat line."""
    return isinstance(exc, StoreDown)
