"""Pushes to users held on other nodes (docs/scaling.md, "Pushes to users").

A node subscribes a user's channel ``u:<user>`` while it holds at least one session of
the user (once per held session: the bus counts them), from before the login writes the
session's record and reads its inbox, so a push published from then on reaches it.

A push to a user with no session here, or to any user when several devices may be on
several nodes (duplicate_login "allow"), is one PUBLISH on ``u:<user>`` of
``["push", origin, [msg_id, payload, latest, delivered]]``, encoded once per call.
``delivered`` says the origin already delivered to its own sessions of the user, so it
skips its own copy; when it had none it does not skip it, because a login on the origin
itself may have subscribed the channel between the push and the PUBLISH, and then that
copy is the only one this session gets.

PUBLISH answers how many nodes heard it: 0, for a reliable push, means no node holds the
user, and the push goes to the offline inbox. The replies come back in the order of the
PUBLISHes (one connection), so one node's pushes to one user reach the inbox in order,
as they reach the user's sessions on other nodes in order.

The key of a latest-value push is not sent: keys are any hashable (msgpack does not
carry them all), so a receiver decodes the message and computes the key itself
(:func:`deliver`, which room broadcasts from other nodes go through too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

import msgspec
from google.protobuf.message import Message

from protocol.errors import RemoteProtocolError
from server.cluster.bus import Malformed, envelope, fields
from server.cluster.errors import ClusterUnavailable

if TYPE_CHECKING:
    from protocol.registry import MessageRegistry
    from server.cluster.node import Cluster
    from server.push import Pusher
    from server.sessions import Session, SessionManager

log = logging.getLogger("tickwire.cluster")

_encode = msgspec.msgpack.Encoder().encode

#: The bus channel kind of a user's pushes.
KIND = "u"
#: The kind of a handover's markers on a user's channel (server/cluster/handover.py).
MARK = "handover"
#: The body of a ``push`` message: [msg_id, payload, latest, delivered].
PUSH_FIELDS = (int, bytes, bool, bool)


class UserPush:
    """Cross-node pushes to users (``server.user_push``), built with the server when it
    has a cluster; the Pusher hands it what it cannot deliver locally."""

    def __init__(
        self,
        cluster: Cluster,
        pusher: Pusher,
        sessions: SessionManager,
        registry: Callable[[], MessageRegistry],
        *,
        every_node: bool,
    ) -> None:
        self.cluster = cluster
        self.bus = cluster.bus
        self.node_id = cluster.node_id
        self.pusher = pusher
        self.sessions = sessions
        #: The registry in use (it follows a handler reload): decodes latest values.
        self.registry = registry
        #: duplicate_login "allow": a user's sessions may be on several nodes, so every
        #: push is published, not only those to users with no session here.
        self.every_node = every_node
        #: Session ids whose hold subscribed their user's channel (the release undoes
        #: exactly those, whatever other on_hold hooks did).
        self._subscribed: set[str] = set()
        self.bus.handlers[KIND] = self._received
        sessions.on_hold.append(self._hold)
        sessions.on_release.append(self._release)
        pusher.remote = self
        #: A session the next message heard must not be delivered to: a handover has
        #: (server/cluster/handover.py); reset by every message.
        self.skip_once: Session | None = None
        # Plain counters for /metrics.
        self.published = 0
        self.received = 0
        self.delivered = 0
        self.inbox_fallbacks = 0
        self.failures = 0

    # -- subscriptions -----------------------------------------------------------------------

    async def _hold(self, session: Session) -> None:
        # Recorded first: the bus counts the subscription even when it raises (the
        # reconnect subscribes it), so the release must undo it either way.
        self._subscribed.add(session.session_id)
        await self.bus.subscribe(KIND, session.user_id)

    def _release(self, session: Session, handed_over: bool) -> None:
        if session.session_id in self._subscribed:
            self._subscribed.discard(session.session_id)
            self.bus.unsubscribe(KIND, session.user_id)

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        absent: list[str],
        present: list[str],
        message: Message,
        encoded: tuple[int, bytes],
    ) -> None:
        """Publish a push (`encoded` is its ``Pusher.encode``) on the channels of the users
        with no session here (`absent`: a reliable one no node holds goes to the inbox)
        and, with `every_node`, of those with one (`present`: already delivered here).
        ClusterUnavailable, counted, when the bus is down (local deliveries are done)."""
        if not absent and not (self.every_node and present):
            return
        msg_id, payload = encoded
        latest = type(message) in self.pusher.latest_keys
        bus = self.bus
        if not bus.up:
            self.failures += 1
            raise ClusterUnavailable(
                f"cannot push to users on other nodes: the cluster's Redis at "
                f"{bus.address} is unreachable"
            )
        try:
            if absent:
                data = _encode(["push", self.node_id, [msg_id, payload, latest, False]])
                for user_id in absent:
                    future = bus.publish(KIND, user_id, data)
                    self.published += 1
                    if latest:
                        future.add_done_callback(self._counted)
                    else:
                        future.add_done_callback(partial(self._reliable_answer, user_id, encoded))
            if self.every_node and present:
                data = _encode(["push", self.node_id, [msg_id, payload, latest, True]])
                for user_id in present:
                    bus.publish(KIND, user_id, data).add_done_callback(self._counted)
                    self.published += 1
        except ClusterUnavailable:
            self.failures += 1
            raise

    def _counted(self, future: asyncio.Future[object]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failures += 1

    def _reliable_answer(
        self, user_id: str, encoded: tuple[int, bytes], future: asyncio.Future[object]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            # Lost with the connection: pub/sub is at most once (docs/scaling.md, Faults).
            self.failures += 1
            return
        if future.result() == 0:
            # No node holds the user: the inbox, in the order of the replies.
            self.inbox_fallbacks += 1
            self.pusher.to_inbox([user_id], *encoded)

    # -- receiving ---------------------------------------------------------------------------

    def _received(self, user_id: str, data: bytes) -> None:
        skip, self.skip_once = self.skip_once, None
        try:
            self._deliver(user_id, data, skip)
        except Malformed:
            # A node of another version, or not a node at all: the bus counts and logs it.
            self.failures += 1
            raise

    def _deliver(self, user_id: str, data: bytes, skip: Session | None) -> None:
        kind, origin, body = envelope(data)
        if kind == MARK:
            return  # a session moving between nodes (server/cluster/handover.py)
        msg_id, payload, latest, delivered = fields(body, *PUSH_FIELDS)
        if kind != "push":
            raise Malformed(f"a {kind!r} message on a user channel")
        self.received += 1
        if delivered and origin == self.node_id:
            return  # its own sessions had it from the push itself
        sessions = self.sessions.reachable(user_id)
        if skip is not None:
            sessions = [session for session in sessions if session is not skip]
        if not sessions:
            return
        self.delivered += deliver(self.pusher, self.registry(), sessions, msg_id, payload, latest)


def deliver(
    pusher: Pusher,
    registry: MessageRegistry,
    sessions: Iterable[Session],
    msg_id: int,
    payload: bytes,
    latest: bool,
) -> int:
    """Push what another node published to `sessions` here: a latest-value message under
    the key this node's declaration gives its decoded message (keys do not cross the
    wire), any other as the encoded bytes it came as. Malformed, before any delivery,
    when a latest value does not decode."""
    if not latest:
        return pusher.fan_out(sessions, msg_id, payload)
    try:
        message = registry.decode(msg_id, payload)
    except RemoteProtocolError as exc:
        raise Malformed(f"latest value {msg_id}: {exc}") from None
    return pusher.to_sessions(sessions, message, (msg_id, payload))
