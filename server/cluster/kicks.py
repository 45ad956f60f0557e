"""Ending a session held by another node: the duplicate-login policy, `remove_user` and
a Resume on another node all end sessions wherever they live.

The node that ends a session (its `SessionManager._end`, or a Resume taking it over)
deletes the store keys itself; the node holding the session only has to drop it. So a
kick is one message on the holder's channel, ``kick`` with ``[session id, reason]``, and
needs no answer: the holder ends its connected session (GoAway SESSION_REPLACED, the text
a kick on one node gives) or its waiting one, with the usual hooks.

A kick to a node that is gone (not in the view, or its PUBLISH reached nobody) is no
error: a node that is gone holds nothing, and its records go with the keys anyway. A
node that was cut off from Redis hears no kick meanwhile, so when its bus is back it
re-checks every session it holds against the store (SessionManager.recheck).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.cluster.node import Cluster
from server.sessions import EndReason, SessionManager
from server.store.breaker import is_reported
from server.store.errors import StoreError

log = logging.getLogger("tickwire.cluster")

#: A kick whose PUBLISH reached nobody while its node is in the view is sent again after
#: these many seconds, doubling, while the wait is at most the second.
KICK_RETRY_FIRST = 0.05
KICK_RETRY_MAX = 0.8

#: Sessions re-checked against the store at once after an outage.
RECHECK_BATCH = 256

#: The reasons another node may end a session here for.
REMOTE_REASONS = frozenset({EndReason.REPLACED, EndReason.REMOVED, EndReason.RESUMED_ELSEWHERE})


class Kicks:
    """Sends kicks for this node's SessionManager and serves the ones sent to it."""

    def __init__(self, cluster: Cluster, sessions: SessionManager) -> None:
        self.cluster = cluster
        self.sessions = sessions
        cluster.on_node("kick", self._on_kick)
        cluster.bus.on_up.append(self._recheck_soon)
        sessions.end_elsewhere = self.kick
        # Plain counters: kicks sent that reached their node, that reached none, and
        # kicks served here.
        self.delivered = 0
        self.missed = 0
        self.served = 0
        #: Sessions ended by the re-check after an outage (kicks this node missed).
        self.rechecked = 0

    async def kick(self, node: str, session_id: str, reason: EndReason) -> bool:
        """Tell `node` to end `session_id` for `reason`; False when the node is gone.
        ClusterUnavailable when the cluster's Redis cannot be reached."""
        delay = KICK_RETRY_FIRST
        while True:
            # Sent even to a node gone from the view: a view can miss a node whose
            # heartbeat is late, and a PUBLISH nobody hears costs nothing.
            received = await self.cluster.send(node, "kick", [session_id, str(reason)])
            if received:
                self.delivered += 1
                return True
            if not self.cluster.nodes.alive(node) or delay > KICK_RETRY_MAX:
                self.missed += 1
                return False
            # Alive in the view, its channel unheard: most likely it is subscribing again
            # after an outage (its re-check may already have run), so the kick is sent
            # again for a short while rather than lost.
            await asyncio.sleep(delay)
            delay *= 2

    def _on_kick(self, origin: str, body: Any) -> None:
        try:
            sid, raw = body
            reason = EndReason(raw)
            if not isinstance(sid, str) or reason not in REMOTE_REASONS:
                raise ValueError(raw)
        except (TypeError, ValueError):
            log.warning("cluster: malformed kick from %s ignored: %.100r", origin, body)
            return
        # Only a session held here costs a task, so a flood of kicks costs none.
        if not self.sessions.holds_id(sid):
            return
        self.served += 1
        task = asyncio.get_running_loop().create_task(self._end(origin, sid, reason))
        self.sessions.track(task)

    async def _end(self, origin: str, sid: str, reason: EndReason) -> None:
        try:
            await self.sessions.end_here(sid, reason)
        except StoreError as exc:
            if not is_reported(exc):
                log.error("cluster: kick of a session from %s failed: %s", origin, exc)

    # -- after an outage -------------------------------------------------------------------

    def _recheck_soon(self) -> None:
        """The bus is back (its channels subscribed again): kicks sent meanwhile reached
        nobody, so each session held here is checked against the store."""
        task = asyncio.get_running_loop().create_task(self._recheck())
        self.sessions.track(task)

    async def _recheck(self) -> None:
        held = self.sessions.all_sessions()
        for start in range(0, len(held), RECHECK_BATCH):
            results = await asyncio.gather(
                *(self.sessions.recheck(s) for s in held[start : start + RECHECK_BATCH]),
                return_exceptions=True,
            )
            for result in results:
                if result is True:
                    self.rechecked += 1
                elif isinstance(result, StoreError):
                    if not is_reported(result):
                        log.error("cluster: re-checking sessions after an outage: %s", result)
                    return  # the store is down: the next outage's end checks again
                elif isinstance(result, BaseException):
                    log.error("cluster: re-checking a session failed", exc_info=result)
