"""The echo load generator: EchoRequest/EchoReply over many connections, closed or open loop.

Shape of a run, and why:

- N load-generator processes (spawn context), each one uvloop loop with its share of the
  connections. One Python process cannot out-run one Python server, so the generator
  needs more than one core's worth of itself or it becomes the thing being measured.
- Closed loop (the default): every connection keeps `depth` requests in flight; each
  reply sends one new request. Throughput follows the server; latency is measured from
  the moment a request was written.
- Open loop (`rate`): requests go out on a fixed schedule, `rate` per second over all
  processes and connections (each process takes its share by its connections, and sends
  round-robin over them), whether or not replies come back. Request k of a process is due
  at start + k / rate, and its latency is measured from that *intended* time, not from
  when it was written: a server (or generator) that stalls makes every request due in
  the stall late, and they all say so. Measuring from the actual write would hide the
  stall behind the few requests that were sent (coordinated omission). The generator
  wakes for its schedule on a timerfd (`bench.pacer`), and reports how late its sends
  were, since that lateness is part of every latency it measures.
- Requests are pre-encoded; only the 4-byte seq changes per request, so the generator
  spends its time on the socket and not on protobuf.
- Replies are matched FIFO per connection (docs/protocol.md: answers come in request
  order) and checked by header only: EchoReply's msg_id, RESPONSE flag, the expected seq,
  and the length of an EchoReply carrying the same bytes. Anything else is an error,
  counted and sampled.
- The window, --requests, the histograms and throughput over time: `bench.load`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import deque
from multiprocessing.connection import Connection

from bench.load import (
    Driven,
    LoadTotals,
    RunParams,
    drive,
    new_histogram,
    now_us,
    quota_of,
    report_progress,
    sleep_until,
    summarize_driven,
    wait_for_start,
)
from bench.pacer import Pacer
from bench.proc import Endpoint
from bench.progress import ProgressSink
from bench.results import Comparison, EchoRun, WorkerEchoResult
from bench.workers import (
    ERROR_SAMPLES,
    BenchError,
    ClientConnection,
    Share,
    open_connections,
    run_worker,
)
from protocol.frame import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, MAX_SEQ, MIN_LENGTH, Flags
from protocol.proto import system_pb2
from protocol.system import ECHO_ID, ECHO_REPLY_ID

#: A plain int, compared with every reply's flags.
_RESPONSE = int(Flags.RESPONSE)

#: Open loop: the generator wakes at most this often and sends every request due by
#: then, each still measured from its own scheduled time. At high rates a wake-up per
#: request would cost more than the requests.
_MIN_TICK_NS = 100_000


class EchoParams(RunParams, frozen=True, kw_only=True):
    depth: int = 1
    size: int = 64
    #: Open loop: requests/s over all processes and connections; None: closed loop.
    rate: float | None = None


# -- worker side -----------------------------------------------------------------------


class EchoConnection(ClientConnection):
    __slots__ = (
        "_buf",
        "_closed_loop",
        "_expect",
        "_next_seq",
        "_payload",
        "_pending",
        "_prefix",
        "_reply_length",
        "_totals",
    )

    def __init__(self, totals: LoadTotals, payload: bytes, *, closed_loop: bool = True) -> None:
        super().__init__()
        self._totals = totals
        self._payload = payload
        self._closed_loop = closed_loop
        # length | msg_id | flags never change; only the seq (the last 4 header bytes) is
        # written per request.
        self._prefix = HEADER.pack(MIN_LENGTH + len(payload), ECHO_ID, 0, 0)[:-4]
        self._reply_length = MIN_LENGTH + len(payload)
        self._next_seq = 1
        self._expect = 1
        #: Per request in flight, oldest first: the µs its latency is measured from.
        self._pending: deque[int] = deque()
        self._buf = b""

    def _write(self, count: int) -> bool:
        transport = self._transport
        if transport is None or self._closing:
            return False
        prefix = self._prefix
        payload = self._payload
        parts = []
        seq = self._next_seq
        for _ in range(count):
            parts.append(prefix)
            parts.append(seq.to_bytes(4, "big"))
            parts.append(payload)
            seq = seq + 1 if seq < MAX_SEQ else 1
        self._next_seq = seq
        self._totals.sent += count
        transport.write(b"".join(parts))
        return True

    def send(self, count: int) -> None:
        """Closed loop: `count` requests now, their latency measured from now."""
        sent_at = now_us()
        if self._write(count):
            self._pending.extend([sent_at] * count)

    def send_at(self, intended_us: list[int]) -> None:
        """Open loop: one request per scheduled time, each measured from its own."""
        if self._write(len(intended_us)):
            self._pending.extend(intended_us)

    def data_received(self, data: bytes) -> None:
        now = now_us()
        totals = self._totals
        if self._buf:
            data = self._buf + data
        unpack = HEADER.unpack_from
        pending = self._pending
        expect = self._expect
        reply_length = self._reply_length
        in_window = totals.measure_from_us <= now < totals.measure_until_us
        latencies = totals.latencies
        end_of_data = len(data)
        answered = 0
        good = 0
        pos = 0
        while end_of_data - pos >= HEADER_SIZE:
            length, msg_id, flags, seq = unpack(data, pos)
            if not MIN_LENGTH <= length <= DEFAULT_MAX_FRAME:
                totals.error(f"bad frame length {length}; closing")
                self._buf = b""
                self.close()
                return
            end = pos + 4 + length
            if end > end_of_data:
                break
            pos = end
            if not pending:
                totals.error(f"unsolicited frame msg_id={msg_id} flags={flags} seq={seq}")
                continue
            sent_at = pending.popleft()
            answered += 1
            wanted = expect
            expect = expect + 1 if expect < MAX_SEQ else 1
            if msg_id != ECHO_REPLY_ID or flags != _RESPONSE or seq != wanted:
                totals.error(
                    f"expected EchoReply seq={wanted}, got msg_id={msg_id} "
                    f"flags={flags:#x} seq={seq}"
                )
                continue
            if length != reply_length:
                totals.error(f"EchoReply seq={seq} has length {length}, expected {reply_length}")
                continue
            if in_window:
                latencies.append(now - sent_at)
                good += 1
        self._expect = expect
        self._buf = data[pos:] if pos < end_of_data else b""
        totals.answered += answered
        if good:
            totals.count(now, good)
        if answered and totals.running and self._closed_loop:
            self.send(answered)

    def lost(self, exc: Exception | None) -> None:
        if self._totals.running:
            self._totals.error(f"connection lost during the run: {exc or 'closed by server'}")


class OpenLoop:
    """Sends one process's share of an open-loop rate, round-robin over its connections.

    Request k is due at `first_ns + k * interval`; every wake-up sends all requests due by
    then (normally one) and arms the pacer for the next. The lateness of each batch (now -
    due time of its oldest request) goes into `lag`.
    """

    def __init__(
        self, conns: list[EchoConnection], totals: LoadTotals, rate: float, first_ns: int
    ) -> None:
        self._conns = conns
        self._totals = totals
        self._interval_ns = 1e9 / rate
        self._first_ns = first_ns
        self._next = 0
        self.lag = new_histogram()
        self._pacer = Pacer(asyncio.get_running_loop(), self._tick)

    def start(self) -> None:
        self._pacer.arm_at(self._first_ns)

    def stop(self) -> None:
        self._pacer.close()

    def _due(self, k: int) -> int:
        return self._first_ns + int(k * self._interval_ns)

    def _tick(self) -> None:
        if not self._totals.running:
            return
        now = time.monotonic_ns()
        if now < self._first_ns:
            self._pacer.arm_at(self._first_ns)
            return
        due = int((now - self._first_ns) / self._interval_ns) + 1
        k = self._next
        if due > k:
            self.lag.record_value(max(1, (now - self._due(k)) // 1000))
            conns = self._conns
            n = len(conns)
            batches: dict[int, list[int]] = {}
            for j in range(k, due):
                batches.setdefault(j % n, []).append(self._due(j) // 1000)
            for c, intended in batches.items():
                conns[c].send_at(intended)
            self._next = due
        self._pacer.arm_at(max(self._due(self._next), now + _MIN_TICK_NS))


async def _echo_worker(pipe: Connection, share: Share, params: EchoParams) -> WorkerEchoResult:
    totals = LoadTotals(quota_of(params, share))
    payload = system_pb2.EchoRequest(data=os.urandom(params.size)).SerializeToString()
    samples: list[str] = []

    def connect_error(what: str) -> None:
        if len(samples) < ERROR_SAMPLES:
            samples.append(what)

    closed_loop = params.rate is None
    conns: list[EchoConnection] = await open_connections(
        share, lambda: EchoConnection(totals, payload, closed_loop=closed_loop), connect_error
    )
    pipe.send(("ready", len(conns)))
    window = await wait_for_start(pipe)
    if window is None:
        for conn in conns:
            conn.close()
        raise BenchError("parent aborted the run")
    totals.open_window(window)
    sender: OpenLoop | None = None
    if params.rate is not None and conns:
        rate = params.rate * share.conns / params.conns
        # Processes interleave: process i starts i / rate later than process 0.
        first_ns = window.start_ns + int(share.index * 1e9 / params.rate)
        sender = OpenLoop(conns, totals, rate, first_ns)
    await sleep_until(window.start_ns)
    reporter = asyncio.create_task(report_progress(pipe, totals))
    totals.running = True
    if sender is not None:
        sender.start()
    else:
        for conn in conns:
            conn.send(params.depth)
    await totals.hold(window)
    if sender is not None:
        sender.stop()
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    for conn in conns:
        conn.close()
    await asyncio.sleep(0)
    return totals.result(
        connections=len(conns),
        connect_errors=share.conns - len(conns),
        connect_samples=samples,
        send_lag=sender.lag if sender is not None else None,
    )


def echo_worker(pipe: Connection, share: Share, params: EchoParams) -> None:
    """Entry point of one load-generator process."""
    run_worker(pipe, share.cpus, lambda: _echo_worker(pipe, share, params))


# -- parent side -----------------------------------------------------------------------


def run_echo(
    params: EchoParams,
    server: Endpoint,
    *,
    target: str,
    round_no: int = 1,
    client_cpus: list[int] | None = None,
    progress: ProgressSink | None = None,
) -> EchoRun:
    """One measured run against a server that is already listening."""
    label = f"echo {target}" + (f" round {round_no}" if round_no > 1 else "")
    driven: Driven = drive(
        echo_worker, params, server, client_cpus=client_cpus, progress=progress, label=label
    )
    return summarize_driven(
        driven,
        params=params,
        target=target,
        round_no=round_no,
        client_cpus=client_cpus,
        depth=params.depth if params.rate is None else 0,
        size=params.size,
        mode="closed" if params.rate is None else "open",
        rate=params.rate,
    )


def compare(runs: list[EchoRun]) -> Comparison:
    """Median of per-round ratios: each round pairs runs made close together in time, so
    drift in the machine (other load, thermal state) cancels within a pair."""
    by_round: dict[int, dict[str, EchoRun]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.target] = run
    pairs = [(r["tickwire"], r["baseline"]) for r in by_round.values() if len(r) == 2]
    if not pairs:
        raise BenchError("no round has both a tickwire and a baseline run")
    rps = [t.replies_per_s / b.replies_per_s if b.replies_per_s else 0.0 for t, b in pairs]
    p99 = [t.p99_us / b.p99_us if b.p99_us else 0.0 for t, b in pairs]
    return Comparison(
        rounds=len(pairs),
        rps_ratios=rps,
        p99_ratios=p99,
        rps_ratio_median=statistics.median(rps),
        p99_ratio_median=statistics.median(p99),
        tickwire_rps_median=statistics.median(t.replies_per_s for t, _ in pairs),
        baseline_rps_median=statistics.median(b.replies_per_s for _, b in pairs),
        tickwire_p99_median_us=statistics.median(t.p99_us for t, _ in pairs),
        baseline_p99_median_us=statistics.median(b.p99_us for _, b in pairs),
    )
