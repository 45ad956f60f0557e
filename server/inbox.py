"""The offline inbox: pushes kept for users with no live session, delivered at the next login.

A push to users who are offline is stored once, and each recipient's inbox gets a small
reference to it, so a broadcast to 10,000 offline users writes one body, not 10,000.
Everything lives in the server's :class:`~server.store.Store` (memory by default, Redis when
configured) and uses only the operations both backends honour the same way.

Keys (all under ``tw:``, beside the sessions' keys)::

    tw:inbox:seq          string  the global put counter (INCR), never expires
    tw:body:<body id>     string  8-byte big-endian msg_id + payload; TTL ``ttl``
    tw:inbox:u:<user id>  hash    field: body id; value: the reference's deadline (unix ms,
                                  decimal); TTL ``ttl``, refreshed by every put

A body id is ``<seq, 20 digits>.<8 random hex>``: the zero-padded counter sorts the fields
of an inbox in put order, and the random part keeps ids unique even if the counter were
ever lost (an LRU-evicted or flushed key) and restarted at 1.

Why no reference counts: a body expires by its own TTL, a reference dies at its deadline
(the same instant) and is skipped by :meth:`Inbox.take` and :meth:`Inbox.count` from then
on, and the inbox hash disappears ``ttl`` after its last put. Everything is bounded by age
anyway, so a refcount would only free a body a little earlier, at the price of an extra
write per delivered item and a counter that must never drift. A body that is taken by all
its recipients stays until its TTL, which is the cost of that simplicity.

Cost of ``put(users, ...)``: 2 store calls (INCR of the counter, SET of the body), then 2
per recipient (HSET of the reference, EXPIRE of the inbox), run ``concurrency`` users at
a time. The per-user cap is enforced without reading the inbox on every put: each put
trims the recipient's inbox with probability ``1/slack`` (``slack = max(1,
max_per_user // 4)``), one HGETALL and one HDEL that drop dead references and all but the
newest ``max_per_user`` live ones. So an inbox holds about ``max_per_user + slack``
references at most; it exceeds ``max_per_user + k * slack`` only with probability about
``e**-k``. What :meth:`Inbox.take` delivers never exceeds ``max_per_user`` (it drops the
oldest extras itself), so the cap is exact where it is visible, and approximate only in
storage. With the cap below 8, ``slack`` is 1 and every put trims.

Order: items come out oldest first, by the global counter. Puts one caller awaits one
after the other are delivered in that order. Two puts that run concurrently take counter
values in one order and may land in an inbox in the other; a take that runs between the
two landings delivers the later one first, and the earlier one at the next take.

Concurrency of takes: each item is claimed with its own HDEL, atomic on both backends, and
only the take whose HDEL removed the field delivers it. So two takes of one user that race
split the items between them and never deliver one twice (exactly once, as long as the
store keeps what it acknowledged). A take that fails half-way (the store became
unreachable) loses the items it had claimed but not returned: at most once, never twice.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from server.store import DEFAULT_SCAN_LIMIT, Store

SEQ_KEY = "tw:inbox:seq"
INBOX_PREFIX = "tw:inbox:u:"
BODY_PREFIX = "tw:body:"

#: ``max_per_user`` and ``ttl`` unless told otherwise: 1,000 items, 7 days.
DEFAULT_MAX_PER_USER = 1000
DEFAULT_TTL = 7 * 24 * 3600.0
#: How many store calls a put or a take keeps in flight (Redis: round trips at once; the
#: default pool has 64 connections, so this leaves room for everything else).
DEFAULT_CONCURRENCY = 32

_MSG_ID = struct.Struct(">Q")
_T = TypeVar("_T")


def inbox_key(user_id: str) -> str:
    return INBOX_PREFIX + user_id


def body_key(body_id: str) -> str:
    return BODY_PREFIX + body_id


class Inbox:
    """Pushes for offline users, over the server's store (see the module docstring).

    `max_per_user`: the newest items a user can have waiting; older ones are dropped.
    `ttl`: seconds an item waits at most. `concurrency`: store calls in flight per put or
    take. `rng`: where the trim decisions come from (tests pass a seeded one).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_per_user: int = DEFAULT_MAX_PER_USER,
        ttl: float = DEFAULT_TTL,
        concurrency: int = DEFAULT_CONCURRENCY,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_per_user, bool) or not isinstance(max_per_user, int):
            raise TypeError("max_per_user must be an int")
        if max_per_user < 1:
            raise ValueError(f"max_per_user must be at least 1, not {max_per_user}")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ValueError(f"ttl must be a number of seconds > 0, not {ttl!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.store = store
        self.max_per_user = max_per_user
        self.ttl = float(ttl)
        self.slack = max(1, max_per_user // 4)
        self.concurrency = concurrency
        self._rng = rng if rng is not None else random.Random()
        #: Trims run by puts (a counter for tests and metrics).
        self.trims = 0

    def __repr__(self) -> str:
        return f"<Inbox max_per_user={self.max_per_user} ttl={self.ttl:g}s>"

    # -- writing -----------------------------------------------------------------------

    async def put(self, user_ids: Iterable[str], msg_id: int, payload: bytes) -> str:
        """Keep `payload` (a push of type `msg_id`) for each of `user_ids`; returns the
        body id. The body is written once, then one reference per distinct user. With no
        users, nothing is written (the id is still returned, for logs)."""
        if isinstance(msg_id, bool) or not isinstance(msg_id, int):
            raise TypeError(f"msg_id must be an int, not {type(msg_id).__name__}")
        if not 0 <= msg_id < 2**64:
            raise ValueError(f"msg_id must fit in 64 unsigned bits, not {msg_id}")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        users = list(dict.fromkeys(user_ids))  # distinct, in the given order
        for uid in users:
            if not isinstance(uid, str):
                raise TypeError(f"user ids must be str, not {type(uid).__name__}")
        store = self.store
        seq = await store.incr(SEQ_KEY)
        body_id = f"{seq:020d}.{secrets.token_hex(4)}"
        if not users:
            return body_id
        # The body first, so that a reference a concurrent take sees always has one.
        await store.set(body_key(body_id), _MSG_ID.pack(msg_id) + bytes(payload), ttl=self.ttl)
        deadline = b"%d" % int((time.time() + self.ttl) * 1000)
        ref = {body_id: deadline}
        ttl = self.ttl
        p_trim = 1.0 / self.slack
        rng = self._rng

        async def deliver(uid: str) -> None:
            key = inbox_key(uid)
            await store.hset(key, ref)
            # After the HSET, so the key exists: EXPIRE on a missing key does nothing. If a
            # take emptied the inbox in between, the key is gone and nothing is left over.
            await store.expire(key, ttl)
            if rng.random() < p_trim:
                await self._trim(key)

        await _each(users, deliver, self.concurrency)
        return body_id

    async def _trim(self, key: str) -> None:
        """Drop the inbox's dead references and all but the newest max_per_user live
        ones (one HGETALL, at most one HDEL)."""
        self.trims += 1
        refs = await self.store.hgetall(key)
        _, drop = self._split(refs)
        if drop:
            await self.store.hdel(key, *drop)

    def _split(self, refs: dict[str, bytes]) -> tuple[list[str], list[str]]:
        """(live references to deliver, oldest first; references to drop: dead or over the
        cap)."""
        now_ms = time.time() * 1000
        live: list[str] = []
        drop: list[str] = []
        for field in sorted(refs):
            try:
                alive = int(refs[field]) > now_ms
            except ValueError:  # not written by this module: never deliverable
                alive = False
            (live if alive else drop).append(field)
        excess = len(live) - self.max_per_user
        if excess > 0:
            drop.extend(live[:excess])
            del live[:excess]
        return live, drop

    # -- reading -----------------------------------------------------------------------

    async def take(self, user_id: str) -> list[tuple[int, bytes]]:
        """Every item waiting for the user, oldest first, as ``(msg_id, payload)``, and
        removes them. Items past their age and the oldest beyond the cap are dropped; an
        item whose body is gone (expired, evicted) is skipped. Concurrent takes of one
        user never return the same item twice: each item is claimed by one HDEL."""
        store = self.store
        key = inbox_key(user_id)
        refs = await store.hgetall(key)
        if not refs:
            return []
        live, drop = self._split(refs)
        if drop:
            await store.hdel(key, *drop)
        found: dict[str, bytes] = {}

        async def claim(body_id: str) -> None:
            if await store.hdel(key, body_id) == 1:  # this take won the item
                body = await store.get(body_key(body_id))
                if body is not None and len(body) >= _MSG_ID.size:
                    found[body_id] = body

        await _each(live, claim, self.concurrency)
        return [
            (_MSG_ID.unpack_from(found[b])[0], found[b][_MSG_ID.size :]) for b in live if b in found
        ]

    async def count(self, user_id: str) -> int:
        """How many items a take would return now, as far as the references tell: the
        live ones, at most max_per_user. (A body evicted early by a capped memory store is
        counted until the take finds it gone.) One HGETALL."""
        live, _ = self._split(await self.store.hgetall(inbox_key(user_id)))
        return len(live)

    async def body_count(self, *, limit: int = DEFAULT_SCAN_LIMIT) -> int:
        """How many bodies the store holds (at most `limit`). Walks the keyspace
        (``scan_prefix``): for admin views and tests, not for request paths."""
        return len(await self.store.scan_prefix(BODY_PREFIX, limit=limit))


async def _each(items: Sequence[_T], work: Callable[[_T], Awaitable[None]], limit: int) -> None:
    """Run `work` on every item, at most `limit` at a time; the first failure stops the
    rest and is raised as itself (not as an ExceptionGroup)."""
    it = iter(items)

    async def worker() -> None:
        for n, item in enumerate(it):
            await work(item)
            if n % 1024 == 1023:
                # The memory store never suspends: let the loop breathe in huge fan-outs.
                await asyncio.sleep(0)

    workers = min(limit, len(items))
    if workers <= 1:
        await worker()
        return
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
