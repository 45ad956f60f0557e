"""App lifecycle hooks on a real server: on_start before the first connection, on_stop
while connections are still open and the store is up, failures named after app and hook,
and a real `tickwire serve` whose SIGTERM runs on_stop before the process exits."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from protocol.system import GOAWAY_ID
from server import App, Server, ServerConfig
from server.auth import MemoryUsers
from server.timers import HookError, TimersClosed
from tests.conftest import StartServer
from tests.integration.rawclient import RawPeer
from tests.integration.test_push import raw_login
from tests.proto import testapp_pb2 as pb
from tests.serveproc import ROOT, server_log, spawn_serve

USERS = MemoryUsers({"alice": "a"})


def recording_app(name: str, events: list[str]) -> App:
    """An app whose hooks, one plain and one async each, append what ran to `events`."""
    app = App(name)

    @app.on_start
    def first(server: Server) -> None:
        events.append(f"{name} start sync (accepting={server.accepting})")

    @app.on_start
    async def second(server: Server) -> None:
        await asyncio.sleep(0)
        events.append(f"{name} start async")

    @app.on_stop
    def last(server: Server) -> None:
        events.append(f"{name} stop sync")

    @app.on_stop
    async def before_last(server: Server) -> None:
        await asyncio.sleep(0)
        events.append(f"{name} stop async")

    return app


async def test_hooks_run_in_app_order_at_start_and_in_reverse_at_stop(
    start_server: StartServer,
) -> None:
    events: list[str] = []
    server = await start_server(recording_app("a", events), recording_app("b", events))
    assert events == [
        "a start sync (accepting=False)",
        "a start async",
        "b start sync (accepting=False)",
        "b start async",
    ]
    events.clear()
    await server.stop(timeout=1.0)
    assert events == ["b stop async", "b stop sync", "a stop async", "a stop sync"]


async def test_on_start_runs_before_the_server_accepts_a_connection() -> None:
    seen: dict[str, Any] = {}
    app = App("loader")

    @app.on_start
    async def load(server: Server) -> None:
        seen["listeners"] = len(server._listeners)
        seen["store"] = await server.store.get("nothing") if server.store else "no store"

    server = Server(app, config=ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    try:
        assert seen == {"listeners": 0, "store": None}
    finally:
        await server.stop(timeout=1.0)


async def test_on_stop_pushes_reach_clients_before_their_goaway(start_server: StartServer) -> None:
    app = App("farewell")
    app.add_module(pb)

    @app.on_stop
    def farewell(server: Server) -> None:
        server.push("alice", pb.SleepReply(tag=77))

    server = await start_server(app, authenticator=USERS)
    peer = await RawPeer.connect(server.address)
    try:
        await raw_login(peer, "alice")
        stopping = asyncio.ensure_future(server.stop(timeout=5.0))
        frames = await peer.read_until_closed()
        await stopping
    finally:
        await peer.close()
    assert [f.msg_id for f in frames][-2:] == [1001, GOAWAY_ID]
    assert pb.SleepReply.FromString(frames[-2].payload).tag == 77


async def test_on_stop_saves_to_the_store_before_it_closes(tmp_path: Path) -> None:
    snapshot = str(tmp_path / "store.snapshot")
    config = ServerConfig(host="127.0.0.1", port=0, store_snapshot_path=snapshot)
    app = App("saver")

    @app.on_stop
    async def save(server: Server) -> None:
        assert server.store is not None
        await server.store.set("book", b"saved at stop")

    first = Server(app, config=config)
    await first.start()
    await first.stop(timeout=1.0)
    second = Server(config=config)
    await second.start()
    try:
        assert second.store is not None
        assert await second.store.get("book") == b"saved at stop"
    finally:
        await second.stop(timeout=1.0)


async def test_a_failing_on_start_fails_the_start_and_unwinds(tmp_path: Path) -> None:
    events: list[str] = []
    ticks: list[int] = []
    good = recording_app("good", events)

    @good.on_start
    def start_ticking(server: Server) -> None:
        server.every(0.01, ticks.append, 1)

    broken = App("broken")

    @broken.on_start
    def load_book(server: Server) -> None:
        raise RuntimeError("the journal is corrupt")

    @broken.on_stop
    def never(server: Server) -> None:
        events.append("broken stop")

    snapshot = tmp_path / "store.snapshot"
    config = ServerConfig(host="127.0.0.1", port=0, store_snapshot_path=str(snapshot))
    server = Server(good, broken, config=config)
    with pytest.raises(HookError) as caught:
        await server.start()
    assert str(caught.value) == (
        "on_start hook tests.integration.test_lifecycle."
        "test_a_failing_on_start_fails_the_start_and_unwinds.<locals>.load_book of app "
        "'broken' failed: RuntimeError('the journal is corrupt')"
    )
    # The app that started is stopped; the one that failed is not; nothing listens.
    assert events[-2:] == ["good stop async", "good stop sync"]
    assert "broken stop" not in events
    assert server._listeners == [] and not server.timers.live
    assert snapshot.exists()  # the store was closed, which writes its last snapshot
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count
    await server.stop(timeout=1.0)  # a stop after a failed start has nothing to do


async def test_an_on_start_past_hook_timeout_fails_the_start() -> None:
    app = App("slow")

    @app.on_start
    async def warm_cache(server: Server) -> None:
        await asyncio.sleep(30)

    server = Server(app, config=ServerConfig(host="127.0.0.1", port=0, hook_timeout=0.1))
    with pytest.raises(HookError, match=r"warm_cache of app 'slow' did not finish within 0.1 s"):
        await server.start()


async def test_a_failing_on_stop_is_logged_and_the_stop_goes_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    failing = App("failing")

    @failing.on_stop
    def explode(server: Server) -> None:
        raise ValueError("cannot save")

    slow = App("slow")

    @slow.on_stop
    async def hang(server: Server) -> None:
        await asyncio.sleep(30)

    server = await start_server(recording_app("first", events), failing, slow, hook_timeout=0.1)
    with caplog.at_level(logging.ERROR, logger="tickwire.server"):
        await server.stop(timeout=1.0)
    assert events[-2:] == ["first stop async", "first stop sync"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("hang of app 'slow' did not finish within 0.1 s" in m for m in messages)
    assert any(
        "explode of app 'failing' failed: ValueError('cannot save'); the stop goes on" in m
        for m in messages
    )


async def test_timers_are_over_before_on_stop_and_cannot_be_made_there(
    start_server: StartServer,
) -> None:
    seen: dict[str, Any] = {}
    app = App("ticker")
    body_done: list[bool] = []

    async def tick() -> None:
        await asyncio.sleep(0.1)
        body_done.append(True)

    @app.on_stop
    def check(server: Server) -> None:
        seen["live"] = len(server.timers.live)
        seen["body_done"] = bool(body_done)
        try:
            server.call_later(1, print)
        except TimersClosed as exc:
            seen["refused"] = str(exc)

    server = await start_server(app)
    server.every(0.01, tick)
    await asyncio.sleep(0.05)  # a body is running now: each takes 0.1 s
    await server.stop(timeout=1.0)
    assert seen == {
        "live": 0,
        "body_done": True,
        "refused": "the server is stopping: no new timers",
    }


HOOK_APP = """
import logging

