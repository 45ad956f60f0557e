"""The idle bench: what an open, quiet connection costs the server, and that it still works.

Games and trading front-ends hold many connections that say little; memory per
connection, not throughput, decides how many fit in a box. The run:

1. read the server's VmRSS before any bench connection exists;
2. open C connections from N processes (each lifts its fd soft limit to the hard one;
   one process cannot hold 15000 sockets under a 20000 limit and still be safe), at a
   bounded number of handshakes in flight so the accept backlog is not overrun;
3. let the server settle, read VmRSS again: (idle - before) / opened = KiB per connection;
4. send one Ping on every connection and wait for every Pong: a connection that is open
   but no longer served would otherwise look like a cheap one;
5. read VmRSS once more: buffers a server allocates on first use show up here.

Connect failures are counted and reported, never fatal: how many connections the
server refused is part of the answer.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection

import msgspec
from google.protobuf.message import DecodeError

from bench.proc import Endpoint, rss_kib
from bench.results import IdleReport, WorkerIdleResult
from bench.wire import code_name
from bench.workers import (
    ERROR_SAMPLES,
    BenchError,
    ClientConnection,
    LoadParams,
    Share,
    Workers,
    first_samples,
    open_connections,
    run_worker,
)
from protocol.frame import HEADER, HEADER_SIZE, MIN_LENGTH, Flags
from protocol.proto import system_pb2
from protocol.system import ERROR_ID, GOAWAY_ID, PING_ID, PONG_ID

_RESPONSE = int(Flags.RESPONSE)
_PING_SEQ = 1


def closing_reason(msg_id: int, payload: bytes) -> str | None:
    """ "AUTH_TIMEOUT: no login ..." for an Error or GoAway frame (what a server sends
    before it closes a connection), None for any other frame."""
    if msg_id == ERROR_ID:
        error = system_pb2.Error.FromString(payload)
        return f"Error {code_name(error.code)}: {error.message}"
    if msg_id == GOAWAY_ID:
        away = system_pb2.GoAway.FromString(payload)
        return f"GoAway {code_name(away.reason)}: {away.message}"
    return None


class _IdleTotals:
    __slots__ = ("all_settled", "answered", "dropped", "error_samples", "pinged", "settled")

    def __init__(self) -> None:
        self.answered = 0
        self.dropped = 0
        #: Pinged connections that got their Pong or were closed: the wait ends when
        #: every pinged connection has settled one way or the other.
        self.settled = 0
        self.pinged = 0
        self.error_samples: list[str] = []
        self.all_settled: asyncio.Future[None] | None = None

    def sample(self, what: str) -> None:
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)

    def settle(self) -> None:
        self.settled += 1
        self.check_done()

    def check_done(self) -> None:
        waiter = self.all_settled
        if waiter is not None and not waiter.done() and self.settled >= self.pinged:
            waiter.set_result(None)


class IdleConnection(ClientConnection):
    __slots__ = ("_buf", "_totals", "answered", "pinged", "told")

    def __init__(self, totals: _IdleTotals) -> None:
        super().__init__()
        self._totals = totals
        self._buf = b""
        self.pinged = False
        self.answered = False
        #: Why the server said it closes this connection (its Error or GoAway), if it did.
        self.told: str | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None

    def ping(self, frame: bytes) -> bool:
        if self._transport is None:
            return False
        self.pinged = True
        self._transport.write(frame)
        return True

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        pos = 0
        while len(data) - pos >= HEADER_SIZE:
            length, msg_id, flags, seq = HEADER.unpack_from(data, pos)
            if length < MIN_LENGTH:
                self._totals.sample(f"bad frame length {length}; closing")
                self.close()
                return
            end = pos + 4 + length
            if end > len(data):
                break
            pos = end
            if msg_id == PONG_ID and flags == _RESPONSE and seq == _PING_SEQ and self.pinged:
                if not self.answered:
                    self.answered = True
                    self._totals.answered += 1
                    self._totals.settle()
            else:
                try:
                    reason = closing_reason(msg_id, data[pos - length + MIN_LENGTH : pos])
                except DecodeError:
                    reason = None
                if reason is not None:
                    self.told = reason
                else:
                    self._totals.sample(f"unexpected frame msg_id={msg_id} flags={flags} seq={seq}")
        self._buf = data[pos:]

    def lost(self, exc: Exception | None) -> None:
        self._totals.dropped += 1
        why = self.told or str(exc or "EOF")
        self._totals.sample(f"connection closed by server: {why}")
        if self.pinged and not self.answered:
            self._totals.settle()


async def _idle_worker(pipe: Connection, share: Share, params: IdleParams) -> WorkerIdleResult:
    loop = asyncio.get_running_loop()
    totals = _IdleTotals()
    conns: list[IdleConnection] = await open_connections(
        share, lambda: IdleConnection(totals), totals.sample
    )
    connect_errors = share.conns - len(conns)
    pipe.send(("connected", len(conns), connect_errors))
    command = await loop.run_in_executor(None, pipe.recv)
    if command[0] == "ping":
        body = system_pb2.Ping(client_time_ns=time.time_ns()).SerializeToString()
        frame = HEADER.pack(MIN_LENGTH + len(body), PING_ID, 0, _PING_SEQ) + body
        totals.all_settled = loop.create_future()
        for conn in conns:
            if conn.ping(frame):
                totals.pinged += 1
        totals.check_done()
        try:
            await asyncio.wait_for(asyncio.shield(totals.all_settled), params.ping_timeout)
        except TimeoutError:
            totals.sample(
                f"{totals.pinged - totals.settled} of {totals.pinged} pings unanswered after "
                f"{params.ping_timeout:.0f} s"
            )
        pipe.send(("pinged",))
        await loop.run_in_executor(None, pipe.recv)
    for conn in conns:
        conn.close()
    await asyncio.sleep(0)
    return WorkerIdleResult(
        opened=len(conns),
        connect_errors=connect_errors,
        pinged=totals.pinged,
        answered=totals.answered,
        dropped=totals.dropped,
        error_samples=totals.error_samples,
    )


def idle_worker(pipe: Connection, share: Share, params: IdleParams) -> None:
    """Entry point of one idle-connection process."""
    run_worker(pipe, share.cpus, lambda: _idle_worker(pipe, share, params))


class IdleParams(LoadParams, frozen=True, kw_only=True):
    settle: float = 2.0
    ping_timeout: float = 30.0


def run_idle(
    params: IdleParams,
    server: Endpoint,
    *,
    target: str,
    client_cpus: list[int] | None = None,
) -> IdleReport:
    def rss() -> int | None:
        return rss_kib(server.pid) if server.pid else None

    rss_before = rss()
    rss_idle = rss_ping = None
    t0 = time.monotonic()
    workers = Workers(idle_worker, params, server, cpus=client_cpus)
    try:
        # Generous: 15000 handshakes at 100 in flight take seconds, not minutes, unless
        # the server stalls, and then the count of connect errors is the answer.
        connected = workers.recv_all("connected", timeout=300.0 + params.conns / 50)
        connect_s = time.monotonic() - t0
        if sum(c[1] for c in connected) == 0:
            workers.send_all(("close",))
        else:
            time.sleep(params.settle)
            rss_idle = rss()
            workers.send_all(("ping",))
            workers.recv_all("pinged", timeout=params.ping_timeout + 60.0)
            rss_ping = rss()
            workers.send_all(("close",))
        results = [
            msgspec.msgpack.decode(r[1], type=WorkerIdleResult)
            for r in workers.recv_all("result", timeout=60.0)
        ]
    finally:
        workers.close()
    opened = sum(r.opened for r in results)
    if opened == 0:
        samples = first_samples(results)
        raise BenchError(f"no connection to {server.host}:{server.port} could be opened: {samples}")

    def per_conn(after: int | None) -> float | None:
        if after is None or rss_before is None:
            return None
        return (after - rss_before) / opened

    return IdleReport(
        target=target,
        conns=params.conns,
        procs=len(results),
        opened=opened,
        connect_errors=sum(r.connect_errors for r in results),
        connect_s=connect_s,
        rss_before_kib=rss_before,
        rss_idle_kib=rss_idle,
        rss_after_ping_kib=rss_ping,
        kib_per_conn_idle=per_conn(rss_idle),
        kib_per_conn_after_ping=per_conn(rss_ping),
        pinged=sum(r.pinged for r in results),
        answered=sum(r.answered for r in results),
        dropped=sum(r.dropped for r in results),
        error_samples=first_samples(results),
    )
