"""Defects a second review reproduced; each test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import server.store.memory as memory_module
from client_sdk import AsyncClient
from server import Server, ServerConfig
from server.config import ConfigError, load_config
from server.store import MemoryStore, Store


@pytest.mark.parametrize(
    "env",
    [
        {"TICKWIRE_CLOSE_GRACE": "inf"},
        {"TICKWIRE_IDLE_TIMEOUT": "1e308"},
        {"TICKWIRE_SWEEP_INTERVAL": "inf"},
        {"TICKWIRE_DRAIN_TIMEOUT": "inf"},
    ],
)
def test_infinite_durations_are_refused(env: dict[str, str]) -> None:
    """`inf` used to pass validation and kill the sweep task at its first tick."""
    with pytest.raises(ConfigError, match="<="):
        load_config(env=env)


async def test_pushes_after_close_ends_at_once() -> None:
    server = Server(config=ServerConfig(port=0))
    await server.start()
    client = await AsyncClient.connect(*server.address)
    await client.close()
    await server.stop(timeout=1)
    got = [p async for p in client.pushes()]  # used to wait forever
    assert got == []


async def test_close_waits_for_a_snapshot_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = memory_module._write_atomic
    writing = threading.Event()

    def slow_write(path: Path, blob: bytes) -> None:
        writing.set()
        time.sleep(0.3)  # a big snapshot's write and fsync
        real(path, blob)

    monkeypatch.setattr(memory_module, "_write_atomic", slow_write)
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0.05)
    await store.set("k", b"v1")
    while not writing.is_set():
        await asyncio.sleep(0.01)
    await store.set("k", b"v2")
    await store.close()  # used to race the periodic write and raise StoreError
    reopened: Store = await MemoryStore.open(path)
    assert await reopened.get("k") == b"v2"
    await reopened.close()


async def test_ttls_beyond_what_redis_counts_are_refused_on_memory_too() -> None:
    store = await MemoryStore.open()
    with pytest.raises(ValueError, match="at most"):
        await store.set("k", b"v", ttl=1e16)
    await store.close()


async def test_an_overlong_metrics_request_line_raises_nothing_into_the_loop() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    server = Server(config=ServerConfig(port=0, metrics=True, metrics_port=0))
    await server.start()
    try:
        assert server.metrics_address is not None
        reader, writer = await asyncio.open_connection(*server.metrics_address)
        writer.write(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.sleep(0.1)
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        await server.stop(timeout=1)


def test_repl_refuses_sleep_nan() -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        line = ""
        while "listening on" not in line:
            line = serve.stderr.readline()
            assert line, "server exited"
        address = line.rsplit(" ", 1)[1].strip()
        done = subprocess.run(
            [sys.executable, "-m", "tools.cli", "client", address, "--json"],
            input="ping\nsleep nan\nping\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "finite" in done.stdout
    finally:
        serve.terminate()
        serve.wait(10)