from server import App

log = logging.getLogger("hookapp")
app = App("hooked")


@app.on_start
async def load(server):
    log.warning("on_start ran")


@app.every(0.02)
def tick(server):
    server.tick_count = getattr(server, "tick_count", 0) + 1


@app.on_stop
async def save(server):
    log.warning("on_stop ran after %s ticks", "some" if server.tick_count else "no")
"""


async def test_serve_runs_on_start_and_sigterm_runs_on_stop_before_exit(tmp_path: Path) -> None:
    (tmp_path / "hookapp.py").write_text(textwrap.dedent(HOOK_APP))
    proc, _ = await spawn_serve("--app", "hookapp:app", cwd=str(tmp_path))
    await asyncio.sleep(0.2)
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    log = await server_log(proc)
    started, stopped = log.index("on_start ran"), log.index("on_stop ran after some ticks")
    assert started < log.index("listening on") < log.index("stopping: draining") < stopped
    assert stopped < log.rindex("stopped")


async def test_serve_exits_2_naming_the_hook_when_on_start_fails(tmp_path: Path) -> None:
    (tmp_path / "badapp.py").write_text(
        textwrap.dedent(
            """
            from server import App

            app = App("venue")


            @app.on_start
            def restore_books(server):
                raise OSError("journal directory missing")
            """
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--port",
        "0",
        "--app",
        "badapp:app",
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert (
        "cannot start: on_start hook badapp.restore_books of app 'venue' failed: "
        "OSError('journal directory missing')"
    ) in err.decode()
    assert "listening on" not in err.decode()
