"""The examples' scenarios for `tickwire bench scenario` (examples/trade/bench.py,
examples/game/bench.py), run for a few iterations against real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.scenario import ScenarioContext
from client_sdk import AsyncClient
from examples.game import bench as game_bench
from examples.game import game_pb2
from examples.game.service import make_app as make_game
from examples.trade import bench as trade_bench
from examples.trade import trade_pb2
from examples.trade.service import make_app as make_trade
from protocol.registry import system_registry
from server.auth import MemoryUsers, UsersFile


def context(conn: int) -> ScenarioContext:
    return ScenarioContext(conn=conn, proc=0, host="", port=0, args={}, seed=conn)


async def test_the_venue_scenarios_trade_and_cancel(start_server: Any, tmp_path: Path) -> None:
    users = MemoryUsers({u: f"demo-{u}" for u in ("alice", "bob", "carol")})
    server = await start_server(make_trade(tmp_path), authenticator=users, duplicate_login="allow")
    clients = [
        await AsyncClient.connect(*server.address, registry=system_registry([trade_pb2]))
        for _ in range(3)
    ]
    try:
        contexts = [context(i) for i in range(3)]
        for _ in range(5):
            await asyncio.gather(
                *(trade_bench.cross(c, ctx) for c, ctx in zip(clients, contexts, strict=True))
            )
            await trade_bench.rest_cancel(clients[2], contexts[2])
        book = server.apps[-1].state.desk.ledger.venue.books
        assert len(book["ABC"]) == 0  # every resting order was cancelled
        assert server.apps[-1].state.desk.ledger.venue.ids.trd_match_id >= 5
    finally:
        for client in clients:
            await client.close()


async def test_the_game_player_scenario_sees_its_inputs_applied(
    start_server: Any, tmp_path: Path
) -> None:
    game_bench.write_users(tmp_path / "players.txt", 2)
    users = UsersFile(tmp_path / "players.txt")
    server = await start_server(make_game(max_players=2, poll_every=0.05), authenticator=users)
    clients = [
        await AsyncClient.connect(*server.address, registry=system_registry([game_pb2]))
        for _ in range(2)
    ]
    try:
        contexts = [context(i) for i in range(2)]
        for _ in range(3):
            await asyncio.gather(
                *(game_bench.player(c, ctx) for c, ctx in zip(clients, contexts, strict=True))
            )
        assert all(ctx.state["seat"].applied == 3 for ctx in contexts)
    finally:
        for client in clients:
            await client.close()
