"""The game example (examples/game/service.py) served by a real server to real SDK
clients: queue, match found, inputs moving players in the pushed state, chat, a
dropped player back in the same seat, and the end of the match with ratings moved."""

from __future__ import annotations

from typing import Any

import pytest

from client_sdk import AsyncClient, Push, Reconnect, ServerError
from examples.game import game_pb2 as pb
from examples.game.service import RATING_STEP, START_RATING, make_app
from protocol.registry import system_registry
from server.auth import MemoryUsers
from tests.conftest import wait_for

USERS = MemoryUsers({"alice": "a", "bob": "b"})


class Player:
    def __init__(self, client: AsyncClient, user: str) -> None:
        self.client = client
        self.user = user
        self.pushes: list[Any] = []
        client.on_frame(lambda frame: None)
        for kind in (pb.MatchFound, pb.MatchState, pb.CoinTaken, pb.ChatLine, pb.MatchOver):
            client.on_push(kind, self._got)

    def _got(self, push: Push) -> None:
        self.pushes.append(push.message)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.pushes if isinstance(m, kind)]


@pytest.fixture
async def players() -> Any:
    made: list[Player] = []

    async def connect(server: Any, user: str, **options: Any) -> Player:
        client = await AsyncClient.connect(
            *server.address, registry=system_registry([pb]), **options
        )
        await client.login(user, USERS.users[user])
        player = Player(client, user)
        made.append(player)
        return player

    yield connect
    for player in made:
        await player.client.close()


async def test_two_players_are_matched_move_chat_and_finish(
    start_server: Any, players: Any
) -> None:
    app = make_app(max_players=2, poll_every=0.05, match_seconds=1.5)
    server = await start_server(app, authenticator=USERS)
    alice, bob = await players(server, "alice"), await players(server, "bob")
    lobby = await alice.client.request(pb.LobbyRequest())
    assert lobby.rating == START_RATING  # type: ignore[attr-defined]
    assert (await alice.client.request(pb.QueueRequest())).position == 1  # type: ignore[attr-defined]
    assert (await bob.client.request(pb.QueueRequest())).position == 2  # type: ignore[attr-defined]

    await wait_for(lambda: alice.of(pb.MatchFound) and bob.of(pb.MatchFound))
    found = alice.of(pb.MatchFound)[0]
    assert sorted(found.players) == ["alice", "bob"] and found.tick_rate == 20
    match_id = found.match_id
    assert bob.of(pb.MatchFound)[0].match_id == match_id

    alice.client.notify(pb.Input(match_id=match_id, seq=1, dx=1, dy=0))
    await wait_for(
        lambda: any(p.input_seq == 1 for s in alice.of(pb.MatchState) for p in s.players)
    )
    start = next(p for p in alice.of(pb.MatchState)[0].players if p.user == "alice")
    await wait_for(
        lambda: any(
            p.user == "alice" and p.x > start.x for p in alice.of(pb.MatchState)[-1].players
        )
    )

    await bob.client.request(pb.ChatRequest(match_id=match_id, text="gg"))
    await wait_for(lambda: [line.text for line in alice.of(pb.ChatLine)] == ["gg"])

    await wait_for(lambda: alice.of(pb.MatchOver) and bob.of(pb.MatchOver), timeout=10)
    over = alice.of(pb.MatchOver)[0]
    mine = {p.user: p.score for p in over.players}
    assert set(mine) == {"alice", "bob"}
    ratings = {alice.of(pb.MatchOver)[0].rating, bob.of(pb.MatchOver)[0].rating}
    assert ratings == {START_RATING + RATING_STEP, START_RATING - RATING_STEP}
    await wait_for(lambda: not server.stateful_rooms.rooms)
    # Ticks are counted, states were pushed as the latest value of the match.
    assert server.stateful_rooms.stats.ticks >= 20
    assert len({s.tick for s in alice.of(pb.MatchState)}) > 1


async def test_a_dropped_player_gets_the_same_seat_back(start_server: Any, players: Any) -> None:
    app = make_app(max_players=2, poll_every=0.05)
    server = await start_server(app, authenticator=USERS)
    alice = await players(server, "alice", reconnect=Reconnect(initial=0.4))
    bob = await players(server, "bob")
    await alice.client.request(pb.QueueRequest())
    await bob.client.request(pb.QueueRequest())
    await wait_for(lambda: alice.of(pb.MatchFound))
    seat = alice.of(pb.MatchFound)[0].seat
    [room] = server.stateful_rooms.rooms.values()

    # The server drops alice's connection: her SDK reconnects and resumes by itself.
    [session] = server.sessions.local_sessions("alice")
    assert session.conn is not None
    session.conn.transport.abort()
    await wait_for(lambda: not room.seats["alice"].connected)
    await wait_for(lambda: room.seats["alice"].connected, timeout=5)
    await wait_for(lambda: len(alice.of(pb.MatchFound)) == 2)
    assert alice.of(pb.MatchFound)[1].seat == seat
    # Bob's pushed state showed her away meanwhile, and her back now.
    states = bob.of(pb.MatchState)
    assert any(p.user == "alice" and p.away for s in states for p in s.players)
    await wait_for(
        lambda: any(p.user == "alice" and not p.away for p in bob.of(pb.MatchState)[-1].players)
    )
    with pytest.raises(ServerError, match="in a match already"):
        await alice.client.request(pb.QueueRequest())


async def test_a_stop_ends_the_matches_with_no_winner(start_server: Any, players: Any) -> None:
    app = make_app(max_players=2, poll_every=0.05)
    server = await start_server(app, authenticator=USERS)
    alice, bob = await players(server, "alice"), await players(server, "bob")
    await alice.client.request(pb.QueueRequest())
    await bob.client.request(pb.QueueRequest())
    await wait_for(lambda: alice.of(pb.MatchFound) and bob.of(pb.MatchFound))
    await server.stop(timeout=2.0)
    await wait_for(lambda: alice.of(pb.MatchOver) and bob.of(pb.MatchOver))
    over = alice.of(pb.MatchOver)[0]
    assert over.winner == "" and over.rating == 0
    assert {p.user for p in over.players} == {"alice", "bob"}
