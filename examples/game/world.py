"""The match's simulation: players move in an arena and pick up coins; pure and
deterministic (the coin positions come from a seeded generator), so it is tested without
a server and the server's tick only calls `step`.

Units are integer milli-units, so a state is exact and the same on every replay. A
player's input is a direction (-1, 0 or 1 on each axis) that holds until the next input;
each step moves every player by ``SPEED`` in its direction, clamped to the arena, then
gives each coin to the nearest player within ``PICKUP`` of it (the lowest seat on a tie)
and puts a new coin in its place. The match ends after ``steps_total`` steps or when a
player reaches ``target`` coins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: The arena is [0, SIZE) on both axes.
SIZE = 100_000
#: Distance moved per step (20 steps a second: 20 units a second).
SPEED = 1_000
#: Distance within which a player takes a coin.
PICKUP = 2_000
COINS = 5


@dataclass
class Player:
    seat: int
    user_id: str
    x: int
    y: int
    dx: int = 0
    dy: int = 0
    score: int = 0
    #: The last input applied, by its client sequence number (inputs are idempotent).
    input_seq: int = 0


@dataclass
class Taken:
    """A coin taken in a step: an event the players are told reliably."""

    seat: int
    coin: int
    x: int
    y: int


@dataclass
class World:
    seed: int
    steps_total: int = 20 * 120
    target: int = 20
    step_count: int = 0
    players: dict[int, Player] = field(default_factory=dict)
    coins: list[tuple[int, int]] = field(default_factory=list)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.coins = [self._place() for _ in range(COINS)]

    def _place(self) -> tuple[int, int]:
        return self.rng.randrange(SIZE), self.rng.randrange(SIZE)

    def add(self, seat: int, user_id: str) -> Player:
        """Seat a player at a spot of its own (a corner's worth apart by seat)."""
        step = SIZE // 9
        player = Player(seat, user_id, step * (1 + seat), step * (1 + (seat * 5) % 8))
        self.players[seat] = player
        return player

    def steer(self, seat: int, dx: int, dy: int, seq: int) -> bool:
        """Apply a direction input; False for an old or repeated one (seq not newer)."""
        player = self.players.get(seat)
        if player is None or seq <= player.input_seq:
            return False
        player.input_seq = seq
        player.dx = max(-1, min(1, dx))
        player.dy = max(-1, min(1, dy))
        return True

    @property
    def over(self) -> bool:
        return self.step_count >= self.steps_total or any(
            p.score >= self.target for p in self.players.values()
        )

    def step(self) -> list[Taken]:
        """Advance one tick; returns the coins taken in it."""
        self.step_count += 1
        for player in self.players.values():
            player.x = max(0, min(SIZE - 1, player.x + player.dx * SPEED))
            player.y = max(0, min(SIZE - 1, player.y + player.dy * SPEED))
        taken: list[Taken] = []
        for index, (cx, cy) in enumerate(self.coins):
            best: tuple[int, int] | None = None
            for seat in sorted(self.players):
                player = self.players[seat]
                distance = (player.x - cx) ** 2 + (player.y - cy) ** 2
                if distance <= PICKUP**2 and (best is None or distance < best[0]):
                    best = (distance, seat)
            if best is not None:
                self.players[best[1]].score += 1
                taken.append(Taken(best[1], index, cx, cy))
                self.coins[index] = self._place()
        return taken

    def winner(self) -> Player | None:
        """The best score (the lowest seat on a tie), once the match is over."""
        if not self.players:
            return None
        return max(self.players.values(), key=lambda p: (p.score, -p.seat))
