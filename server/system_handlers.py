"""Handlers of the protocol's own messages: Ping, Echo, Describe, Hello, and the session
messages (Login, RefreshToken, Logout, Resume) over the server's SessionManager.

Ping, Echo, Describe, Hello, Login and Resume are public; RefreshToken and Logout need the
session they act on.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import (
    DescribeReply,
    DescribeRequest,
    EchoReply,
    EchoRequest,
    Hello,
    LoginReply,
    LoginRequest,
    LogoutReply,
    LogoutRequest,
    Ping,
    Pong,
    PushAck,
    RefreshTokenRequest,
    ResumeReply,
    ResumeRequest,
    Welcome,
)
from protocol.system import PROTOCOL_VERSION
from server.app import App, Context
from server.errors import HandlerError
from server.ratelimit import WrongCredentials
from server.sessions import Session
from server.store import StoreError, is_reported

log = logging.getLogger("tickwire.sessions")

SERVER_NAME = "tickwire"


def system_app() -> App:
    app = App("system", public=True)

    @app.handler(Ping)
    def ping(ctx: Context, msg: Ping) -> Pong:
        return Pong(client_time_ns=msg.client_time_ns, server_time_ns=time.time_ns())

    @app.handler(EchoRequest)
    def echo(ctx: Context, msg: EchoRequest) -> EchoReply:
        return EchoReply(data=msg.data)

    @app.handler(Hello)
    def hello(ctx: Context, msg: Hello) -> Welcome:
        # The same answer whatever version the client names: a client that cannot speak
        # ours disconnects (docs/protocol.md, "Fixed IDs": a new version is a new contract).
        config = ctx.server.config
        idle_ms = int(config.idle_timeout * 1000)
        return Welcome(
            protocol_version=PROTOCOL_VERSION,
            server_name=SERVER_NAME,
            max_frame=ctx.conn.decoder.max_frame,  # the limit for this connection now
            # A third of the idle timeout: two heartbeats may be late before it fires.
            heartbeat_interval_ms=idle_ms // 3,
            session_ttl_s=int(config.session_ttl),
            compression_offered=False,
            idle_timeout_ms=idle_ms,
            ping_interval_ms=int(config.ping_interval * 1000),
            max_outstanding_pings=config.max_outstanding_pings,
            auth_timeout_ms=int(config.auth_timeout * 1000),
            frame_timeout_ms=int(config.frame_timeout * 1000),
            session_max_frame=config.max_frame,
        )

    @app.handler(Pong)
    def pong(ctx: Context, msg: Pong) -> None:
        # The answer to a server heartbeat (docs/protocol.md, "Server heartbeats"): that
        # it arrived as a whole frame is all the sweep needs, so there is nothing to do.
        # Sent as a request it answers nothing a client could wait for: refused as if
        # it had no handler, as before heartbeats.
        if ctx.seq:
            raise HandlerError(ErrorCode.UNKNOWN_MESSAGE, f"no handler for message id {ctx.msg_id}")
        return None

    @app.handler(DescribeRequest)
    def describe(ctx: Context, msg: DescribeRequest) -> DescribeReply:
        # The registry is frozen once the server starts; Server caches the reply.
        return ctx.server.describe_reply

    @app.handler(LoginRequest)
    async def login(ctx: Context, msg: LoginRequest) -> LoginReply:
        server = ctx.server
        if server.authenticator is None:
            raise HandlerError(
                ErrorCode.UNAUTHENTICATED,
                "this server has no authenticator (set users_file, or give Server one)",
            )
        if server.breaker is not None:
            # The session could not be stored: answer the retry now, not after scrypt.
            server.breaker.check()
        user_id = await server.authenticator.authenticate(msg.user, msg.password, msg.device)
        if user_id is None:
            log.info("login refused", extra={"conn": ctx.conn.id, "user": msg.user})
            raise WrongCredentials()  # counted by the login throttle (server/ratelimit.py)
        session, token = await server.sessions.login(ctx.conn, user_id, msg.device)
        try:
            await _take_inbox(ctx, session)
        except BaseException:
            server.sessions.abandon(session)  # the client will never see its token
            raise
        # Right behind the reply: the new session's pushes (the inbox first).
        ctx.after_reply = partial(server.pusher.release, session, 0)
        log.info(
            "login",
            extra={"conn": ctx.conn.id, "user": user_id, "session": session.session_id},
        )
        return _login_reply(ctx, session, token)

    @app.handler(RefreshTokenRequest, public=False)
    async def refresh(ctx: Context, msg: RefreshTokenRequest) -> LoginReply:
        session = _session(ctx)
        token = await ctx.server.sessions.refresh(session, ctx.conn)
        return _login_reply(ctx, session, token)

    @app.handler(LogoutRequest, public=False)
    async def logout(ctx: Context, msg: LogoutRequest) -> LogoutReply:
        await ctx.server.sessions.logout(_session(ctx), ctx.conn)
        return LogoutReply()

    @app.handler(ResumeRequest)
    async def resume(ctx: Context, msg: ResumeRequest) -> ResumeReply:
        server = ctx.server
        seen = msg.last_push_seq
        session = await server.sessions.resume(ctx.conn, msg.token, seen)
        _, gap = session.pushes.since(seen)
        if session.pushes_lost:
            # Rebuilt from a record its last holder did not save at a stop: pushes after
            # `seen` may have died with that process (docs/internet.md, "No silent loss").
            gap = True
            session.pushes_lost = False
        # What the client says it saw needs no replay ever again: an implicit PushAck.
        session.pushes.ack(seen)
        last = session.pushes.last_seq
        await _take_inbox(ctx, session)
        # Right behind the reply: what the client missed, in order, then anything new.
        ctx.after_reply = partial(server.pusher.release, session, seen)
        log.info(
            "resume",
            extra={
                "conn": ctx.conn.id,
                "user": session.user_id,
                "session": session.session_id,
                "gap": gap,
            },
        )
        return ResumeReply(
            user_id=session.user_id,
            session_id=session.session_id,
            expires_at_ms=session.expires_at_ms,
            session_ttl_s=int(server.config.session_ttl),
            push_gap=gap,
            last_push_seq=last,
        )

    @app.handler(PushAck, public=False)
    def push_ack(ctx: Context, msg: PushAck) -> None:
        session = ctx.session
        if session is not None:
            session.pushes.ack(msg.seq)
        return None

    return app


async def _take_inbox(ctx: Context, session: Session) -> None:
    """Move the user's offline pushes into the session's buffer, ahead of the pushes made
    while the Login/Resume was handled (nothing has been written of those yet, so they
    are renumbered after the inbox): the client sees them in the order they were made."""
    server = ctx.server
    inbox = server.inbox
    if inbox is None:
        return
    try:
        await server.inbox_settled(session.user_id)
        taken = await inbox.take(session.user_id)
    except StoreError as exc:
        # The login stands; what waits in the inbox stays there for the next one. During
        # an outage the breaker has said so once: no line per login.
        if not is_reported(exc):
            log.error("inbox of %s not delivered: %s", session.user_id, exc)
        return
    if session.restored:
        # A stop put these in the inbox as well as in the session record the Resume
        # restored them from (with their sequence numbers): deliver them once.
        taken = _without(taken, session.restored)
        session.restored = []
    if not taken:
        return
    buffer = session.pushes
    fresh = buffer.take_newer(session.held_from)
    # Taken out of the store, so dropping any would lose it: the buffer grows to fit
    # (the inbox is bounded by inbox_max, so this is too).
    buffer.make_room(len(taken) + len(fresh))
    for msg_id, payload in taken:
        buffer.add(msg_id, payload)
    for msg_id, payload in fresh:
        buffer.add(msg_id, payload)


def _without(
    items: list[tuple[int, bytes]], remove: list[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """`items` minus one occurrence of each of `remove` (a multiset difference), in order."""
    counts: dict[tuple[int, bytes], int] = {}
    for item in remove:
        counts[item] = counts.get(item, 0) + 1
    kept = []
    for item in items:
        if counts.get(item, 0) > 0:
            counts[item] -= 1
        else:
            kept.append(item)
    return kept


def _session(ctx: Context) -> Session:
    # The auth gate let the frame in, but an earlier frame's logout may have run since.
    session = ctx.session
    if session is None:
        raise HandlerError(ErrorCode.UNAUTHENTICATED, "the session ended")
    return session


def _login_reply(ctx: Context, session: Session, token: str) -> LoginReply:
    return LoginReply(
        user_id=session.user_id,
        session_id=session.session_id,
        token=token,
        expires_at_ms=session.expires_at_ms,
        session_ttl_s=int(ctx.server.config.session_ttl),
    )
