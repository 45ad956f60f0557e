"""`tickwire serve` as operators run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import EchoReply, EchoRequest

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(rb"listening on ([\d.]+):(\d+)")


async def spawn_serve(
    *args: str, cwd: str | None = None
) -> tuple[asyncio.subprocess.Process, tuple[str, int]]:
    env = dict(os.environ)
    if cwd is not None:  # the project stays importable from elsewhere
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    async with asyncio.timeout(20):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError(f"server exited with {await proc.wait()} before listening")
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                break
    # Keep reading: a server logs a line per connection, and a full pipe would block it.
    reader = proc.stderr

    async def drain() -> None:
        while chunk := await reader.readline():
            lines.append(chunk)

    LOGS[proc] = (lines, asyncio.ensure_future(drain()))
    return proc, (match.group(1).decode(), int(match.group(2)))


#: Each spawned server's stderr lines so far, and the task that reads them.
LOGS: dict[asyncio.subprocess.Process, tuple[list[bytes], asyncio.Future[None]]] = {}


async def server_log(proc: asyncio.subprocess.Process) -> str:
    """Everything the server (and any successor sharing its stderr) wrote, once it is done."""
    lines, drained = LOGS.pop(proc)
    await asyncio.wait_for(drained, 10)
    return b"".join(lines).decode()


@pytest.fixture
async def serve_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, tuple[str, int]]]:
    proc, address = await spawn_serve()
    yield proc, address
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_cleanly_with_goaway(
    serve_process: tuple[asyncio.subprocess.Process, tuple[str, int]], sig: signal.Signals
) -> None:
    proc, address = serve_process
    client = await AsyncClient.connect(*address)
    assert (await client.call(EchoRequest(data=b"up"), EchoReply)).data == b"up"
    proc.send_signal(sig)
    closed = await asyncio.wait_for(client.wait_closed(), 10)
    assert closed.code == ErrorCode.SERVER_SHUTDOWN
    assert client.goaway is not None and client.goaway.reason == ErrorCode.SERVER_SHUTDOWN
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    rest = await server_log(proc)
    assert "Traceback" not in rest and "stopped" in rest


async def test_bad_config_fails_at_start_with_the_key(tmp_path: object) -> None:

    config = Path(str(tmp_path)) / "bad.toml"
    config.write_text("max_frame = 3\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"max_frame" in err and b">= 7" in err
