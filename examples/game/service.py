"""The example real-time game: a lobby, a matchmaking queue, authoritative matches at
20 Hz, reconnect into the same seat, and chat (docs/game.md).

    tickwire serve --app examples.game:app --set users_file=examples/demo-users.txt

Built on the framework's pieces, each a choice a real game could make differently:

- **Matchmaking** (examples/game/matchmaking.py) runs on a timer (``app.every``, four
  times a second): players of close ratings, 2 to 8 a match, bands widening while they
  wait. The queue is this node's; a cluster would run it on one node (an owned key).
- **A match is an authoritative room** (server/stateful_rooms.py) ticking at 20 Hz: its
  state is a World (examples/game/world.py), inputs are applied by sequence number (a
  resent input is ignored), and each tick pushes the whole state as a latest-value push
  keyed by the match (a lagging client gets the newest, never a backlog) and each coin
  taken as a reliable push (scores never skip an event).
- **A dropped player keeps the seat** for `RECONNECT_GRACE` seconds: a login or Resume
  within it is sent MatchFound and the state again; after it the player leaves the match
  and the others play on. A match whose players all left ends.
- **Ratings** live in the store (``app:game:rating:<user>``), so they outlive the
  process; the winner takes `RATING_STEP` from each other player.
- A match's messages (inputs, chat) are rate-limited to 60 a second per user.
- GAME_MAX_PLAYERS (8) and GAME_MATCH_SECONDS (120) in the environment change the
  served app's match size and length (the bench plays 2-player matches that last).
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from examples.game import game_pb2 as pb
from examples.game.matchmaking import Matchmaker, QueueFull
from examples.game.world import World
from protocol.errors import ErrorCode
from server import App, Context, HandlerError, Server
from server.stateful_rooms import Seat, StatefulRoom, room_message

log = logging.getLogger("tickwire.game")

TICK_RATE = 20
RECONNECT_GRACE = 15.0
START_RATING = 1000
RATING_STEP = 10
#: Seconds a match lasts at most.
MATCH_SECONDS = 120
MAX_CHAT = 200


def rating_key(user_id: str) -> str:
    return f"app:game:rating:{user_id}"


class Match(StatefulRoom):
    """One match: a World stepped at TICK_RATE, its players' seats, its chat."""

    tick_rate = TICK_RATE
    max_seats = 8
    reconnect_grace = RECONNECT_GRACE

    def on_create(self, options: dict[str, Any]) -> None:
        seconds = options.get("seconds", MATCH_SECONDS)
        self.world = World(seed=options.get("seed", 0), steps_total=int(seconds * TICK_RATE))
        self.players: list[str] = list(options.get("players", []))
        self.finishing = False

    def on_join(self, seat: Seat, options: dict[str, Any]) -> None:
        self.world.add(seat.index, seat.user_id)
        self.send(seat, self.found(seat))

    def on_reconnect(self, seat: Seat) -> None:
        self.send(seat, self.found(seat))
        self.send(seat, self.state())

    def on_leave(self, seat: Seat, consented: bool) -> None:
        self.world.players.pop(seat.index, None)

    def on_tick(self, dt: float) -> None:
        world = self.world
        for taken in world.step():
            self.broadcast(
                pb.CoinTaken(
                    match_id=self.room_id,
                    tick=world.step_count,
                    seat=taken.seat,
                    x=taken.x,
                    y=taken.y,
                )
            )
        self.broadcast(self.state())
        if world.over and not self.finishing:
            self.finishing = True
            self.manager._spawn(self.finish())

    async def finish(self) -> None:
        """Move the ratings and tell every player, then end the match."""
        if self.disposed:
            return
        winner = self.world.winner()
        store = self.server.store
        assert store is not None
        players = self.player_states()
        for seat in list(self.seats.values()):
            won = winner is not None and seat.index == winner.seat
            losers = max(1, len(self.seats) - 1)
            change = RATING_STEP * losers if won else -RATING_STEP
            rating = await store.incr(rating_key(seat.user_id), change)
            self.send(
                seat,
                pb.MatchOver(
                    match_id=self.room_id,
                    winner_seat=winner.seat if winner else 0,
                    winner=winner.user_id if winner else "",
                    players=players,
                    rating=START_RATING + rating,
                ),
            )
        self.dispose()

    def on_dispose(self) -> None:
        """Ended before its time (the server stops, every player left): the players still
        seated are told, with no winner and no rating moved."""
        if not self.finishing:
            self.broadcast(
                pb.MatchOver(match_id=self.room_id, players=self.player_states(), rating=0)
            )

    def found(self, seat: Seat) -> pb.MatchFound:
        return pb.MatchFound(
            match_id=self.room_id, seat=seat.index, players=self.players, tick_rate=TICK_RATE
        )

    def player_states(self) -> list[pb.PlayerState]:
        states = []
        for seat in self.seats.values():
            player = self.world.players.get(seat.index)
            if player is None:
                continue
            states.append(
                pb.PlayerState(
                    seat=seat.index,
                    user=seat.user_id,
                    x=player.x,
                    y=player.y,
                    score=player.score,
                    away=not seat.connected,
                    input_seq=player.input_seq,
                )
            )
        return states

    def state(self) -> pb.MatchState:
        return pb.MatchState(
            match_id=self.room_id,
            tick=self.world.step_count,
            players=self.player_states(),
            coins=[pb.Coin(x=x, y=y) for x, y in self.world.coins],
        )

    @room_message(pb.Input)
    def on_input(self, seat: Seat, msg: pb.Input) -> None:
        self.world.steer(seat.index, msg.dx, msg.dy, msg.seq)

    @room_message(pb.ChatRequest)
    def on_chat(self, seat: Seat, msg: pb.ChatRequest) -> pb.ChatReply:
        if not msg.text or len(msg.text) > MAX_CHAT:
            raise HandlerError(ErrorCode.DECODE_ERROR, f"a line is 1 to {MAX_CHAT} characters")
        self.broadcast(pb.ChatLine(match_id=self.room_id, user=seat.user_id, text=msg.text))
        return pb.ChatReply()

    @room_message(pb.LeaveMatchRequest)
    def on_leave_request(self, seat: Seat, msg: pb.LeaveMatchRequest) -> pb.LeaveMatchReply:
        self.manager._spawn(self.manager.leave(self.room_id, seat.user_id))
        return pb.LeaveMatchReply()


