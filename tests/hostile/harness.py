"""What every hostile-input test needs: a real `tickwire serve` process, its memory, and a
well-behaved client running beside the attack whose answers and latencies are the test.

An attack test starts the server with `hostile_server(...)`, starts a `Bystander` (one
client that pings, echoes, and optionally logs in, all through the SDK), runs its attack
with raw sockets, and asserts the bound: the server's peak RSS (`peak_rss`), the bystander
still answered (`Bystander.worst`, `Bystander.failures`), the typed close the attacker got.
Latency figures are for the closing note (`tickwire bench attack`), never timed asserts:
a bystander is "answered" when its requests complete within a generous timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from client_sdk import AsyncClient
from server.auth import hash_password
from tests.serveproc import server_log, spawn_serve

__all__ = [
    "Bystander",
    "HostileServer",
    "hostile_server",
    "peak_rss",
    "rss",
    "server_log",
    "users_file",
]


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss(pid: int) -> int:
    """The process's resident memory now, in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory since it started (VmHWM), in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def users_file(directory: Path, users: dict[str, str], *, cost: int = 1 << 10) -> Path:
    """A users file for `--set users_file=...`; `cost` is scrypt's n (cheap by default,
    so tests that log in many times stay fast; an attack on the password check passes
    the real cost)."""
    path = directory / "users.txt"
    path.write_text(
        "".join(f"{name}:{hash_password(pw, n=cost)}\n" for name, pw in users.items()),
        encoding="utf-8",
    )
    return path


@dataclass
class HostileServer:
    proc: asyncio.subprocess.Process
    address: tuple[str, int]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return rss(self.pid)

    def peak_rss(self) -> int:
        return peak_rss(self.pid)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


@contextlib.asynccontextmanager
async def hostile_server(*args: str, open_files: int | None = None) -> AsyncIterator[HostileServer]:
    """`tickwire serve ARGS` on a free port, killed at the end; `args` are serve's flags
    (`--set key=value`...)."""
    proc, address = await spawn_serve(*args, open_files=open_files)
    try:
        yield HostileServer(proc, address)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class Bystander:
    """One well-behaved client beside an attack: a request every `interval` seconds, each
    with `timeout`; records every round trip's latency and every failure."""

    address: tuple[str, int]
    interval: float = 0.05
    timeout: float = 10.0
    user: tuple[str, str] | None = None
    latencies: list[float] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    login_time: float | None = None
    #: Connect over TLS with this context (None: plaintext).
    tls: ssl.SSLContext | None = None
    _task: asyncio.Task[None] | None = None
    _client: AsyncClient | None = None

    async def start(self) -> None:
        self._client = await AsyncClient.connect(
            *self.address, timeout=self.timeout, tls=self.tls or False
        )
        if self.user is not None:
            began = time.perf_counter()
            await self._client.login(*self.user, timeout=self.timeout)
            self.login_time = time.perf_counter() - began
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._client is not None
        while True:
            began = time.perf_counter()
            try:
                await self._client.ping(timeout=self.timeout)
            except Exception as exc:  # recorded: the test asserts there are none
                self.failures.append(exc)
                return
            self.latencies.append(time.perf_counter() - began)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def p99(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def check(self, *, at_least: int = 1) -> None:
        """The bystander never failed and was answered at least `at_least` times."""
        assert not self.failures, f"the well-behaved client failed: {self.failures[0]!r}"
        assert len(self.latencies) >= at_least, (
            f"the well-behaved client was answered {len(self.latencies)} times, "
            f"wanted at least {at_least}"
        )


@contextlib.asynccontextmanager
async def bystander(address: tuple[str, int], **options: object) -> AsyncIterator[Bystander]:
    """A started Bystander, stopped at the end."""
    client = Bystander(address, **options)  # type: ignore[arg-type]
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
