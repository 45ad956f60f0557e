"""Zero-downtime restart with real processes and signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from client_sdk import AsyncClient, ConnectionClosed
from client_sdk.client import Reconnect
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from tests.serveproc import server_log, spawn_serve


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def wait_pid_change(path: Path, old: int, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        new = read_pid(path)
        if new is not None and new != old:
            return new
        await asyncio.sleep(0.02)
    raise AssertionError(f"pid file still says {old} after {timeout} s")


async def stop_successor(pid_file: Path, first: int) -> None:
    """SIGTERM the process the pid file names if it is not `first` (a restart's
    successor, which no test fixture owns), and wait until it is gone."""
    successor = read_pid(pid_file)
    if successor is None or successor == first:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(successor, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(successor, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


async def test_restart_under_a_connect_loop_refuses_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "tickwire.pid"
    proc, address = await spawn_serve("--pid-file", str(pid_file))
    old_pid = read_pid(pid_file)
    assert old_pid == proc.pid
    refused: list[BaseException] = []
    replies = 0
    stop = asyncio.Event()

    async def connect_loop() -> None:
        nonlocal replies
        i = 0
        while not stop.is_set():
            i += 1
            try:
                client = await AsyncClient.connect(*address, timeout=5)
            except OSError as exc:  # refused or reset on connect: what must never happen
                refused.append(exc)
                continue
            try:
                reply = await client.call(EchoRequest(data=str(i).encode()), EchoReply)
                assert reply.data == str(i).encode()
                replies += 1
            except ConnectionClosed as exc:
                # The old process drained before reading this request: told to go away,
                # not refused. A real client reconnects (the next iteration does).
                assert exc.code == ErrorCode.SERVER_SHUTDOWN, exc
            finally:
                await client.close()

    loops = [asyncio.ensure_future(connect_loop()) for _ in range(4)]
    # A long-lived SDK client: told GoAway by the old process, it reconnects by itself.
    survivor = await AsyncClient.connect(*address, reconnect=Reconnect(initial=0.02))
    try:
        await asyncio.sleep(0.3)
        before = replies
        proc.send_signal(signal.SIGHUP)
        new_pid = await wait_pid_change(pid_file, proc.pid, timeout=30)
        assert await asyncio.wait_for(proc.wait(), 20) == 0  # the old one drained and exited
        after_switch = replies
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*loops)
        assert refused == []
        assert before > 0 and replies > after_switch  # served before, and by the successor
        os.kill(new_pid, 0)  # the successor is alive and serving
        reply = await survivor.call(EchoRequest(data=b"still here"), EchoReply, timeout=10)
        assert reply.data == b"still here" and survivor.reconnects == 1
    finally:
        stop.set()
        await survivor.close()
        successor = read_pid(pid_file)
        if successor is not None and successor != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(successor, signal.SIGKILL)


async def test_broken_successor_leaves_the_old_server_serving(tmp_path: Path) -> None:
    config = tmp_path / "tickwire.toml"
    config.write_text("idle_timeout = 60\n")
    pid_file = tmp_path / "tickwire.pid"
    proc, address = await spawn_serve("--config", str(config), "--pid-file", str(pid_file))
    config.write_text("idle_timeout = -5\n")  # the operator broke the file before SIGHUP
    restart = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "restart",
        "--pid-file",
        str(pid_file),
        "--timeout",
        "3",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(restart.communicate(), 20)
    assert restart.returncode == 1 and b"keeps serving" in err
    assert proc.returncode is None and read_pid(pid_file) == proc.pid
    async with await AsyncClient.connect(*address) as client:
        assert (await client.call(EchoRequest(data=b"alive"), EchoReply)).data == b"alive"
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    log = await server_log(proc)
    assert "idle_timeout" in log  # the successor said what was wrong
    assert "successor" in log and "failed" in log and "still serving" in log


async def test_sigterm_during_a_restart_leaves_no_server_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "tickwire.pid"
    proc, address = await spawn_serve("--pid-file", str(pid_file))
    proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.03)  # the successor is still importing
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    await asyncio.sleep(1.5)  # long enough for a successor to have come up
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection(*address)
        writer.close()
    pid = read_pid(pid_file)
    assert pid is None or pid == proc.pid
