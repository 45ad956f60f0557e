"""`tickwire serve` as operators run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.frame import FrameDecoder
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from protocol.system import ERROR_ID
from server.server import FD_RESERVE, connection_cap
from tests.serveproc import server_log, spawn_serve


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


async def test_the_connection_cap_fits_the_open_file_limit() -> None:
    """With 300 open files, a max_connections of 100,000 cannot be reached: the server
    caps itself at 300 - FD_RESERVE, says so at start, and answers the connection past
    the cap with TOO_MANY_CONNECTIONS instead of a reset from the kernel."""
    proc, (host, port) = await spawn_serve(
        "--no-chat", "--set", "max_connections=100000", open_files=300
    )
    cap = 300 - FD_RESERVE
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(cap - 1):
            _, writer = await asyncio.open_connection(host, port)
            held.append(writer)
        last = await AsyncClient.connect(host, port)  # the cap-th connection still works
        assert (await last.call(EchoRequest(data=b"ok"), EchoReply, timeout=5)).data == b"ok"
        reader, writer = await asyncio.open_connection(host, port)
        held.append(writer)
        data = await asyncio.wait_for(reader.read(), 5)  # an Error frame, then EOF
        [frame] = FrameDecoder().feed(data)
        error = Error.FromString(frame.payload)
        assert frame.msg_id == ERROR_ID and error.code == ErrorCode.TOO_MANY_CONNECTIONS
        assert f"limit of {cap} connections" in error.message
        await last.close()
    finally:
        for writer in held:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    log = await server_log(proc)
    assert "max_connections is 100000, but the open-file limit (300" in log
    assert f"fits {cap}: connections past {cap} get TOO_MANY_CONNECTIONS" in log


def test_the_connection_cap_is_the_config_where_the_open_file_limit_allows_it() -> None:
    assert connection_cap(1_000, 20_000) == 1_000
    assert connection_cap(100_000, 20_000) == 20_000 - FD_RESERVE
    assert connection_cap(100_000, resource.RLIM_INFINITY) == 100_000
    assert connection_cap(100_000, FD_RESERVE) == 1  # never 0: one connection still fits
