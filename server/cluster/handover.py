"""A session moving to the node its client resumed on (docs/scaling.md, "Sessions
across nodes").

The old node holds what the store does not: the pushes the client has not acknowledged
(with their sequence numbers), the session's data as it is now, and its rooms. A Resume
on another node asks the old one for them, so the client gets a replay in order and no
``push_gap`` while the old node lives. The difficulty is the pushes in flight while the
session moves: each must reach the client exactly once, from one node or the other.

Redis gives one order to every PUBLISH, and each node hears its channels in that order on
its one subscriber connection. So the cut between the nodes is a message in that order: a
**marker** the old node publishes on the user's channel ``u:<user>``.

1. The new node asks the old one for the session's rooms (``handover.rooms``), then
   subscribes the user's channel and those rooms' channels and listens to them.
2. It asks for the session (``handover``, with a handover id). The old node takes the
   session out of its connection, its user lists and its rooms, so nothing it publishes
   from then on is delivered to it locally, and publishes the marker.
3. Until the marker comes back to it, the old node applies what it hears on those
   channels to the session, as its handlers would have (those messages come before the
   marker: the new node drops them); then it answers with the session's state.
4. The new node keeps what it hears after the marker, builds the session from the state,
   attaches it, joins its rooms and applies what it kept, in one step.
5. Its own broadcasts and pushes published before that step but heard after it were not
   delivered to the session locally (it was not there yet), and its handlers skip their
   own messages: so the new node publishes a second marker at that step and delivers its
   own messages heard before it to the session.

When the old node is gone, does not hold the session, or does not answer in time, the
session is built from the store as before, with ``push_gap`` set where pushes may be
lost. The order holds on one Redis; a Redis Cluster orders messages per shard, not across
them (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from protocol.errors import ErrorCode
from server.cluster.bus import Malformed, Tap, envelope, fields
from server.cluster.errors import ClusterError
from server.cluster.rooms import EVERYONE_FIELDS, Exclude, room_body
from server.cluster.users import KIND as USER_KIND
from server.cluster.users import MARK, PUSH_FIELDS
from server.errors import HandlerError

if TYPE_CHECKING:
    from server.cluster.node import Cluster
    from server.cluster.users import UserPush
    from server.push import Pusher
    from server.sessions import Session, SessionManager

log = logging.getLogger("tickwire.cluster")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

#: A channel as (kind, name).
Channel = tuple[str, str]


class HandedOver(msgspec.Struct, array_like=True, frozen=True):
    """A session's state as the old node answers it."""

    last_seq: int
    #: Unacknowledged pushes as (seq, msg_id, payload), oldest first, ending at last_seq.
    pushes: list[tuple[int, int, bytes]]
    data: dict[str, Any]
    rooms: list[str]


_decode_state = msgspec.msgpack.Decoder(HandedOver).decode


def _reliable(kind: str, data: bytes) -> tuple[str, str, int, bytes, Exclude, bool] | None:
    """A bus message as (kind, origin, msg_id, payload, exclude, delivered) when it is a
    reliable push to deliver, checked as the channel's handler checks it; None for a
    latest value, a marker or anything malformed (which the handler counts). A latest
    value is not kept for a session without a written connection."""
    try:
        what, origin, body = envelope(data)
        exclude: Exclude = None
        delivered = False
        if what == "push" and kind == USER_KIND:
            msg_id, payload, latest, delivered = fields(body, *PUSH_FIELDS)
        elif what == "room" and kind == "r":
            msg_id, payload, exclude, latest = room_body(body)
        elif what == "everyone" and kind == "all":
            msg_id, payload, latest = fields(body, *EVERYONE_FIELDS)
        else:
            return None
    except Malformed:
        return None
    if latest:
        return None
    return what, origin, msg_id, payload, exclude, delivered


def _excluded(exclude: Exclude, session: Session) -> bool:
    if exclude is None:
        return False
    what, value = exclude
    return value == (session.user_id if what == "u" else session.session_id)


