"""Sessions in a real `tickwire serve` process: the users file, a zero-downtime restart
that keeps sessions through the memory snapshot, and a users file that cannot be used."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from client_sdk import AsyncClient, ConnectionClosed, Unauthenticated
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import LoginReply, LoginRequest, ResumeReply, ResumeRequest
from server.auth import add_user
from tests.integration.test_restart import stop_successor, wait_pid_change
from tests.integration.test_serve_process import server_log, spawn_serve


def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "secret", n=16)  # a cheap hash: the test is not about scrypt
    return path


async def test_serve_logs_users_in_from_the_users_file(tmp_path: Path) -> None:
    proc, address = await spawn_serve("--set", f"users_file={users_file(tmp_path)}")
    try:
        async with await AsyncClient.connect(*address) as client:
            with pytest.raises(Unauthenticated):
                await client.request(LoginRequest(user="alice", password="wrong"))
            reply = await client.request(LoginRequest(user="alice", password="secret"))
            assert isinstance(reply, LoginReply) and reply.user_id == "alice"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    log = await server_log(proc)
    assert "login refused" in log and "user=alice" in log
    assert "secret" not in log  # never a password in the log


async def test_a_bad_users_file_fails_the_start_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "users.txt"
    bad.write_text("# users\nalice:plaintext-password\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--port",
        "0",
        "--set",
        f"users_file={bad}",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert f"{bad}:2: user 'alice'" in err.decode()


async def test_restart_keeps_sessions_through_the_memory_snapshot(tmp_path: Path) -> None:
    pid_file = tmp_path / "tickwire.pid"
    snapshot = tmp_path / "store.snap"
    proc, address = await spawn_serve(
        "--pid-file",
        str(pid_file),
        "--set",
        f"users_file={users_file(tmp_path)}",
        "--set",
        f"store_snapshot_path={snapshot}",
        "--set",
        "store_snapshot_interval=3600",  # only the handover's snapshot can carry the session
    )
    client = await AsyncClient.connect(*address)
    try:
        reply = await client.request(LoginRequest(user="alice", password="secret"))
        assert isinstance(reply, LoginReply)
        proc.send_signal(signal.SIGHUP)
        await wait_pid_change(pid_file, proc.pid, timeout=30)
        closed = await asyncio.wait_for(client.wait_closed(), 20)
        assert isinstance(closed, ConnectionClosed) and closed.code == ErrorCode.SERVER_SHUTDOWN
        assert await asyncio.wait_for(proc.wait(), 20) == 0

        async with await AsyncClient.connect(*address) as again:
            resumed = await again.request(ResumeRequest(token=reply.token))
            assert isinstance(resumed, ResumeReply)
            assert resumed.session_id == reply.session_id and resumed.user_id == "alice"
    finally:
        await client.close()
        await stop_successor(pid_file, proc.pid)
