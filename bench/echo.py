"""The echo load generator: closed-loop EchoRequest/EchoReply over many connections.

Shape of a run, and why:

- N load-generator processes (spawn context), each one uvloop loop with its share of the
  connections. One Python process cannot out-run one Python server, so the generator
  needs more than one core's worth of itself or it becomes the thing being measured.
- Every connection keeps `depth` requests in flight: each reply sends one new request
  (closed loop). Requests are pre-encoded; only the 4-byte seq changes per request, so
  the generator spends its time on the socket and not on protobuf.
- Replies are matched FIFO per connection (PROTOCOL.md: answers come in request order)
  and checked by header only: msg_id 11, RESPONSE flag, the expected seq, and the length
  of an EchoReply carrying the same bytes. Anything else is an error, counted and sampled.
- All processes share one clock (CLOCK_MONOTONIC is system-wide on Linux), so the parent
  hands every worker the same absolute start, end-of-warm-up and end times. A reply
  counts when it is received inside the measured window; warm-up replies are only
  checked. Latency = receive time - send time, in µs, into an HdrHistogram whose encoded
  form goes back to the parent to be merged: percentiles cannot be averaged.
- Latencies are buffered and folded into the histogram in batches with a Counter,
  because hdrh's `record_value` is pure Python (~0.6 µs) and would otherwise cost the
  generator a sizeable share of its throughput.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import struct
import time
from collections import Counter, deque
from multiprocessing.connection import Connection

import msgspec
from hdrh.histogram import HdrHistogram

from bench.proc import CpuSampler, Endpoint, MachineSampler, available_cpus
from bench.results import Comparison, EchoRun, WorkerEchoResult
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
from protocol.proto import system_pb2

_HEADER = struct.Struct(">IHBI")
_HEADER_SIZE = 11
_MIN_LENGTH = 7
_MAX_FRAME = 1 << 20
_ECHO_REQUEST = 10
_ECHO_REPLY = 11
_RESPONSE = 0x01
_MAX_SEQ = 0xFFFFFFFF

#: Histogram range and precision: 1 µs .. 60 s at 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3

_FLUSH_EVERY = 65_536
_WORKER_REPLY_TIMEOUT_S = 60.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


# -- worker side -----------------------------------------------------------------------


class _Totals:
    """Counters shared by every connection of one worker; plain attributes for speed."""

    __slots__ = (
        "error_samples",
        "errors",
        "histogram",
        "latencies",
        "measure_from_us",
        "measure_until_us",
        "replies",
        "running",
        "sent",
    )

    def __init__(self) -> None:
        self.replies = 0
        self.errors = 0
        self.sent = 0
        self.running = False
        self.measure_from_us = 0
        self.measure_until_us = 0
        self.latencies: list[int] = []
        self.histogram = new_histogram()
        self.error_samples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)

    def flush(self) -> None:
        record = self.histogram.record_value
        for value, count in Counter(self.latencies).items():
            record(value if value < HIGHEST_US else HIGHEST_US, count)
        self.latencies.clear()


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class EchoConnection(ClientConnection):
    __slots__ = (
        "_buf",
        "_expect",
        "_next_seq",
        "_payload",
        "_pending",
        "_prefix",
        "_reply_length",
        "_totals",
    )

    def __init__(self, totals: _Totals, payload: bytes) -> None:
        super().__init__()
        self._totals = totals
        self._payload = payload
        # length | msg_id | flags never change; only the seq is written per request.
        self._prefix = struct.pack(">IHB", _MIN_LENGTH + len(payload), _ECHO_REQUEST, 0)
        self._reply_length = _MIN_LENGTH + len(payload)
        self._next_seq = 1
        self._expect = 1
        self._pending: deque[int] = deque()
        self._buf = b""

    def send(self, count: int) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        prefix = self._prefix
        payload = self._payload
        parts = []
        seq = self._next_seq
        for _ in range(count):
            parts.append(prefix)
            parts.append(seq.to_bytes(4, "big"))
            parts.append(payload)
            seq = seq + 1 if seq < _MAX_SEQ else 1
        self._next_seq = seq
        sent_at = _now_us()
        self._pending.extend([sent_at] * count)
        self._totals.sent += count
        transport.write(b"".join(parts))

    def data_received(self, data: bytes) -> None:
        now = _now_us()
        totals = self._totals
        if self._buf:
            data = self._buf + data
        unpack = _HEADER.unpack_from
        pending = self._pending
        expect = self._expect
        reply_length = self._reply_length
        in_window = totals.measure_from_us <= now < totals.measure_until_us
        latencies = totals.latencies
        end_of_data = len(data)
        answered = 0
        good = 0
        pos = 0
        while end_of_data - pos >= _HEADER_SIZE:
            length, msg_id, flags, seq = unpack(data, pos)
            if not _MIN_LENGTH <= length <= _MAX_FRAME:
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
            expect = expect + 1 if expect < _MAX_SEQ else 1
            if msg_id != _ECHO_REPLY or flags != _RESPONSE or seq != wanted:
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
        if good:
            totals.replies += good
            if len(latencies) >= _FLUSH_EVERY:
                totals.flush()
        if answered and totals.running:
            self.send(answered)

    def lost(self, exc: Exception | None) -> None:
        if self._totals.running:
            self._totals.error(f"connection lost during the run: {exc or 'closed by server'}")


async def _echo_worker(pipe: Connection, share: Share, params: EchoParams) -> WorkerEchoResult:
    loop = asyncio.get_running_loop()
    totals = _Totals()
    payload = system_pb2.EchoRequest(data=os.urandom(params.size)).SerializeToString()
    samples: list[str] = []

    def connect_error(what: str) -> None:
        if len(samples) < ERROR_SAMPLES:
            samples.append(what)

    conns: list[EchoConnection] = await open_connections(
        share, lambda: EchoConnection(totals, payload), connect_error
    )
    pipe.send(("ready", len(conns)))
    command = await loop.run_in_executor(None, pipe.recv)
    if command[0] != "start":
        for conn in conns:
            conn.close()
        raise BenchError(f"parent sent {command[0]!r} instead of start")
    start_ns, measure_from_ns, measure_until_ns = command[1:]
    totals.measure_from_us = measure_from_ns // 1000
    totals.measure_until_us = measure_until_ns // 1000
    await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    totals.running = True
    for conn in conns:
        conn.send(params.depth)
    await asyncio.sleep(max(0.0, (measure_until_ns - time.monotonic_ns()) / 1e9))
    totals.running = False
    for conn in conns:
        conn.close()
    totals.flush()
    await asyncio.sleep(0)
    return WorkerEchoResult(
        connections=len(conns),
        connect_errors=share.conns - len(conns),
        sent=totals.sent,
        replies=totals.replies,
        errors=totals.errors,
        histogram=totals.histogram.encode(),
        error_samples=samples + totals.error_samples,
    )


def echo_worker(pipe: Connection, share: Share, params: EchoParams) -> None:
    """Entry point of one load-generator process."""
    run_worker(pipe, share.cpus, lambda: _echo_worker(pipe, share, params))


# -- parent side -----------------------------------------------------------------------


def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


class EchoParams(LoadParams, frozen=True, kw_only=True):
    depth: int
    duration: float
    warmup: float
    size: int


def run_echo(
    params: EchoParams,
    server: Endpoint,
    *,
    target: str,
    round_no: int = 1,
    client_cpus: list[int] | None = None,
) -> EchoRun:
    """One measured run against a server that is already listening."""
    workers = Workers(echo_worker, params, server, cpus=client_cpus)
    try:
        ready = workers.recv_all("ready", timeout=60.0)
        if sum(r[1] for r in ready) == 0:
            workers.send_all(("abort",))
            raise BenchError(f"no connection to {server.host}:{server.port} could be opened")
        # A little slack so every worker has its start command before the start time.
        start_ns = time.monotonic_ns() + 100_000_000
        measure_from_ns = start_ns + int(params.warmup * 1e9)
        measure_until_ns = measure_from_ns + int(params.duration * 1e9)
        workers.send_all(("start", start_ns, measure_from_ns, measure_until_ns))
        server_cpu = CpuSampler([server.pid], tree=True) if server.pid else None
        client_cpu = CpuSampler(workers.pids, tree=False)
        machine_cpu = MachineSampler()
        _sleep_until(measure_from_ns)
        machine_cpu.start()
        if server_cpu:
            server_cpu.start()
        client_cpu.start()
        _sleep_until(measure_until_ns)
        server_pct = server_cpu.stop() if server_cpu else None
        client_pct = client_cpu.stop()
        machine_pct = machine_cpu.stop()
        results = [
            msgspec.msgpack.decode(r[1], type=WorkerEchoResult)
            for r in workers.recv_all("result", timeout=_WORKER_REPLY_TIMEOUT_S)
        ]
    finally:
        workers.close()
    return summarize(
        results,
        params=params,
        target=target,
        round_no=round_no,
        cpu_pin=client_cpus is not None,
        server_cpu_pct=server_pct,
        client_cpu_pct=client_pct or 0.0,
        other_cpu_pct=(
            max(0.0, machine_pct - server_pct - (client_pct or 0.0))
            if machine_pct is not None and server_pct is not None
            else None
        ),
    )


def summarize(
    results: list[WorkerEchoResult],
    *,
    params: EchoParams,
    target: str,
    round_no: int,
    cpu_pin: bool,
    server_cpu_pct: float | None,
    client_cpu_pct: float,
    other_cpu_pct: float | None = None,
) -> EchoRun:
    histogram = new_histogram()
    for result in results:
        histogram.decode_and_add(result.histogram)
    replies = sum(r.replies for r in results)
    samples = first_samples(results)
    count = histogram.get_total_count()

    def pct(p: float) -> int:
        return int(histogram.get_value_at_percentile(p)) if count else 0

    return EchoRun(
        target=target,
        round=round_no,
        conns=params.conns,
        depth=params.depth,
        procs=len(results),
        size=params.size,
        warmup_s=params.warmup,
        duration_s=params.duration,
        cpu_pin=cpu_pin,
        connections=sum(r.connections for r in results),
        connect_errors=sum(r.connect_errors for r in results),
        replies=replies,
        replies_per_s=replies / params.duration,
        errors=sum(r.errors for r in results),
        p50_us=pct(50),
        p90_us=pct(90),
        p99_us=pct(99),
        p999_us=pct(99.9),
        max_us=int(histogram.get_max_value()) if count else 0,
        mean_us=float(histogram.get_mean_value()) if count else 0.0,
        server_cpu_pct=server_cpu_pct,
        client_cpu_pct=client_cpu_pct,
        other_cpu_pct=other_cpu_pct,
        machine_cpus=len(available_cpus()),
        error_samples=samples,
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