def _is_mark(data: bytes, hid: str) -> bool:
    try:
        what, _, body = envelope(data)
    except Malformed:
        return False
    return what == MARK and body == [hid]


class _Listening:
    """Channels held subscribed, and listened to, for the length of one handover."""

    def __init__(self, handovers: Handovers, channels: list[Channel]) -> None:
        self.bus = handovers.cluster.bus
        self.channels = channels
        self.subscribed: list[Channel] = []
        self.taps: list[tuple[Channel, Tap]] = []

    async def subscribe(self) -> None:
        """Subscribe (counted); ClusterError when Redis cannot confirm one."""
        results = await asyncio.gather(
            *(self._subscribe(channel) for channel in self.channels), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _subscribe(self, channel: Channel) -> None:
        if channel[0] == "all":
            return  # subscribed for the node's life
        # Counted even when it raises (the bus's reconnect subscribes it): undone in stop.
        self.subscribed.append(channel)
        await self.bus.subscribe(*channel)

    def listen(self, listener: Callable[[Channel, bytes, bool], None]) -> None:
        for channel in self.channels:
            tap = partial(listener, channel)
            self.bus.tap(*channel, tap)
            self.taps.append((channel, tap))

    def stop(self) -> None:
        bus = self.bus
        taps, self.taps = self.taps, []
        for channel, tap in taps:
            bus.untap(*channel, tap)
        subscribed, self.subscribed = self.subscribed, []
        for kind, name in subscribed:
            bus.unsubscribe(kind, name)


class _Giving:
    """The old node's side: the session taken out of this node, the messages before the
    marker applied to it."""

    def __init__(self, handovers: Handovers, session: Session, hid: str) -> None:
        self.handovers = handovers
        self.session = session
        self.hid = hid
        self.marked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.node_id = handovers.cluster.node_id
        channels: list[Channel] = [(USER_KIND, session.user_id), ("all", "everyone")]
        channels += [("r", name) for name in sorted(session.rooms)]
        self.listening = _Listening(handovers, channels)

    def heard(self, channel: Channel, data: bytes, sent: bool) -> None:
        if sent or self.marked.done():
            return  # what this node publishes now does not concern the session any more
        kind = channel[0]
        if kind == USER_KIND and _is_mark(data, self.hid):
            self.marked.set_result(None)
            return
        found = _reliable(kind, data)
        if found is None:
            return
        what, origin, msg_id, payload, exclude, delivered = found
        # As this node's handlers would have: its own room and everyone broadcasts, and
        # its own user pushes it delivered here, reached the session when made.
        if origin == self.node_id and (what != "push" or delivered):
            return
        if _excluded(exclude, self.session):
            return
        self.handovers.pusher.fan_out((self.session,), msg_id, payload)


class Taken:
    """The new node's side, from its listening until its own messages published before
    the session was attached have come back: what the Resume builds the session from,
    then what it delivers to it."""

    def __init__(self, handovers: Handovers, user_id: str, hid: str, rooms: list[str]) -> None:
        self.handovers = handovers
        self.user_id = user_id
        self.hid = hid
        self.node_id = handovers.cluster.node_id
        #: The rooms listened to from the start (a room joined after the first question
        #: was not, so what it said in between may be missing: push_gap).
        self.rooms = set(rooms)
        channels: list[Channel] = [(USER_KIND, user_id), ("all", "everyone")]
        channels += [("r", name) for name in sorted(self.rooms)]
        self.listening = _Listening(handovers, channels)
        loop = asyncio.get_running_loop()
        self.marked: asyncio.Future[None] = loop.create_future()
        self.settled: asyncio.Future[None] = loop.create_future()
        #: Messages heard after the marker, before the session was attached.
        self.kept: list[tuple[str, bytes]] = []
        #: This node's own messages on the channels, published and not heard back yet:
        #: by number in the order published, and each channel's numbers in that order.
        self._own: dict[int, tuple[Channel, bytes]] = {}
        self._sent: dict[Channel, deque[int]] = {}
        self._numbers = itertools.count()
        #: After the attach: how many of its own messages each channel has still to hear
        #: back that were delivered to the session at the attach.
        self._owed: dict[Channel, int] = {}
        self.state: HandedOver | None = None
        self.session: Session | None = None
        #: Pushes may be missing (push_gap): a room not listened to from the start.
        self.lost = False

    def heard(self, channel: Channel, data: bytes, sent: bool) -> None:
        if self.settled.done():
            return
        if sent:
            if self.session is None:
                number = next(self._numbers)
                self._own[number] = (channel, data)
                self._sent.setdefault(channel, deque()).append(number)
            return
        kind = channel[0]
        if self.session is not None:
            self._heard_attached(channel, data)
            return
        sent_here = self._sent.get(channel)
        if sent_here and self._own[sent_here[0]][1] == data:
            del self._own[sent_here.popleft()]
        if not self.marked.done():
            if kind == USER_KIND and _is_mark(data, self.hid):
                self.marked.set_result(None)
            return  # before the marker: the old node applied it
        self.kept.append((kind, data))

    def subscribed(self) -> None:
        """Every channel is subscribed: what this node published before (it may not hear
        all of it) comes before the marker, as the question that makes the marker goes
        after it on the same connection, so the old node applied it."""
        self._own.clear()
        self._sent.clear()

    def _heard_attached(self, channel: Channel, data: bytes) -> None:
        # Other nodes' messages, and this node's published since, reach the session
        # through the handlers now. This node's own ones delivered at the attach come
        # back too: the handlers skip their own room and everyone broadcasts, and their
        # own user pushes when marked delivered; the rest is skipped here, once.
        owed = self._owed.get(channel)
        if not owed:
            return
        sent_here = self._sent[channel]
        if self._own[sent_here[0]][1] != data:
            return
        del self._own[sent_here.popleft()]
        self._owed[channel] = owed - 1
        found = _reliable(channel[0], data)
        if found is not None and found[0] == "push" and not found[5]:
            self.handovers.skip_once(self.user_id, self.session)
        if not any(self._owed.values()):
            self.settled.set_result(None)

    def attached(self, session: Session) -> None:
        """The Resume attached `session` (built from `state`): join its rooms and deliver
        what came after the marker, then this node's own messages still on their way, in
        one step, before anything else can reach it."""
        assert self.state is not None
        self.session = session
        pusher = self.handovers.pusher
        for name in self.state.rooms:
            if name not in self.rooms:
                self.lost = True
            try:
                pusher.room(name).join(session)
            except HandlerError as exc:  # a lower max_rooms_per_session here
                self.lost = True
                log.warning("handed-over session %s not in room %r: %s", session, name, exc)
        kept, self.kept = self.kept, []
        in_flight = [(channel[0], data) for channel, data in self._own.values()]
        for kind, data in kept + in_flight:
            found = _reliable(kind, data)
            if found is not None and not _excluded(found[4], session):
                pusher.fan_out((session,), found[2], found[3])
        for channel, _ in self._own.values():
            self._owed[channel] = self._owed.get(channel, 0) + 1
        if not self._own:
            self.settled.set_result(None)

    def finish(self) -> None:
        """Stop listening once this node's own messages are all back (at once if the
        session was never attached)."""
        if self.session is None or self.settled.done():
            self.listening.stop()
            return
        task = asyncio.get_running_loop().create_task(self._finish_later())
        self.handovers.sessions.track(task)

    async def _finish_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.handovers.cluster.call_timeout):
                await asyncio.shield(self.settled)
        self.listening.stop()


