"""Server-owned timers on a real server: runs, cancel, no overlap, bounded error logs,
the max_timers bound, `@app.every` declarations and the timer metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from server import App, Server
from server.timers import ERROR_LOG_INTERVAL, TimerError, TooManyTimers
from tests.conftest import StartServer, wait_for


async def test_every_runs_until_its_handle_is_cancelled(start_server: StartServer) -> None:
    server = await start_server()
    runs: list[str] = []
    timer = server.every(0.01, runs.append, "tick")
    await wait_for(lambda: len(runs) >= 3)
    timer.cancel()
    count = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == count and runs[0] == "tick"
    assert timer not in server.timers.live


async def test_call_later_runs_once_with_its_arguments(start_server: StartServer) -> None:
    server = await start_server()
    calls: list[tuple[int, int]] = []
    server.call_later(0.01, lambda a, b: calls.append((a, b)), 1, 2)
    never = server.call_later(0.01, calls.append, (0, 0))
    never.cancel()
    await wait_for(lambda: bool(calls))
    await asyncio.sleep(0.03)
    assert calls == [(1, 2)]
    assert not server.timers.live


async def test_an_async_body_never_overlaps_itself(start_server: StartServer) -> None:
    server = await start_server()
    state = {"running": 0, "most": 0, "runs": 0}

    async def slow_tick() -> None:
        state["running"] += 1
        state["most"] = max(state["most"], state["running"])
        await asyncio.sleep(0.05)
        state["running"] -= 1
        state["runs"] += 1

    server.every(0.01, slow_tick, name="slow")
    await wait_for(lambda: state["runs"] >= 3)
    assert state["most"] == 1
    assert server.timers.overruns["slow"] >= 3
    assert server.timers.runs["slow"] >= 3


async def test_a_sync_body_that_holds_the_loop_skips_the_runs_it_missed(
    start_server: StartServer,
) -> None:
    server = await start_server()
    stamps: list[float] = []

    def hog() -> None:
        stamps.append(time.monotonic())
        time.sleep(0.05)  # five intervals

    timer = server.every(0.01, hog, name="hog")
    start = timer.due
    await wait_for(lambda: len(stamps) >= 3)
    # The runs it missed are skipped and counted (four or more each time the body
    # returns), not made up in a burst; the schedule stays on its grid.
    assert server.timers.overruns["hog"] >= 8
    assert server.timers.runs["hog"] == len(stamps)
    assert round((timer.due - start) / 0.01, 6) % 1 == 0


async def test_a_raising_body_is_logged_once_a_minute_and_goes_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()

    async def broken() -> None:
        raise KeyError("match 7")

    def also_broken() -> None:
        raise ValueError("no book")

    with caplog.at_level(logging.ERROR, logger="tickwire.timers"):
        server.every(0.01, broken, name="broken")
        server.every(0.01, also_broken, name="also")
        await wait_for(lambda: server.timers.errors["broken"] >= 5)
        await wait_for(lambda: server.timers.errors["also"] >= 5)
    lines = [r for r in caplog.records if r.name == "tickwire.timers"]
    assert sorted(r.getMessage() for r in lines) == [
        f"timer {name} raised; it goes on; its next error is logged in "
        f"{ERROR_LOG_INTERVAL:g} s at the soonest"
        for name in ("also", "broken")
    ]
    assert all(r.exc_info is not None for r in lines)
    assert server.timers.runs["broken"] >= 5


async def test_stop_awaits_a_running_body_and_ends_every_timer(
    start_server: StartServer,
) -> None:
    server = await start_server()
    events: list[str] = []

    async def tick() -> None:
        events.append("began")
        await asyncio.sleep(0.1)
        events.append("finished")

    server.every(0.01, tick)
    server.call_later(30, events.append, "never")
    await wait_for(lambda: "began" in events)
    await server.stop(timeout=1.0)
    assert events[-1] == "finished"
    assert not server.timers.live
    count = len(events)
    await asyncio.sleep(0.05)
    assert len(events) == count and "never" not in events


async def test_a_body_past_hook_timeout_is_cancelled_at_stop(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(hook_timeout=0.1)
    cancelled: list[bool] = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    server.every(0.01, stuck, name="stuck")
    await wait_for(lambda: server.timers.runs["stuck"] >= 1)
    with caplog.at_level(logging.WARNING, logger="tickwire.timers"):
        await server.stop(timeout=1.0)
    assert cancelled == [True]
    assert (
        "1 timer bodies still running 0.1 s after the stop asked them to end; cancelled: stuck"
        in caplog.text
    )


async def test_max_timers_bounds_the_timers_with_a_typed_error(
    start_server: StartServer,
) -> None:
    server = await start_server(max_timers=3)
    timers = [server.call_later(30, print) for _ in range(2)] + [server.every(30, print)]
    with pytest.raises(TooManyTimers, match="holds 3 timers, its limit"):
        server.every(1, print)
    assert isinstance(TooManyTimers("x"), TimerError)
    timers[0].cancel()
    server.every(30, print)


def test_a_timer_needs_a_sane_period() -> None:
    app = App("periods")
    with pytest.raises(ValueError, match="interval must be a finite number > 0"):
        app.every(0)
    with pytest.raises(ValueError, match="jitter must be between 0 and the interval"):
        app.every(1, jitter=2)


async def test_app_every_runs_from_after_on_start_with_the_server(
    start_server: StartServer,
) -> None:
    app = App("declared")
    seen: list[Any] = []

    @app.on_start
    async def load(server: Server) -> None:
        await asyncio.sleep(0.05)  # longer than the interval: no run may come before
        app.state.loaded = True

    @app.every(0.01, jitter=0.005)
    def tick(server: Server) -> None:
        seen.append((server, app.state.loaded))

    server = await start_server(app)
    await wait_for(lambda: len(seen) >= 3)
    assert all(entry == (server, True) for entry in seen)
    name = f"{__name__}.test_app_every_runs_from_after_on_start_with_the_server.<locals>.tick"
    assert server.timers.runs[name] >= 3


async def test_align_puts_runs_on_wall_clock_multiples(start_server: StartServer) -> None:
    server = await start_server()
    loop = asyncio.get_running_loop()
    runs: list[float] = []
    timer = server.every(0.25, lambda: runs.append(timer.due), align=True)
    await wait_for(lambda: len(runs) >= 2)
    # Each nominal run time, on the wall clock, is a multiple of the interval.
    offset = time.time() - loop.time()
    for due in runs:
        remainder = (due + offset) % 0.25
        assert min(remainder, 0.25 - remainder) < 0.005


async def scrape(address: tuple[str, int]) -> str:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    body = await reader.read()
    writer.close()
    return body.decode()


async def test_timer_metrics_are_exported(start_server: StartServer) -> None:
    server = await start_server(metrics=True, metrics_port=0)

    async def slow() -> None:
        await asyncio.sleep(0.03)

    def failing() -> None:
        raise RuntimeError("x")

    server.every(0.01, slow, name="slow")
    server.every(0.01, failing, name="failing")
    server.call_later(30, print, name="later")
    await wait_for(lambda: server.timers.overruns["slow"] >= 1 and server.timers.runs["slow"] >= 2)
    assert server.metrics_address is not None
    text = await scrape(server.metrics_address)
    assert "tickwire_timers 3.0" in text
    for line in (
        'tickwire_timer_runs_total{timer="slow"}',
        'tickwire_timer_overruns_total{timer="slow"}',
        'tickwire_timer_errors_total{timer="failing"}',
        'tickwire_timer_runs_total{timer="later"} 0.0',
    ):
        assert line in text
    errors = next(
        line
        for line in text.splitlines()
        if line.startswith('tickwire_timer_errors_total{timer="failing"}')
    )
    assert float(errors.split()[-1]) >= 1
