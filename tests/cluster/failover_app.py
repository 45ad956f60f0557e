"""The app the failover tests serve on `tickwire serve` nodes (`--app
tests.cluster.failover_app:app`): every answer names the node that gave it, so a test
can tell where a request ran after a node was killed."""

from __future__ import annotations

from server import App, Context
from tests.proto import testapp_pb2 as pb

#: The user SleepRequest pushes to.
PUSHED_USER = "alice"

app = App("failover")
app.add_module(pb)


@app.handler(pb.NoteRequest, owner=lambda msg: msg.text, public=True)
def owner(ctx: Context, msg: pb.NoteRequest) -> pb.BlockingReply:
    """The key `msg.text`'s owner runs this: it answers its node id."""
    return pb.BlockingReply(thread_name=ctx.server.node_id)


@app.handler(pb.BlockingRequest)
def whoami(ctx: Context, msg: pb.BlockingRequest) -> pb.BlockingReply:
    """`node/user/session`: where the caller's session is held now."""
    session = ctx.session
    assert session is not None
    return pb.BlockingReply(
        thread_name=f"{ctx.server.node_id}/{session.user_id}/{session.session_id}"
    )


@app.handler(pb.SleepRequest, public=True)
def push(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
    """server.push of SleepReply(tag) to PUSHED_USER, from the node that got the request;
    answers how many of the user's sessions this node reached."""
    return pb.SleepReply(tag=ctx.server.push(PUSHED_USER, pb.SleepReply(tag=msg.tag)))
