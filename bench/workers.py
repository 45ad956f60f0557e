"""Plumbing shared by the load generators: worker processes, their pipes, connecting.

Workers are started with the spawn context: the parent runs a thread (the server's stderr
reader), and forking a process with threads can leave a lock held forever in the child;
spawn gives each worker a clean interpreter at the cost of its start-up, paid before the
measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import ssl
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import msgspec
import uvloop

from bench.proc import Endpoint, raise_nofile_limit
from bench.results import WorkerResult

_CONNECT_TIMEOUT_S = 10.0

#: Error messages a worker keeps, and a run reports: the first few say what went wrong.
ERROR_SAMPLES = 5


class BenchError(RuntimeError):
    """The bench itself could not run (a worker died, nothing connected, ...)."""


class TLSOptions(msgspec.Struct, frozen=True):
    """TLS for the load's connections: the server's certificate checked against the CAs
    in the PEM file `ca` (empty: the system's), for `server_hostname` (empty: the host
    connected to). Paths, not a context: each worker process builds its own."""

    ca: str = ""
    server_hostname: str = ""

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


class LoadParams(msgspec.Struct, frozen=True, kw_only=True):
    """What every bench asks of its load generators: `conns` connections from `procs`
    processes, with at most `connect_concurrency` handshakes in flight over them all,
    over TLS when `tls` is set."""

    conns: int
    procs: int
    connect_concurrency: int = 100
    tls: TLSOptions | None = None


class Share(msgspec.Struct, frozen=True):
    """One load-generator process's part of a run: its connections to host:port, the
    handshakes it may have in flight, the CPUs it may run on (None: any), and its place
    among the processes (`index`, from 0; it picks the process's share of a request
    count or rate)."""

    host: str
    port: int
    conns: int
    connect_concurrency: int
    cpus: list[int] | None = None
    index: int = 0
    tls: TLSOptions | None = None


def shares(params: LoadParams, server: Endpoint, cpus: list[int] | None) -> list[Share]:
    """`params.conns` spread over `params.procs` processes, and the handshake budget with
    them."""
    parts = split(params.conns, params.procs)
    per_proc_concurrency = max(1, params.connect_concurrency // len(parts))
    return [
        Share(server.host, server.port, part, per_proc_concurrency, cpus, index, params.tls)
        for index, part in enumerate(parts)
    ]


async def open_connections(
    share: Share,
    factory: Callable[[], asyncio.Protocol],
    on_error: Callable[[str], None],
) -> list[Any]:
    """Open `share.conns` connections, at most `share.connect_concurrency` handshakes at a
    time; each one that fails is passed to `on_error`, so the number of connect errors is
    `share.conns` minus the number of connections returned.

    Bounded, because a burst of thousands of SYNs overruns the server's accept backlog
    and turns into retransmits and timeouts that say nothing about the server.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(max(1, share.connect_concurrency))
    opened: list[Any] = []
    # Plaintext passes no TLS arguments at all: the connect it always made.
    tls: dict[str, Any] = {}
    if share.tls is not None:
        hostname = share.tls.server_hostname or share.host
        tls = {"ssl": share.tls.context(), "server_hostname": hostname}

    async def one() -> None:
        async with gate:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(factory, share.host, share.port, **tls),
                    _CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                on_error(f"connect: {type(exc).__name__}: {exc}")
            else:
                opened.append(protocol)

    await asyncio.gather(*(one() for _ in range(share.conns)))
    return opened


class ClientConnection(asyncio.Protocol):
    """A load generator's end of one connection.

    Knows its transport while the connection is open and whether the close was ours;
    subclasses hear of any other end of the connection through `lost`.
    """

    __slots__ = ("_closing", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closing:
            self.lost(exc)

    def lost(self, exc: Exception | None) -> None:
        """The connection ended without `close` (the server closed it, or it broke)."""


def run_worker(
    pipe: Connection,
    cpus: list[int] | None,
    main: Callable[[], Coroutine[Any, Any, msgspec.Struct]],
) -> None:
    """The body of every load-generator process.

    Pins it to `cpus` (if any), lifts its fd limit, runs `main()` on a uvloop loop and
    sends the parent ``("result", msgpack of what main returned)``, or ``("error",
    why)`` when anything failed: a BenchError's message, which says it in words, or the
    traceback of anything else. The pipe is closed either way.
    """
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        raise_nofile_limit()
        result = uvloop.run(main())
        pipe.send(("result", msgspec.msgpack.encode(result)))
    except BenchError as exc:
        _tell_parent(pipe, ("error", str(exc)))
    except BaseException:
        _tell_parent(pipe, ("error", traceback.format_exc()))
    finally:
        pipe.close()


def _tell_parent(pipe: Connection, message: tuple[str, str]) -> None:
    """Send a worker's failure, unless the parent is gone: it stops reading the pipes at
    the first failure, and every other worker would print its own as a BrokenPipeError."""
    with contextlib.suppress(OSError):
        pipe.send(message)


def first_samples(results: Iterable[WorkerResult]) -> list[str]:
    """The first `ERROR_SAMPLES` error messages of all the workers, in worker order."""
    return [s for r in results for s in r.error_samples][:ERROR_SAMPLES]


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible, no part empty."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


_Params = TypeVar("_Params", bound=LoadParams)


class Workers:
    """A set of spawned worker processes, each with a pipe to the parent.

    One process per part of `shares(params, server, cpus)`, each running
    ``target(pipe, share, params)``.
    """

    def __init__(
        self,
        target: Callable[[Connection, Share, _Params], None],
        params: _Params,
        server: Endpoint,
        *,
        cpus: list[int] | None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for share in shares(params, server, cpus):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child_end, share, params), daemon=True)
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
