"""Handlers of the protocol's own messages: Ping, Echo, Describe (they work before login)."""

from __future__ import annotations

import time

from protocol.proto.system_pb2 import (
    DescribeReply,
    DescribeRequest,
    EchoReply,
    EchoRequest,
    Hello,
    Ping,
    Pong,
    Welcome,
)
from server.app import App, Context

#: The wire protocol version of PROTOCOL.md this server speaks.
PROTOCOL_VERSION = 1
SERVER_NAME = "tickwire"


def system_app() -> App:
    app = App("system")

    @app.handler(Ping)
    def ping(ctx: Context, msg: Ping) -> Pong:
        return Pong(client_time_ns=msg.client_time_ns, server_time_ns=time.time_ns())

    @app.handler(EchoRequest)
    def echo(ctx: Context, msg: EchoRequest) -> EchoReply:
        return EchoReply(data=msg.data)

    @app.handler(Hello)
    def hello(ctx: Context, msg: Hello) -> Welcome:
        # The same answer whatever version the client names: a client that cannot speak
        # ours disconnects (PROTOCOL.md: a new version is a new contract).
        config = ctx.server.config
        idle_ms = int(config.idle_timeout * 1000)
        return Welcome(
            protocol_version=PROTOCOL_VERSION,
            server_name=SERVER_NAME,
            max_frame=config.max_frame,
            # A third of the idle timeout: two heartbeats may be late before it fires.
            heartbeat_interval_ms=idle_ms // 3,
            session_ttl_s=0,
            compression_offered=False,
            idle_timeout_ms=idle_ms,
        )

    @app.handler(DescribeRequest)
    def describe(ctx: Context, msg: DescribeRequest) -> DescribeReply:
        # The registry is frozen once the server starts; Server caches the reply.
        return ctx.server.describe_reply

    return app
