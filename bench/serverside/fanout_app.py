"""The application `tickwire bench fanout` serves: one room, broadcasts on demand, stats.

    tickwire serve --no-chat --app bench.serverside.fanout_app:app --set users_file=USERS ...

- `FanoutJoin` (private: log in first) puts the caller's session in the room "fanout".
- `FanoutTrigger{count, size}` (public) broadcasts `count` `FanoutPush` messages of
  `size` data bytes to the room, one `Room.broadcast` each, all in this one sync handler
  call: the server then writes them to each member in one write (one per connection per
  loop iteration, server/push.py), as it would several broadcasts made in one iteration.
  Answered after the broadcasts, with the room's members on this node and the
  broadcasts made here so far.

Served by the nodes of a cluster (`--cluster`), the room spans them (server/cluster/
rooms.py): a Trigger on one node reaches the members of every node, through one PUBLISH
per broadcast, as long as it has a member of its own (the bench triggers node 0, which
holds member 0); Stats and the histogram are the answering node's own.
- `FanoutStats{reset}` (public) answers `server.pusher.fanout_us` (the HDR histogram of
  microseconds from a push call to the write of its last member, encoded) and counters;
  with `reset` the histogram starts again after the answer, so a bench reads the
  histogram of its measured window alone.

Trigger and Stats are public so that the bench's driver connection needs no user; only
serve this app for benchmarks. Its message IDs (60000-60099, bench/proto/bench.proto)
keep clear of any application's, so it can be served next to one.
"""

from __future__ import annotations

from bench.proto import bench_pb2
from bench.proto.bench_pb2 import (
    FanoutJoin,
    FanoutJoinReply,
    FanoutPush,
    FanoutStats,
    FanoutStatsReply,
    FanoutTrigger,
    FanoutTriggerReply,
)
from protocol.errors import ErrorCode
from server import App, Context, HandlerError

#: The room every member joins.
ROOM = "fanout"
#: Bounds of one Trigger, so a typo cannot stall the server for minutes.
MAX_COUNT = 10_000
MAX_SIZE = 1 << 20
#: The application error code of a Trigger over those bounds.
TOO_BIG = 100


class _State:
    """Broadcasts made since the server started, and the push message per size."""

    def __init__(self) -> None:
        self.broadcasts = 0
        self.messages: dict[int, FanoutPush] = {}

    def message(self, size: int) -> FanoutPush:
        message = self.messages.get(size)
        if message is None:
            message = self.messages[size] = FanoutPush(data=b"x" * size)
        return message


def make_app() -> App:
    app = App("fanout-bench")
    app.add_module(bench_pb2)  # FanoutPush is pushed, never requested
    state = _State()

    @app.handler(FanoutJoin)
    def join(ctx: Context, msg: FanoutJoin) -> FanoutJoinReply:
        session = ctx.session
        if session is None:  # private handlers never run without one; this is for the types
            raise HandlerError(ErrorCode.UNAUTHENTICATED, "log in first")
        room = ctx.server.room(ROOM)
        room.join(session)
        return FanoutJoinReply(members=len(room))

    @app.handler(FanoutTrigger, public=True)
    def trigger(ctx: Context, msg: FanoutTrigger) -> FanoutTriggerReply:
        if msg.count > MAX_COUNT or msg.size > MAX_SIZE:
            raise HandlerError(
                TOO_BIG, f"a Trigger takes count <= {MAX_COUNT} and size <= {MAX_SIZE}"
            )
        room = ctx.server.pusher.rooms.get(ROOM)
        if room is None:
            return FanoutTriggerReply(members=0, broadcasts=state.broadcasts)
        message = state.message(msg.size)
        broadcast = room.broadcast
        for _ in range(msg.count):
            broadcast(message)
        state.broadcasts += msg.count
        return FanoutTriggerReply(members=len(room), broadcasts=state.broadcasts)

    @app.handler(FanoutStats, public=True)
    def stats(ctx: Context, msg: FanoutStats) -> FanoutStatsReply:
        server = ctx.server
        pushes = server.pusher
        room = pushes.rooms.get(ROOM)
        histogram = pushes.fanout_us
        pending = [
            conn.transport.get_write_buffer_size()
            for conn in server.connections
            if conn.transport is not None
        ]
        reply = FanoutStatsReply(
            fanout_us=histogram.encode() if histogram.get_total_count() else b"",
            broadcasts=state.broadcasts,
            reliable_pushes=pushes.reliable,
            slow_consumer_closes=server.stats.close_reasons.get("slow_consumer", 0),
            writes_paused=server.stats.writes_paused,
            members=len(room) if room is not None else 0,
            bytes_out=server.stats.bytes_out,
            connections=len(server.connections),
            closing=sum(1 for conn in server.connections if conn.closing),
            pending_bytes=sum(pending),
            pending_bytes_max=max(pending, default=0),
        )
        if msg.reset:
            histogram.reset()
        return reply

    return app


app = make_app()
