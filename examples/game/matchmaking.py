"""The matchmaking queue: players of close ratings grouped into matches of 2 to 8.

Pure (no I/O, no clock of its own: the caller passes `now`), so the rules are tested
without a server. The rules (docs/game.md, "Matchmaking"):

- A player waits in the band of their rating (``rating // BAND``). Each
  ``WIDEN_EVERY`` seconds of waiting widens the bands they accept by one on each side,
  so nobody waits forever for a perfect match.
- A match is made as soon as ``max_players`` compatible players wait; after
  ``FILL_WAIT`` seconds the oldest waiting player takes whoever is compatible, if that
  makes ``min_players``.
- Two players are compatible when each accepts the other's band; the oldest waiting
  player is served first (fairness), and within its choice the longest waiting.
- The queue is bounded (``max_waiting``): a player past it is refused, never queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Rating points per band.
BAND = 200
#: Seconds of waiting that widen the accepted bands by one on each side.
WIDEN_EVERY = 5.0
#: Seconds the oldest player waits for a full match before taking a smaller one.
FILL_WAIT = 3.0


class QueueFull(Exception):
    """The queue holds max_waiting players already."""


@dataclass(order=True)
class Waiting:
    since: float
    user_id: str = field(compare=False)
    rating: int = field(compare=False)

    @property
    def band(self) -> int:
        return self.rating // BAND

    def reach(self, now: float) -> int:
        """How many bands away from its own this player accepts now."""
        return int((now - self.since) // WIDEN_EVERY)

    def accepts(self, other: Waiting, now: float) -> bool:
        return abs(self.band - other.band) <= self.reach(now)


class Matchmaker:
    def __init__(
        self, *, min_players: int = 2, max_players: int = 8, max_waiting: int = 100_000
    ) -> None:
        if not 2 <= min_players <= max_players:
            raise ValueError("need 2 <= min_players <= max_players")
        self.min_players = min_players
        self.max_players = max_players
        self.max_waiting = max_waiting
        #: Waiting players by user id, in the order they joined.
        self.waiting: dict[str, Waiting] = {}

    def join(self, user_id: str, rating: int, now: float) -> bool:
        """Queue the player; False if already queued. QueueFull past max_waiting."""
        if user_id in self.waiting:
            return False
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"the matchmaking queue holds {self.max_waiting} players")
        self.waiting[user_id] = Waiting(now, user_id, rating)
        return True

    def leave(self, user_id: str) -> bool:
        return self.waiting.pop(user_id, None) is not None

    def position(self, user_id: str) -> int:
        """1-based place in the queue (0: not queued)."""
        for place, queued in enumerate(self.waiting, start=1):
            if queued == user_id:
                return place
        return 0

    def poll(self, now: float) -> list[list[Waiting]]:
        """Make every match the rules allow now; the players in them leave the queue."""
        made: list[list[Waiting]] = []
        while True:
            group = self._next(now)
            if group is None:
                return made
            for player in group:
                del self.waiting[player.user_id]
            made.append(group)

    def _next(self, now: float) -> list[Waiting] | None:
        queue = list(self.waiting.values())
        for index, oldest in enumerate(queue):
            group = [oldest]
            for other in queue[index + 1 :]:
                if len(group) == self.max_players:
                    break
                if all(p.accepts(other, now) and other.accepts(p, now) for p in group):
                    group.append(other)
            if len(group) == self.max_players:
                return group
            if len(group) >= self.min_players and now - oldest.since >= FILL_WAIT:
                return group
        return None