class Handovers:
    """Both sides of moving sessions between nodes, for this node's SessionManager."""

    def __init__(
        self,
        cluster: Cluster,
        sessions: SessionManager,
        pusher: Pusher,
        user_push: UserPush | None,
    ) -> None:
        self.cluster = cluster
        self.sessions = sessions
        self.pusher = pusher
        self.user_push = user_push
        self._ids = itertools.count(1)
        cluster.serve("handover.rooms", self._serve_rooms)
        cluster.serve("handover", self._serve_handover)
        sessions.take_over = self.take_over
        # Plain counters for /metrics: sessions handed to other nodes, taken from them,
        # and Resumes that fell back to the store (the old node gone, silent or empty).
        self.given = 0
        self.taken = 0
        self.fallbacks = 0

    def skip_once(self, user_id: str, session: Session | None) -> None:
        """The user's channel handler, about to handle the message just heard, must not
        deliver it to `session`: the handover did already."""
        user_push = self.user_push
        if user_push is not None and session is not None:
            user_push.skip_once = session

    # -- the new node --------------------------------------------------------------------

    async def take_over(self, node: str, sid: str, user_id: str) -> Taken | None:
        """Take session `sid` over from `node`: a Taken with the state (or with none and
        `lost`, when the old node may have let it go without answering), or None when
        the old node is gone or does not hold it: the store has what there is."""
        cluster = self.cluster
        if not cluster.nodes.alive(node):
            self.fallbacks += 1
            return None
        try:
            rooms = await cluster.request(node, "handover.rooms", sid)
        except ClusterError as exc:
            log.warning("session %s: node %s did not hand it over: %s", sid, node, exc)
            self.fallbacks += 1
            return None
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            self.fallbacks += 1
            return None
        taken = Taken(self, user_id, f"{cluster.node_id}/{next(self._ids)}", rooms)
        try:
            taken.listening.listen(taken.heard)
            await taken.listening.subscribe()
            taken.subscribed()
            answer = await cluster.request(node, "handover", [sid, taken.hid])
            if answer is None:
                taken.listening.stop()
                self.fallbacks += 1
                return None
            taken.state = _decode_state(_encode(answer))
            # One subscriber connection hears the marker before the answer; the wait
            # covers a reconnect in between.
            async with asyncio.timeout(cluster.call_timeout):
                await taken.marked
        except (ClusterError, TimeoutError, msgspec.ValidationError) as exc:
            log.warning("session %s: handover from node %s failed: %s", sid, node, exc)
            taken.listening.stop()
            taken.state = None
            taken.lost = True
            self.fallbacks += 1
            return taken
        self.taken += 1
        return taken

    # -- the old node --------------------------------------------------------------------

    async def _serve_rooms(self, origin: str, sid: Any) -> list[str] | None:
        if not isinstance(sid, str):
            raise HandlerError(ErrorCode.DECODE_ERROR, "handover.rooms takes a session id")
        session = self.sessions.held_session(sid)
        return None if session is None else sorted(session.rooms)

    async def _serve_handover(self, origin: str, body: Any) -> list[Any] | None:
        try:
            sid, hid = body
            if not isinstance(sid, str) or not isinstance(hid, str):
                raise ValueError(body)
        except (TypeError, ValueError):
            raise HandlerError(
                ErrorCode.DECODE_ERROR, "handover takes [session id, handover id]"
            ) from None
        session = self.sessions.held_session(sid)
        if session is None:
            return None
        giving = _Giving(self, session, hid)
        try:
            # Subscribed already (the session is held here): counted again, so that
            # letting the session go does not unsubscribe them before the marker is back.
            await giving.listening.subscribe()
            rooms: list[str] = []

            def cut() -> None:
                # In the step that takes the session out: from now on what is heard is
                # applied to it, and nothing this node publishes reaches it locally.
                giving.listening.listen(giving.heard)
                rooms.extend(sorted(session.rooms))
                for name in rooms:
                    self.pusher.leave(name, session)
                self.cluster.bus.publish(
                    USER_KIND, session.user_id, _encode([MARK, self.cluster.node_id, [hid]])
                )

            if not await self.sessions.hand_over(session, cut):
                return None
            self.given += 1
            async with asyncio.timeout(self.cluster.call_timeout):
                await giving.marked
        finally:
            giving.listening.stop()
        pushes = session.pushes
        return [pushes.last_seq, pushes.entries(), session.data, rooms]
