"""Plumbing shared by the load generators: worker processes, their pipes, connecting.

Workers are started with the spawn context: the parent runs a thread (the server's stderr
reader), and forking a process with threads can leave a lock held forever in the child;
spawn gives each worker a clean interpreter at the cost of ~0.2 s start-up, paid before
the measured window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_CONNECT_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """The bench itself could not run (a worker died, nothing connected, ...)."""


async def open_connections(
    count: int,
    concurrency: int,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    on_error: Callable[[str], None],
) -> list[Any]:
    """Open `count` connections, at most `concurrency` handshakes at a time.

    Bounded, because a burst of thousands of SYNs overruns the server's accept backlog
    and turns into retransmits and timeouts that say nothing about the server.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(max(1, concurrency))
    opened: list[Any] = []

    async def one() -> None:
        async with gate:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(factory, host, port), _CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                on_error(f"connect: {type(exc).__name__}: {exc}")
            else:
                opened.append(protocol)

    await asyncio.gather(*(one() for _ in range(count)))
    return opened


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible, no part empty."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Workers:
    """A set of spawned worker processes, each with a pipe to the parent."""

    def __init__(self, target: Callable[..., None], configs: list[Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for cfg in configs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child_end, cfg), daemon=True)
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def recv_all(self, expect: str, timeout: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        replies = []
        for i, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"load generator {i} sent no {expect!r} within {timeout:.0f} s")
            try:
                message = pipe.recv()
            except EOFError:
                raise BenchError(f"load generator {i} exited without a {expect!r}") from None
            if message[0] == "error":
                raise BenchError(f"load generator {i} failed:\n{message[1]}")
            if message[0] != expect:
                raise BenchError(f"load generator {i} sent {message[0]!r}, expected {expect!r}")
            replies.append(message)
        return replies

    def send_all(self, message: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        for proc in self.procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
