"""Handlers of the protocol's own messages: Ping, Echo, Describe (they work before login)."""

from __future__ import annotations

import time

from protocol.proto.system_pb2 import (
    DescribeReply,
    DescribeRequest,
    EchoReply,
    EchoRequest,
    Ping,
    Pong,
)
from server.app import App, Context


def system_app() -> App:
    app = App("system")

    @app.handler(Ping)
    def ping(ctx: Context, msg: Ping) -> Pong:
        return Pong(client_time_ns=msg.client_time_ns, server_time_ns=time.time_ns())

    @app.handler(EchoRequest)
    def echo(ctx: Context, msg: EchoRequest) -> EchoReply:
        return EchoReply(data=msg.data)

    @app.handler(DescribeRequest)
    def describe(ctx: Context, msg: DescribeRequest) -> DescribeReply:
        # The registry is frozen once the server starts; Server caches the reply.
        return ctx.server.describe_reply

    return app
