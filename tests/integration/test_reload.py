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
from server import App, Context, Server
from server.timers import ReloadRefused
from tests.conftest import StartServer, wait_for
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


def game(generation: int, log: list[tuple[Any, ...]], *, carry: bool = True) -> App:
    """A game's code as of `generation`: a heartbeat declared with @app.every, an async
    body that is always running (it takes longer than its interval), and one match
    timer per NoteRequest text, made by the handler with server.every. The reply's tag
    is the match's ticks so far, read from app.state."""
    app = App("game", public=True)
    app.state.matches = {}

    @app.every(0.01)
    def heartbeat(server: Server) -> None:
        log.append(("heartbeat", generation))

    @app.every(0.01)
    async def slow(server: Server) -> None:
        await asyncio.sleep(0.05)
        log.append(("slow done", generation))

    def tick(match: str) -> None:
        app.state.matches[match] += 1
        log.append(("tick", generation, match))

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        if msg.text not in app.state.matches:
            app.state.matches[msg.text] = 0
            ctx.server.every(0.01, tick, msg.text)
        return pb.SleepReply(tag=app.state.matches[msg.text])

    if carry:

        @app.on_reload
        def restart_matches(server: Server, old: App) -> None:
            log.append(("reload", generation, old is not app))
            for match in app.state.matches:
                server.every(0.01, tick, match)

    return app


def generations_after(log: list[tuple[Any, ...]], index: int) -> set[int]:
    return {entry[1] for entry in log[index:]}


async def test_a_reload_never_runs_two_generations_of_timers(start_server: StartServer) -> None:
    log: list[tuple[Any, ...]] = []
    server = await start_server(game(1, log))
    client = await AsyncClient.connect(*server.address, app_registry())
    try:
        await client.call(pb.NoteRequest(text="m1"), pb.SleepReply)
        await wait_for(lambda: sum(e[0] == "tick" for e in log) >= 3)
        await server.reload_apps(game(2, log))
        # Everything of generation 1 ended before generation 2's first hook ran; the
        # body that was running finished rather than being cut.
        reloaded = log.index(("reload", 2, True))
        assert generations_after(log, reloaded) == {2}
        assert log[reloaded - 1] == ("slow done", 1)
        # One generation of timers: heartbeat, slow, and the one match.
        assert len(server.timers.live) == 3
        assert {t.generation for t in server.timers.live} == {server.timers.generation}
        before = (await client.call(pb.NoteRequest(text="m1"), pb.SleepReply)).tag
        await wait_for(lambda: sum(e[:3:2] == ("tick", "m1") for e in log[reloaded:]) >= 3)
        # The new handler reads the carried state, which the restarted timer advances.
        after = (await client.call(pb.NoteRequest(text="m1"), pb.SleepReply)).tag
        assert after > before >= 3
        await wait_for(lambda: ("slow done", 2) in log[reloaded:])
        assert generations_after(log, reloaded) == {2}
        assert {e[0] for e in log[reloaded:]} >= {"heartbeat", "slow done", "tick"}
        assert not client.closed
    finally:
        await client.close()


async def test_a_reload_that_would_drop_timers_is_refused(start_server: StartServer) -> None:
    log: list[tuple[Any, ...]] = []
    server = await start_server(game(1, log))
    client = await AsyncClient.connect(*server.address, app_registry())
    try:
        await client.call(pb.NoteRequest(text="m1"), pb.SleepReply)
        routes = server.routes
        with pytest.raises(ReloadRefused) as refused:
            await server.reload_apps(game(2, log, carry=False))
        assert str(refused.value).startswith(
            "1 timers made with server.every/call_later are running "
            "(tests.integration.test_reload.game.<locals>.tick) and no app declares "
            "@app.on_reload"
        )
        # Nothing changed: generation 1 still ticks and serves.
        assert server.routes is routes
        mark = len(log)
        await wait_for(lambda: sum(e[0] == "tick" for e in log[mark:]) >= 2)
        assert generations_after(log, mark) == {1}
    finally:
        await client.close()


async def test_an_app_new_by_name_starts_and_one_gone_stops(start_server: StartServer) -> None:
    events: list[str] = []
    old, new = App("old"), App("new")
    old.on_stop(lambda server: events.append("old stopped"))
    new.on_start(lambda server: events.append("new started"))
    new.on_reload(lambda server, app: events.append("new reloaded"))
    server = await start_server(old)
    await server.reload_apps(new)
    assert events == ["old stopped", "new started"]
    assert [app.name for app in server.apps] == ["system", "new"]


NOT_RELOADABLE = """
from server import App
from tests.proto import testapp_pb2 as pb

app = App("venue", public=True, reloadable=False)


@app.handler(pb.NoteRequest)
def note(ctx, msg):
    return pb.SleepReply(tag=len(msg.text) * {factor})
"""


async def test_a_non_reloadable_app_refuses_sigusr1_naming_itself(tmp_path: Path) -> None:
    (tmp_path / "hotapp.py").write_text(textwrap.dedent(NOT_RELOADABLE.format(factor=1)))
    proc, address = await spawn_serve("--app", "hotapp:app", cwd=str(tmp_path))
    client = await AsyncClient.connect(*address, app_registry())
    try:
        (tmp_path / "hotapp.py").write_text(textwrap.dedent(NOT_RELOADABLE.format(factor=10)))
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1.0)
        assert await tag_of(client, "abc") == 3
    finally:
        await client.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    log = await server_log(proc)
    assert (
        "reload refused: app 'venue' is declared App(reloadable=False): its state cannot be "
        "handed to new code; restart the server instead (SIGHUP)"
    ) in log
    assert "reloaded handlers" not in log


TICKING = """
from pathlib import Path

from server import App

app = App("ticking")
GENERATION = {generation}


@app.every(0.02)
def tick(server):
    with open("ticks.txt", "a") as out:
        out.write(f"{{GENERATION}}\\n")
"""


async def test_sigusr1_swaps_the_timers_of_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "ticking.py").write_text(textwrap.dedent(TICKING.format(generation=1)))
    ticks = tmp_path / "ticks.txt"
    proc, _ = await spawn_serve("--app", "ticking:app", cwd=str(tmp_path))
    try:
        await wait_for(lambda: ticks.exists() and "1\n" in ticks.read_text(), 10)
        (tmp_path / "ticking.py").write_text(textwrap.dedent(TICKING.format(generation=2)))
        proc.send_signal(signal.SIGUSR1)
        await wait_for(lambda: "2\n" in ticks.read_text(), 10)
        first = ticks.read_text().split().index("2")
        await wait_for(lambda: ticks.read_text().split().count("2") >= 5, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert set(ticks.read_text().split()[first:]) == {"2"}
    assert "reloaded handlers" in await server_log(proc)
