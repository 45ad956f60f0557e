"""A throwaway `redis-server` on a free port, for the store tests and the store bench.

Tests never touch a Redis they did not start: the machine's own one may hold someone's
data, and a fixed port would collide with a parallel run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str] = field(repr=False)
    binary: str = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def halt(self) -> None:
        """Kill the server (SIGKILL), keeping its port and folder for :meth:`restart`:
        an outage, as clients see one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """Stop the server (SIGSTOP) with its data: connections hang, as with a Redis
        that stops answering, until :meth:`unpause`."""
        self.proc.send_signal(signal.SIGSTOP)

    def unpause(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, *, timeout: float = 10.0) -> None:
        """Start a fresh server on the same port (empty: no persistence) and wait until
        it answers PING."""
        self.halt()
        self.proc = _spawn(self.binary, self.port, self.workdir.name)
        if not _answers(self, timeout):
            raise RuntimeError(f"redis-server did not come back on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.workdir.cleanup()


def _spawn(binary: str, port: int, folder: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            folder,
            "--logfile",
            os.path.join(folder, "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _answers(server: RedisProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            with server.client() as client:
                if client.ping():
                    return True
        except redis.RedisError:
            time.sleep(0.02)
    return False


def start_redis(binary: str, *, timeout: float = 10.0) -> RedisProcess:
    """Start redis-server without persistence on a free port and wait until it answers
    PING. A port taken between choosing and binding is retried with another."""
    last_output = ""
    for _ in range(3):
        port = _free_port()
        workdir = tempfile.TemporaryDirectory(prefix="tickwire-redis-")
        server = RedisProcess(port, _spawn(binary, port, workdir.name), workdir, binary)
        if _answers(server, timeout):
            return server
        logfile = os.path.join(workdir.name, "redis.log")
        if os.path.exists(logfile):
            with open(logfile, errors="replace") as f:
                last_output = f.read()
        server.stop()
    raise RuntimeError(f"redis-server did not start and answer PING: {last_output[-2000:]}")
