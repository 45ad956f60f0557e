"""The cluster bus: Redis pub/sub between the nodes of one cluster.

Channels (docs/scaling.md, "Keys and channels"), all under ``tw:<db>:`` because pub/sub
channels are server-wide while keys are per database, so two clusters on one Redis in
different databases never hear each other:

- ``n:<node>``  one node's own: kicks, handovers, node-to-node calls and their answers;
- ``u:<user>``  a user's pushes, subscribed by each node while it holds a session of
  that user (Centrifugo's personal channel): a push to a user is one PUBLISH, whose
  receiver count says whether any node holds the user (none: the offline inbox);
- ``r:<room>``  a room's broadcasts, subscribed by each node with a member in it: a
  broadcast is one PUBLISH, which Redis hands once to each such node;
- ``all``       every node: a broadcast to everyone, a node's goodbye.

A channel is subscribed once however many local sessions need it (a count per channel);
`subscribe` returns when Redis confirmed the subscription, so a login can wait until
pushes to its user reach this node before it reads the user's inbox.

When the connection to Redis is lost, every cross-node call fails fast with
ClusterUnavailable (`up` is False, `failures` counts them), the node keeps serving what
is local, and the bus reconnects with a back-off and subscribes its channels again.
Pub/sub delivers at most once: what was published while this node was cut off is not
replayed to it (docs/scaling.md, "Faults").

Anything that can reach Redis can publish on these channels, so a handler's exception is
the bus's to contain: the message is dropped and counted in `malformed`, and the log says
so at most once per `MALFORMED_LOG_EVERY` seconds, since a publisher of garbage must not
fill the log or stop the subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from server.cluster.errors import ClusterUnavailable
from server.cluster.resp import RedisAddress, RespConnection, close_connection, open_connection

log = logging.getLogger("tickwire.cluster")

#: A channel kind's handler: (the name after ``<kind>:``, the message bytes).
ChannelHandler = Callable[[str, bytes], None]
#: A listener of one channel: (the message bytes, whether this node is publishing it now
#: rather than hearing it).
Tap = Callable[[bytes, bool], None]

#: Seconds between reconnect attempts: the first, and the most (doubling in between).
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 2.0

_decode = msgspec.msgpack.Decoder().decode

#: Seconds between two log lines about dropped messages (each one is counted).
MALFORMED_LOG_EVERY = 10.0


class Malformed(ValueError):
    """A bus message that is not what its channel carries: a handler raises it, and the
    bus drops and counts the message without a traceback."""


class Bus:
    """Publish and subscribe for one node (``server.cluster.bus``)."""

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        self.prefix = f"tw:{address.db}:"
        self._prefix_len = len(self.prefix.encode())
        #: Commands (PUBLISH and the directory's reads and writes), in order.
        self.pub: RespConnection | None = None
        self.sub: RespConnection | None = None
        #: Handlers by channel kind ("n", "u", "r", "all").
        self.handlers: dict[str, ChannelHandler] = {}
        #: Listeners of single channels, heard before the kind's handler: a session moving
        #: between nodes follows its channels this way (server/cluster/handover.py).
        self.taps: dict[bytes, list[Tap]] = {}
        #: Local users of each subscribed channel, and the confirmation of one not yet
        #: confirmed.
        self._counts: dict[bytes, int] = {}
        self._pending: dict[bytes, asyncio.Future[object]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False
        #: Called (no arguments) when the bus comes back after an outage, and when it
        #: goes down: the directory registers again, the push layer says so.
        self.on_up: list[Callable[[], None]] = []
        self.on_down: list[Callable[[], None]] = []
        # Plain counters for /metrics.
        self.published = 0
        self.received = 0
        self.failures = 0
        self.outages = 0
        #: Messages a handler could not use (garbage, another version's, a bug's).
        self.malformed = 0
        self._malformed_logged = -MALFORMED_LOG_EVERY

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect both connections; ClusterUnavailable if Redis cannot be reached (a node
        does not start without its cluster, as it does not without its store)."""
        await self._connect()
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_connected(), name="tickwire-cluster-bus"
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await close_connection(self.pub)
        await close_connection(self.sub)

    @property
    def up(self) -> bool:
        return self.pub is not None and self.pub.up and self.sub is not None and self.sub.up

    async def _connect(self) -> None:
        pub = await open_connection(self.address)
        try:
            sub = await open_connection(self.address, self._received, subscriber=True)
        except BaseException:
            pub.close()
            raise
        self.pub, self.sub = pub, sub
        channels = list(self._counts)
        if channels:
            # Again, after an outage (whoever waited for a confirmation was told it failed).
            await asyncio.gather(*sub.send("SUBSCRIBE", *channels, replies=len(channels)))

    async def _keep_connected(self) -> None:
        while not self._stopping:
            pub, sub = self.pub, self.sub
            assert pub is not None and sub is not None
            await asyncio.wait([pub.closed, sub.closed], return_when=asyncio.FIRST_COMPLETED)
            if self._stopping:
                return
            self.outages += 1
            pub.close()
            sub.close()
            log.warning("cluster bus: lost Redis at %s; reconnecting", self.address)
            for callback in self.on_down:
                _call(callback)
            delay = RECONNECT_FIRST
            while not self._stopping:
                try:
                    await self._connect()
                    break
                except ClusterUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
            else:
                return
            log.warning("cluster bus: Redis at %s is back", self.address)
            for callback in self.on_up:
                _call(callback)

    # -- publish ---------------------------------------------------------------------------

    def channel(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}{kind}:{name}".encode()

    def publish(self, kind: str, name: str, data: bytes) -> asyncio.Future[object]:
        """PUBLISH `data` on ``<kind>:<name>``; the future's result is how many nodes
        received it. Fails at once (ClusterUnavailable) while Redis is unreachable."""
        pub = self.pub
        if pub is None or not pub.up:
            self.failures += 1
            raise ClusterUnavailable(f"the cluster's Redis at {self.address} is unreachable")
        self.published += 1
        channel = self.channel(kind, name)
        future = pub.command("PUBLISH", channel, data)
        if self.taps:
            listeners = self.taps.get(channel)
            if listeners:
                for listener in tuple(listeners):
                    listener(data, True)
        return future

    def command(self, *args: bytes | str | int | float) -> asyncio.Future[object]:
        """Any other command on the ordered connection (the directory's)."""
        pub = self.pub
        if pub is None or not pub.up:
            self.failures += 1
            raise ClusterUnavailable(f"the cluster's Redis at {self.address} is unreachable")
        return pub.command(*args)

    # -- subscribe -------------------------------------------------------------------------

    async def subscribe(self, kind: str, name: str) -> None:
        """Hear ``<kind>:<name>`` from now on (counted: one SUBSCRIBE however many local
        users); returns once Redis confirmed it."""
        channel = self.channel(kind, name)
        count = self._counts.get(channel, 0)
        self._counts[channel] = count + 1
        if count:
            waiting = self._pending.get(channel)
            if waiting is not None:
                await asyncio.shield(waiting)
            return
        sub = self.sub
        if sub is None or not sub.up:
            # Counted: the reconnect subscribes it. The caller hears that it is not yet.
            self.failures += 1
            raise ClusterUnavailable(f"the cluster's Redis at {self.address} is unreachable")
        (future,) = sub.send("SUBSCRIBE", channel, replies=1)
        self._pending[channel] = future
        try:
            await asyncio.shield(future)
        finally:
            if self._pending.get(channel) is future:
                del self._pending[channel]

    def unsubscribe(self, kind: str, name: str) -> None:
        """One local user less of ``<kind>:<name>``; the last one unsubscribes."""
        channel = self.channel(kind, name)
        count = self._counts.get(channel, 0)
        if count > 1:
            self._counts[channel] = count - 1
            return
        if not count:
            return
        del self._counts[channel]
        self._pending.pop(channel, None)
        sub = self.sub
        if sub is not None and sub.up:
            (future,) = sub.send("UNSUBSCRIBE", channel, replies=1)
            future.add_done_callback(_ignore)

    def tap(self, kind: str, name: str, listener: Tap) -> None:
        """Hear every message of ``<kind>:<name>`` as well (it must be subscribed to be
        heard), and what this node publishes on it, as it publishes it."""
        self.taps.setdefault(self.channel(kind, name), []).append(listener)

    def untap(self, kind: str, name: str, listener: Tap) -> None:
        channel = self.channel(kind, name)
        listeners = self.taps.get(channel)
        if listeners is not None and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self.taps[channel]

    def subscribed(self, kind: str, name: str) -> bool:
        return self.channel(kind, name) in self._counts

    @property
    def channels(self) -> int:
        return len(self._counts)

    def _received(self, reply: list[bytes]) -> None:
        # [b"message", channel, data]
        channel = reply[1]
        rest = channel[self._prefix_len :].decode()
        kind, _, name = rest.partition(":")
        handler = self.handlers.get(kind)
        self.received += 1
        if self.taps:
            listeners = self.taps.get(channel)
            if listeners:
                for listener in tuple(listeners):
                    try:
                        listener(reply[2], False)
                    except Exception:
                        log.exception("cluster bus: a listener of %s failed", channel.decode())
        if handler is None:
            return
        try:
            handler(name, reply[2])
        except Exception as exc:  # one bad message must not end the subscriber
            self._dropped(channel, exc)

    def _dropped(self, channel: bytes, exc: Exception) -> None:
        self.malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged < MALFORMED_LOG_EVERY:
            return
        self._malformed_logged = now
        expected = isinstance(exc, Malformed | msgspec.DecodeError)
        log.warning(
            "cluster bus: dropped a message on %s (%d dropped so far, at most one line "
            "per %g s): %s",
            channel.decode(errors="replace"),
            self.malformed,
            MALFORMED_LOG_EVERY,
            exc,
            exc_info=None if expected else exc,
        )


def envelope(data: bytes) -> tuple[str, str, Any]:
    """A bus message's ``[kind, origin node, body]``; Malformed when it is not one."""
    try:
        decoded = _decode(data)
    except msgspec.DecodeError as exc:
        raise Malformed(f"not msgpack: {exc}") from None
    kind, origin, body = fields(decoded, str, str, object)
    return kind, origin, body


def fields(value: Any, *types: type) -> list[Any]:
    """`value` as a list of len(types) items of those types; Malformed otherwise."""
    if not isinstance(value, list) or len(value) != len(types):
        raise Malformed(f"not a {len(types)}-item array: {value!r:.100}")
    for item, wanted in zip(value, types, strict=True):
        if not isinstance(item, wanted) or (wanted is int and isinstance(item, bool)):
            raise Malformed(f"{item!r:.40} is not {wanted.__name__} in {value!r:.100}")
    return value


def _ignore(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("cluster bus callback %r raised", callback)
