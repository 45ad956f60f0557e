"""`tickwire serve --processes N`: workers on one port, each a node; a crashed worker
restarted; SIGHUP and `tickwire restart` replace them one at a time; SIGTERM drains all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from client_sdk import AsyncClient
from server.cluster import NodeInfo, read_nodes
from tests.serveproc import ROOT, server_log, spawn_serve


async def wait_nodes(
    url: str, count: int, exclude: frozenset[int] | set[int] = frozenset()
) -> list[NodeInfo]:
    deadline = time.monotonic() + 20
    while True:
        nodes = [n for n in await read_nodes(url) if not n.draining]
        if len(nodes) == count and not {n.pid for n in nodes} & exclude:
            return nodes
        assert time.monotonic() < deadline, f"nodes now: {nodes}"
        await asyncio.sleep(0.05)


async def echo_once(address: tuple[str, int]) -> None:
    client = await AsyncClient.connect(*address)
    try:
        await client.ping()
    finally:
        await client.close()


async def test_workers_serve_one_port_and_a_crashed_one_comes_back(redis_url: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        pid_file = str(Path(folder) / "tw.pid")
        proc, address = await spawn_serve(
            "--no-chat", "--cluster", redis_url, "--processes", "2", "--pid-file", pid_file
        )
        try:
            nodes = await wait_nodes(redis_url, 2)
            assert {n.port for n in nodes} == {address[1]}
            assert proc.pid not in {n.pid for n in nodes}  # the parent serves no one
            assert int(Path(pid_file).read_text()) == proc.pid
            for _ in range(10):
                await echo_once(address)
            victim = nodes[0].pid
            os.kill(victim, signal.SIGKILL)
            again = await wait_nodes(redis_url, 2, exclude={victim})
            assert victim not in {n.pid for n in again}
            await echo_once(address)
            # A rolling restart through `tickwire restart`: every worker replaced.
            before = {n.pid for n in again}
            restart = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.cli",
                "restart",
                "--pid-file",
                pid_file,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(restart.communicate(), 60)
            assert restart.returncode == 0, out
            after = await wait_nodes(redis_url, 2, exclude=before)
            assert {n.port for n in after} == {address[1]}
            await echo_once(address)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert await read_nodes(redis_url) == []
            assert not Path(pid_file).exists()
            log = await server_log(proc)
            assert "supervising 2 workers" in log
            assert f"exited with code -{int(signal.SIGKILL)}; restarting it" in log
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_processes_without_a_cluster_is_refused() -> None:
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--port",
        "0",
        "--processes",
        "2",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(run.communicate(), 20)
    assert run.returncode == 2
    assert b"processes = 2 needs cluster_url" in err
