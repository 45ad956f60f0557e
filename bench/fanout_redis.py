"""The Redis of `tickwire bench fanout --nodes N`: a private one, and what it counts.

The bench reads Redis's own counters (INFO) rather than the nodes': they count every
command of every node and what Redis itself spent, so "one PUBLISH per broadcast" is
checked where it costs, not where the code says it happens.

A private `redis-server` (no --cluster URL) runs without persistence in a temporary
directory on a free port, so a run neither touches a Redis someone else uses nor
inherits its counters or keys.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import msgspec
import redis

from bench.workers import BenchError

_START_TIMEOUT_S = 10.0


class RedisCounters(msgspec.Struct, frozen=True):
    """Cumulative counters of one Redis at one moment."""

    #: total_commands_processed, the calls of cmdstat_publish, total_net_output_bytes,
    #: used_cpu_user + used_cpu_sys (seconds).
    commands: int
    publishes: int
    out_bytes: int
    cpu_s: float
    #: The bytes of the INFO reply this reading was (counted in a later reading's
    #: `out_bytes`), so that the bench takes its own readings out of what it reports.
    reply_bytes: int


def counters_client(url: str) -> redis.Redis:
    """A client for :func:`read_counters`: INFO answers the package's parse of the
    reply with the reply's length, so a reading knows how many bytes Redis sent for it."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    parse = client.response_callbacks["INFO"]

    def sized(response: bytes, **options: Any) -> tuple[int, dict[str, Any]]:
        return len(response), parse(response, **options)

    client.set_response_callback("INFO", sized)
    return client


def read_counters(client: redis.Redis) -> RedisCounters:
    """One INFO (stats, commandstats, cpu) on a :func:`counters_client`. Redis counts
    that INFO among the commands after it answered: a later reading includes it."""
    answer = client.info("stats", "commandstats", "cpu")
    assert isinstance(answer, tuple)
    size, info = answer
    publish = info.get("cmdstat_publish")
    return RedisCounters(
        commands=int(info["total_commands_processed"]),
        publishes=int(publish["calls"]) if isinstance(publish, dict) else 0,
        out_bytes=int(info["total_net_output_bytes"]),
        cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        # A RESP2 bulk string: $<length>\r\n<text>\r\n
        reply_bytes=size + len(str(size)) + 5,
    )


def subscribers(client: redis.Redis, channel: str) -> int:
    """How many connections subscribe `channel` (PUBSUB NUMSUB): one per node with a
    member, once that node's SUBSCRIBE is done."""
    [(_, count)] = client.pubsub_numsub(channel)
    return int(count)


def database(url: str) -> int:
    """The database number of a redis:// URL, which prefixes the cluster's channels."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server on PATH; BenchError naming the way out when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError(
            "more than one node needs a Redis: redis-server is not on PATH (install it, "
            "or give --cluster redis://HOST:PORT/DB)"
        )
    return binary


class PrivateRedis:
    """A `redis-server` from PATH for one run: `--save '' --appendonly no`, stopped (and
    its directory removed) on exit."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> PrivateRedis:
        self._dir = tempfile.TemporaryDirectory(prefix="tickwire-bench-redis-")
        self.port = _free_port()
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--logfile",
                "redis.log",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            while True:
                if self._proc.poll() is not None:
                    self.stop()
                    raise BenchError(f"redis-server exited at start (port {self.port})")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"redis-server did not answer PING on port {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
