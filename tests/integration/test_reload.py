"""Handler reload in a running process: SIGUSR1 and --reload, without dropping connections."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from tests.conftest import StartServer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb
from tests.serveproc import server_log, spawn_serve

HANDLERS = """
from server import App
from tests.proto import testapp_pb2 as pb

app = App("hot", public=True)


@app.handler(pb.NoteRequest)
def note(ctx, msg):
    return pb.SleepReply(tag=len(msg.text) * {factor})
"""


def write_app(directory: Path, factor: int | str) -> None:
    path = directory / "hotapp.py"
    path.write_text(textwrap.dedent(HANDLERS.format(factor=factor)))


async def tag_of(client: AsyncClient, text: str) -> int:
    reply = await client.call(pb.NoteRequest(text=text), pb.SleepReply)
    return reply.tag


async def eventually(client: AsyncClient, text: str, want: int, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await tag_of(client, text)) != want:
        assert loop.time() < deadline, f"still {got}, want {want}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["sigusr1", "--reload"])
async def test_edited_handler_is_swapped_in_on_the_same_connection(
    tmp_path: Path, how: str
) -> None:
    write_app(tmp_path, 1)
    extra = ["--reload"] if how == "--reload" else []
    proc, address = await spawn_serve("--app", "hotapp:app", *extra, cwd=str(tmp_path))
    client = await AsyncClient.connect(*address, app_registry())
    try:
        assert await tag_of(client, "abc") == 3
        write_app(tmp_path, 10)
        if how == "sigusr1":
            proc.send_signal(signal.SIGUSR1)
        await eventually(client, "abc", 30)
        # A broken edit keeps the working handlers; the log says why.
        write_app(tmp_path, "(")
        if how == "sigusr1":
            proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1.2)
        assert await tag_of(client, "abc") == 30
        assert not client.closed
    finally:
        await client.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    log = await server_log(proc)
    assert "reloaded handlers" in log
    assert "reload failed; the previous handlers stay in place" in log
    assert "SyntaxError" in log


async def test_a_failed_reload_changes_nothing(start_server: StartServer) -> None:
    class Explodes:
        def wrap(self, route: Any, call_next: Any) -> Any:
            raise RuntimeError("layer cannot wrap")

    server = await start_server(make_app())
    before = (server.apps, server.routes, server.registry)
    broken = make_app()
    broken.add_middleware(Explodes())
    with pytest.raises(RuntimeError):
        server.swap_apps(broken)
    assert (server.apps, server.routes, server.registry) == before
    assert server.dispatcher.routes is server.routes
    async with await AsyncClient.connect(*server.address) as client:
        assert (await client.call(EchoRequest(data=b"z"), EchoReply)).data == b"z"
