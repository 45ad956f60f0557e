"""The application the integration tests serve: one handler per behaviour under test."""

from __future__ import annotations

import asyncio
import threading
import time

from protocol.registry import MessageRegistry, system_registry
from server import App, Context, HandlerError
from tests.proto import testapp_pb2 as pb


def app_registry() -> MessageRegistry:
    """What a client of the test app knows: the system messages and testapp's."""
    registry = system_registry()
    registry.register_module(pb)
    return registry


def make_app() -> App:
    app = App("testapp", public=True)
    app.notes: list[str] = []  # type: ignore[attr-defined]
    app.gate = asyncio.Event()  # type: ignore[attr-defined]

    @app.handler(pb.SleepRequest)
    async def sleep(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        await asyncio.sleep(msg.ms / 1000)
        return pb.SleepReply(tag=msg.tag)

    @app.handler(pb.UnorderedSleepRequest, ordered=False)
    async def unordered_sleep(ctx: Context, msg: pb.UnorderedSleepRequest) -> pb.SleepReply:
        await asyncio.sleep(msg.ms / 1000)
        return pb.SleepReply(tag=msg.tag)

    @app.handler(pb.FailRequest)
    def fail(ctx: Context, msg: pb.FailRequest) -> pb.SleepReply:
        raise RuntimeError("secret internals: db password is hunter2")

    @app.handler(pb.BlockingRequest, blocking=True)
    def blocking(ctx: Context, msg: pb.BlockingRequest) -> pb.BlockingReply:
        time.sleep(msg.ms / 1000)  # would stall the event loop if it ran there
        return pb.BlockingReply(thread_name=threading.current_thread().name)

    @app.handler(pb.AppErrorRequest)
    def app_error(ctx: Context, msg: pb.AppErrorRequest) -> pb.SleepReply:
        raise HandlerError(msg.code, f"application said no ({msg.code})")

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        app.notes.append(msg.text)  # type: ignore[attr-defined]
        return pb.SleepReply(tag=len(msg.text))

    @app.handler(pb.BigRequest)
    def big(ctx: Context, msg: pb.BigRequest) -> pb.BigReply:
        return pb.BigReply(data=b"x" * msg.size)

    @app.handler(pb.GateRequest)
    async def gate(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        await app.gate.wait()  # type: ignore[attr-defined]
        return pb.SleepReply(tag=msg.tag)

    @app.handler(pb.OwnTimeoutRequest)
    async def own_timeout(ctx: Context, msg: pb.OwnTimeoutRequest) -> pb.SleepReply:
        raise TimeoutError("the handler's own database call timed out")

    return app