def make_app(
    *,
    min_players: int = 2,
    max_players: int = 8,
    poll_every: float = 0.25,
    match_seconds: float = MATCH_SECONDS,
) -> App:
    app = App("game")
    app.add_module(pb)
    app.latest_value(pb.MatchState, key=lambda msg: msg.match_id)
    app.room_type("match", Match, room_of=lambda msg: msg.match_id, rate="60/s", burst=60)
    app.state.matchmaker = Matchmaker(min_players=min_players, max_players=max_players)
    app.state.made = 0

    async def rating(ctx: Context) -> int:
        store = ctx.server.store
        assert store is not None and ctx.session is not None
        raw = await store.get(rating_key(ctx.session.user_id))
        return START_RATING + int(raw or 0)

    @app.handler(pb.LobbyRequest)
    async def lobby(ctx: Context, msg: pb.LobbyRequest) -> pb.LobbyReply:
        return pb.LobbyReply(
            queued=len(app.state.matchmaker.waiting),
            matches=len(ctx.server.stateful_rooms.rooms),
            rating=await rating(ctx),
        )

    @app.handler(pb.QueueRequest, rate="2/s", burst=4)
    async def queue(ctx: Context, msg: pb.QueueRequest) -> pb.QueueReply:
        assert ctx.session is not None
        user = ctx.session.user_id
        if ctx.server.stateful_rooms.of_user(user):
            raise HandlerError(ErrorCode.DECODE_ERROR, "you are in a match already")
        try:
            app.state.matchmaker.join(user, await rating(ctx), time.monotonic())
        except QueueFull as exc:
            raise HandlerError(ErrorCode.OVERLOADED, str(exc)) from None
        return pb.QueueReply(position=app.state.matchmaker.position(user))

    @app.handler(pb.LeaveQueueRequest)
    def leave_queue(ctx: Context, msg: pb.LeaveQueueRequest) -> pb.LeaveQueueReply:
        assert ctx.session is not None
        return pb.LeaveQueueReply(was_queued=app.state.matchmaker.leave(ctx.session.user_id))

    @app.every(poll_every, name="matchmaking")
    async def make_matches(server: Server) -> None:
        for group in app.state.matchmaker.poll(time.monotonic()):
            app.state.made += 1
            users = [player.user_id for player in group]
            room = await server.stateful_rooms.create(
                "match",
                options={
                    "seed": random.getrandbits(32),
                    "players": users,
                    "seconds": match_seconds,
                },
            )
            for user in users:
                await server.stateful_rooms.join(room.room_id, user)
            log.info("match %s: %s", room.room_id, ", ".join(users))

    @app.on_reload
    def keep_queue(server: Server, old: App) -> None:
        """The queue is in app.state, handed over; nothing else to carry."""

    return app


app = make_app(
    max_players=int(os.environ.get("GAME_MAX_PLAYERS", "8")),
    match_seconds=float(os.environ.get("GAME_MATCH_SECONDS", str(MATCH_SECONDS))),
)
