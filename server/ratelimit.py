"""Rate limits: token buckets as middleware layers, and login throttling.

A limit is nginx's ``limit_req``: a `rate` (``"20/s"``, ``"600/m"``) and a `burst` of
requests that may arrive at once above it, served without delay (nginx's ``nodelay``);
past the burst a request is refused at once, never queued, with RATE_LIMITED and the
time until a token is back: ``"... retry after 250 ms"`` (the SDK reads it into
``RateLimited.retry_after``). Declared per handler (``@app.handler(Say, rate="20/s",
burst=40)``) or per app (``App(rate=...)``, each handler its own buckets), counted per
user (the session's user id; the connection before a login), per connection, or per
message type (one bucket for everyone). `conn_rate` in the server config adds one
bucket per connection across all its messages.

A route without a limit is not wrapped: the layer returns `call_next`, so the route keeps
its fused fast path (`Route.fused`) and pays nothing.

Why a hand-written bucket and not aiolimiter or limits (measured, docs/internet.md,
"Rate limits"): aiolimiter's only non-blocking call (``has_capacity``) is for async code
and its `acquire` queues the caller, where a refusal must be immediate and sync handlers
cannot await; limits' in-memory ``hit`` costs several microseconds a call (key strings,
a lock, a window list), many times this bucket's arithmetic on two floats.

Memory is bounded: a bucket that has refilled to its burst is the same as a new one, so
a sweep drops full buckets whenever a table doubles since the last sweep; a per-user or
per-connection table holds only the keys active in the last ``burst / rate`` seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message

from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import Error
from server.errors import HandlerError, retry_text

if TYPE_CHECKING:
    from server.app import Context, Route
    from server.middleware import Call

Per = Literal["user", "connection", "message"]

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")

monotonic = time.monotonic


def parse_rate(text: str) -> float:
    """Requests per second from ``"N/s"``, ``"N/m"`` or ``"N/h"`` (nginx's r/s and r/m)."""
    match = _RATE.fullmatch(text.lower())
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r}: expected N/s, N/m or N/h with N > 0")
    return float(match.group(1)) / _UNITS[match.group(2)]


@dataclass(frozen=True)
class Limit:
    """One rate: `per_second` tokens refill, up to `burst` at once, counted `per` key."""

    text: str
    per_second: float
    burst: int
    per: Per

    @classmethod
    def of(cls, rate: str, burst: int | None = None, per: Per = "user") -> Limit:
        per_second = parse_rate(rate)
        if burst is None:
            burst = max(1, int(per_second))
        if burst < 1:
            raise ValueError(f"burst {burst}: must be at least 1")
        if per not in ("user", "connection", "message"):
            raise ValueError(f"per {per!r}: expected user, connection or message")
        return cls(rate.strip(), per_second, burst, per)


class Buckets:
    """Token buckets by key: `take(key)` is 0.0 when a token was there (and is spent),
    else the seconds until one is. Each bucket is [tokens, last refill time]."""

    __slots__ = ("_buckets", "_sweep_at", "burst", "per_second")

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self._buckets: dict[Any, list[float]] = {}
        self._sweep_at = 1024

    def take(self, key: Any, now: float | None = None) -> float:
        if now is None:
            now = monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            buckets = self._buckets
            if len(buckets) >= self._sweep_at:
                self.sweep(now)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self.per_second
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.per_second

    def sweep(self, now: float) -> None:
        """Drop the buckets that have refilled (a full bucket is a new one)."""
        rate, burst = self.per_second, self.burst
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * rate < burst
        }
        self._sweep_at = max(1024, 2 * len(self._buckets))

    def drop(self, key: Any) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


def _user_key(ctx: Context) -> Any:
    session = ctx.conn.session
    return ("u", session.user_id) if session is not None else ctx.conn.id


def _conn_key(ctx: Context) -> Any:
    return ctx.conn.id


def _message_key(ctx: Context) -> Any:
    return None


_KEYS: dict[str, Callable[[Context], Any]] = {
    "user": _user_key,
    "connection": _conn_key,
    "message": _message_key,
}


class RateLimit:
    """The layer: wraps each route that has a limit (its own, else `default`) in a check
    of its buckets. With `shared`, every route it wraps draws from one table (the
    server-wide per-connection limit); otherwise each route has its own."""

    def __init__(self, default: Limit | None = None, *, shared: bool = False) -> None:
        self.default = default
        self._shared = Buckets(default.per_second, default.burst) if shared and default else None
        #: The tables built so far, for tests and the metrics of how many keys are held.
        self.tables: list[Buckets] = []

    def wrap(self, route: Route, call_next: Call) -> Call:
        limit = self.default if self._shared is not None else (route.limit or self.default)
        if limit is None:
            return call_next
        buckets = self._shared
        if buckets is None:
            buckets = Buckets(limit.per_second, limit.burst)
        if buckets not in self.tables:
            self.tables.append(buckets)
        key = _KEYS[limit.per]
        take = buckets.take
        scope = "connection" if self._shared is not None else route.name
        text = f"{scope} is over its rate of {limit.text} per {limit.per}: "
        msg_id = route.msg_id

        def refuse(wait: float) -> Error:
            return Error(
                code=ErrorCode.RATE_LIMITED, message=text + retry_text(wait), request_msg_id=msg_id
            )

        if route.awaited:
            acall: Callable[[Context, Any], Awaitable[Message | None]] = call_next

            async def limited_async(ctx: Context, msg: Any) -> Message | None:
                wait = take(key(ctx))
                if wait:
                    return refuse(wait)
                return await acall(ctx, msg)

            return limited_async

        scall: Callable[[Context, Any], Message | None] = call_next

        def limited(ctx: Context, msg: Any) -> Message | None:
            wait = take(key(ctx))
            if wait:
                return refuse(wait)
            return scall(ctx, msg)

        return limited


