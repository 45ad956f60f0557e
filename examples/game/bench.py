"""A player for `tickwire bench scenario` against the example game (docs/game.md).

    python -m examples.game.bench users /tmp/players.txt 200
    GAME_MAX_PLAYERS=2 tickwire bench scenario examples.game.bench:player \\
        --server-cmd "tickwire serve --app examples.game:app \\
                      --set users_file=/tmp/players.txt" --conns 200 --duration 10

Connection i logs in as player-i (password player-i: the users file the first command
writes, scrypt n=16, for load tests only), queues, and waits for its match. Each
iteration then sends one Input (a rising seq) and waits for the first MatchState that
shows it applied: the input-to-state time, at most a tick (50 ms) plus the way back.
bench/serverside/game_ticks.py reports the server's side: ticks/s, late ticks and tick
jitter with 500 matches, snapshot deliveries/s.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.scenario import ScenarioContext
from client_sdk import AsyncClient, Push
from examples.game import game_pb2 as pb

SCHEMA = [pb]


class _Seat:
    def __init__(self, client: AsyncClient, user: str) -> None:
        self.user = user
        self.match_id = ""
        self.applied = 0
        self.changed = asyncio.Event()
        client.on_push(pb.MatchFound, self._found)
        client.on_push(pb.MatchState, self._state)

    def _found(self, push: Push) -> None:
        assert isinstance(push.message, pb.MatchFound)
        self.match_id = push.message.match_id
        self.changed.set()

    def _state(self, push: Push) -> None:
        assert isinstance(push.message, pb.MatchState)
        for player in push.message.players:
            if player.user == self.user and player.input_seq > self.applied:
                self.applied = player.input_seq
                self.changed.set()


async def player(client: AsyncClient, ctx: ScenarioContext) -> None:
    seat = ctx.state.get("seat")
    if seat is None:
        user = f"player-{ctx.conn}"
        await client.login(user, user)
        seat = ctx.state["seat"] = _Seat(client, user)
        await client.request(pb.QueueRequest())
        async with asyncio.timeout(30):
            while not seat.match_id:
                seat.changed.clear()
                await seat.changed.wait()
        ctx.state["seq"] = 0
    ctx.state["seq"] += 1
    seq = ctx.state["seq"]
    direction = (seq // 20) % 3 - 1
    seat.changed.clear()
    client.notify(pb.Input(match_id=seat.match_id, seq=seq, dx=direction, dy=-direction))
    async with asyncio.timeout(5):
        while seat.applied < seq:
            seat.changed.clear()
            await seat.changed.wait()


def write_users(path: Path, count: int) -> None:
    """player-0 .. player-(count-1), each with its name as password, scrypt n=16."""
    from server.auth import hash_password

    lines = [f"player-{i}:{hash_password(f'player-{i}', n=16)}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "users":
        raise SystemExit("usage: python -m examples.game.bench users FILE COUNT")
    write_users(Path(sys.argv[2]), int(sys.argv[3]))
