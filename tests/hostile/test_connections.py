"""Connection floods against a real `tickwire serve`, each beside a well-behaved client:
short connections by the thousand (bounded log lines), and connections past a low
open-file limit (TOO_MANY_CONNECTIONS, one log line for running out of descriptors)
(docs/internet.md, "Connections")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import time

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.frame import FrameDecoder
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from protocol.system import ERROR_ID
from server.server import FD_RESERVE
from tests.hostile.harness import Bystander, bystander, hostile_server, server_log

FLOOD_SUMMARY = re.compile(r"connection flood: (\d+) opened and (\d+) closed")


async def test_a_flood_of_short_connections_writes_a_bounded_number_of_log_lines() -> None:
    """9,800 short connections used to write 19,600 log lines in 5 s."""
    flood = 1500
    async with hostile_server("--set", "log_flood=20") as srv, bystander(srv.address) as client:
        began = time.monotonic()
        for start in range(0, flood, 100):
            batch = [asyncio.open_connection(*srv.address) for _ in range(start, start + 100)]
            for _, writer in await asyncio.gather(*batch):
                writer.close()
        elapsed = time.monotonic() - began
        await asyncio.sleep(2.5)  # the sweep writes the last window's summary
    client.check(at_least=5)
    log = await server_log(srv.proc)
    opens = log.count("connection open")
    closes = log.count("connection closed")
    summaries = [tuple(map(int, m)) for m in FLOOD_SUMMARY.findall(log)]
    assert summaries, "no flood summary line"
    # Every connection is accounted for, one line each or in a summary.
    assert opens + sum(o for o, _ in summaries) == flood + 1  # and the bystander
    assert closes + sum(c for _, c in summaries) >= flood
    # At most log_flood lines a second, plus the summaries (one a second).
    windows = int(elapsed + 2.5) + 2
    assert opens + closes <= 20 * windows
    assert len(summaries) <= windows


async def test_past_a_low_open_file_limit_peers_get_too_many_connections() -> None:
    """With 200 open files the cap is 200 - FD_RESERVE: a burst of 600 connections past
    it, all waiting in the backlog at once, is answered TOO_MANY_CONNECTIONS one by one,
    never a bare reset, and the server goes on answering afterwards."""
    open_files = 200
    cap = open_files - FD_RESERVE
    async with (
        hostile_server("--set", "log_flood=0", open_files=open_files) as srv,
        bystander(srv.address) as client,
    ):
        held = [await asyncio.open_connection(*srv.address) for _ in range(cap - 1)]
        # Stopped, the server accepts nothing while the kernel completes 600 handshakes
        # into the backlog; continued, it meets them all in one accept loop.
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            burst = await asyncio.gather(
                *(asyncio.open_connection(*srv.address) for _ in range(600))
            )
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        for reader, writer in burst:
            [frame] = FrameDecoder().feed(await asyncio.wait_for(reader.read(), 10))
            assert frame.msg_id == ERROR_ID
            assert Error.FromString(frame.payload).code == ErrorCode.TOO_MANY_CONNECTIONS
            writer.close()
        for _, writer in held:
            writer.close()
        await _answered(client)
        assert srv.alive
    client.check(at_least=5)
    log = await server_log(srv.proc)
    assert f"connection cap {cap}" in log
    assert "out of open files" not in log and "Traceback" not in log


async def test_running_out_of_descriptors_is_logged_once_per_burst() -> None:
    """Descriptors held by something else than connections (here: the soft open-file limit
    lowered under a running server) let accept fail with EMFILE, which uvloop answers
    with a bare reset and no word: the server says it once, then stays quiet."""
    async with (
        hostile_server(
            "--set", "log_flood=0", "--set", "sweep_interval=0.2", open_files=300
        ) as srv,
        bystander(srv.address) as client,
    ):
        in_use = len(os.listdir(f"/proc/{srv.pid}/fd"))
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (in_use + 20, 300))
        held = []
        reset = 0
        for _ in range(60):
            reader, writer = await asyncio.open_connection(*srv.address)
            held.append(writer)
            with contextlib.suppress(TimeoutError):
                try:
                    data = await asyncio.wait_for(reader.read(), 0.05)
                except ConnectionError:
                    data = b""
                if not data:  # closed without a word: accept failed
                    reset += 1
        assert reset >= 30
        await asyncio.sleep(1)  # several sweeps while the shortage lasts
        for writer in held:
            writer.close()
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (300, 300))
        await _answered(client)
        async with await AsyncClient.connect(*srv.address) as late:
            assert (await late.call(EchoRequest(data=b"ok"), EchoReply)).data == b"ok"
    client.check(at_least=5)
    log = await server_log(srv.proc)
    assert log.count("out of open files (EMFILE") == 1


async def _answered(client: Bystander, times: int = 5) -> None:
    """Wait until the bystander has been answered `times` more times."""
    want = len(client.latencies) + times
    async with asyncio.timeout(10):
        while len(client.latencies) < want and not client.failures:
            await asyncio.sleep(0.05)