class WrongCredentials(HandlerError):
    """A Login refused because the authenticator did not know the credentials: the one
    refusal the login throttle counts (a rejected duplicate login is UNAUTHENTICATED too,
    with the right password)."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.UNAUTHENTICATED, "wrong user name or password")


class LoginThrottle:
    """Failed logins per user name and per address, with exponential backoff.

    After `user_failures` failed logins for one name (or `address_failures` from one
    address) in a row, the next attempt is refused RATE_LIMITED, without checking the
    password, for `lockout` seconds; every further failure doubles the window, up to
    `lockout_max`. A successful login clears its name and address. An entry is forgotten
    once it has been quiet for twice `lockout_max` (and the table is swept when it doubles),
    so memory follows the names and addresses seen lately.

    A name or address that has been locked out is on probation until a login succeeds:
    once its window ends, one login at a time is checked for it, and the others that
    arrive meanwhile are refused RATE_LIMITED as if still locked. Without that, a
    flood pipelined ahead of the window's end reaches the password check all at once
    and fills the pool every time a window ends.

    The price of a per-name lockout is that anyone can lock a name out for a while by
    failing it on purpose; the window is capped (`lockout_max`) so that stays a nuisance,
    and the per-address count lets a lockout fall on the flooding address first.
    """

    def __init__(
        self,
        *,
        user_failures: int = 5,
        address_failures: int = 50,
        lockout: float = 1.0,
        lockout_max: float = 300.0,
    ) -> None:
        self.user_failures = user_failures
        self.address_failures = address_failures
        self.lockout = lockout
        self.lockout_max = lockout_max
        #: key -> [failures in a row, locked until, last failure]
        self._entries: dict[tuple[str, str], list[float]] = {}
        self._sweep_at = 1024
        #: Keys on probation whose one login is being checked now.
        self._probing: set[tuple[str, str]] = set()

    @property
    def enabled(self) -> bool:
        return self.lockout > 0 and (self.user_failures > 0 or self.address_failures > 0)

    def _keys(self, user: str, address: str) -> list[tuple[tuple[str, str], int]]:
        keys = []
        if self.user_failures > 0:
            keys.append((("u", user), self.user_failures))
        if self.address_failures > 0 and address:
            keys.append((("a", address), self.address_failures))
        return keys

    def wait(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until `user` may try again from `address`; 0.0 when it may now."""
        if now is None:
            now = monotonic()
        longest = 0.0
        for key, _ in self._keys(user, address):
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                longest = max(longest, entry[1] - now)
        return longest

    def claim(self, user: str, address: str) -> list[tuple[str, str]] | None:
        """The keys on probation this login is the one check of, now claimed; None when
        another login of one of them is being checked (refuse this one)."""
        claimed = []
        for key, free in self._keys(user, address):
            entry = self._entries.get(key)
            if entry is not None and entry[0] >= free:
                if key in self._probing:
                    return None
                claimed.append(key)
        self._probing.update(claimed)
        return claimed

    def release(self, claimed: list[tuple[str, str]]) -> None:
        self._probing.difference_update(claimed)

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        if now is None:
            now = monotonic()
        entries = self._entries
        if len(entries) >= self._sweep_at:
            self.sweep(now)
        for key, free in self._keys(user, address):
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = [0.0, 0.0, now]
            entry[0] += 1
            entry[2] = now
            over = int(entry[0]) - free
            if over >= 0:
                entry[1] = now + min(self.lockout_max, self.lockout * 2.0 ** min(over, 40))

    def succeeded(self, user: str, address: str) -> None:
        for key, _ in self._keys(user, address):
            self._entries.pop(key, None)

    def sweep(self, now: float) -> None:
        forget = 2 * self.lockout_max
        self._entries = {
            key: entry
            for key, entry in self._entries.items()
            if entry[1] > now or now - entry[2] < forget
        }
        self._sweep_at = max(1024, 2 * len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def wrap(self, route: Route, call_next: Call) -> Call:
        """The layer on the Login route (every other route passes untouched): a locked
        name or address is refused before the authenticator runs; a login refused
        WrongCredentials counts as a failure; a LoginReply clears both."""
        from protocol.proto.system_pb2 import LoginRequest

        if route.request is not LoginRequest or not self.enabled:
            return call_next
        acall: Callable[[Context, Any], Awaitable[Message | None]] = call_next
        msg_id = route.msg_id

        async def throttled(ctx: Context, msg: Any) -> Message | None:
            address = _address(ctx)
            wait = self.wait(msg.user, address)
            claimed = None if wait else self.claim(msg.user, address)
            if claimed is None:
                return Error(
                    code=ErrorCode.RATE_LIMITED,
                    message="too many failed logins: " + retry_text(wait or self.lockout),
                    request_msg_id=msg_id,
                )
            try:
                reply = await acall(ctx, msg)
            except WrongCredentials:
                self.failed(msg.user, address)
                raise
            finally:
                self.release(claimed)
            if reply is not None and not isinstance(reply, Error):
                self.succeeded(msg.user, address)
            return reply

        return throttled


def _address(ctx: Context) -> str:
    peer = ctx.conn.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""
