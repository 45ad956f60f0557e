"""What every request/reply load (echo, scenarios) shares, on both sides of the pipe.

Worker side: `LoadTotals`, the counters of one load-generator process (latencies into an
HdrHistogram, replies per second of the measured window, its share of --requests), and
`report_progress`, which sends the parent running counts every 250 ms.

Parent side: `drive`, which starts the workers at one absolute time, reads their progress
and results from the pipes while the run goes, samples CPU over the measured window and
feeds the live display; and `summarize`, which merges what the workers measured into one
`EchoRun`.

The window. All processes share one clock (CLOCK_MONOTONIC is system-wide on Linux), and
the parent hands every worker the same absolute start, end-of-warm-up and end times. A
reply counts when it is received inside the measured window. With --requests N the window
has no fixed end: each process counts its share of N (by its share of the connections)
and closes its own window when it has it, or when --time-limit runs out; the run's
window ends when the last process closed its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

import msgspec
from hdrh.histogram import HdrHistogram

from bench.proc import CpuSampler, Endpoint, MachineSampler, available_cpus
from bench.progress import ProgressSink, Snapshot
from bench.results import EchoRun, WorkerEchoResult
from bench.workers import (
    ERROR_SAMPLES,
    BenchError,
    LoadParams,
    Share,
    Workers,
    first_samples,
    split,
)

#: Histogram range and precision: 1 µs .. 60 s at 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3

#: How often a worker tells the parent its running counts. Often enough for a live
#: display, rare enough to cost the hot loop nothing (one small pipe write).
PROGRESS_EVERY_S = 0.25

#: Width of one throughput-over-time interval.
INTERVAL_US = 1_000_000

_FLUSH_EVERY = 65_536
_START_SLACK_NS = 100_000_000
_WORKER_REPLY_TIMEOUT_S = 60.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class RunParams(LoadParams, frozen=True, kw_only=True):
    """A measured run: `warmup` seconds of load, then `duration` measured seconds, or,
    with `requests`, until that many replies were counted (at most `time_limit` s)."""

    duration: float
    warmup: float
    requests: int | None = None
    time_limit: float = 60.0

    @property
    def window_s(self) -> float:
        """The longest the measured window can last."""
        return self.time_limit if self.requests is not None else self.duration


def apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders), summing to `total`."""
    whole = sum(weights)
    if whole <= 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    parts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def quota_of(params: RunParams, share: Share) -> int | None:
    """This process's share of --requests: in proportion to its connections."""
    if params.requests is None:
        return None
    return apportion(params.requests, split(params.conns, params.procs))[share.index]


class Window(NamedTuple):
    """Absolute CLOCK_MONOTONIC times of one run, as the parent sends them."""

    start_ns: int
    measure_from_ns: int
    #: The end of the window; with --requests, the end of --time-limit.
    measure_until_ns: int


# -- worker side -----------------------------------------------------------------------


def now_us() -> int:
    return time.monotonic_ns() // 1000


class LoadTotals:
    """Counters shared by every connection of one worker; plain attributes for speed.

    Latencies are buffered and folded into the histogram in batches with a Counter,
    because hdrh's `record_value` is pure Python and, called once per reply, would cost
    the generator a sizeable share of its throughput (docs/bench.md has its cost).
    """

    __slots__ = (
        "answered",
        "bins",
        "done",
        "error_samples",
        "errors",
        "finished_ns",
        "histogram",
        "latencies",
        "measure_from_us",
        "measure_until_us",
        "quota",
        "replies",
        "running",
        "sent",
    )

    def __init__(self, quota: int | None = None) -> None:
        #: Replies (or iterations) checked, warm-up included: what the live rate shows.
        self.answered = 0
        #: Replies counted: correct and inside the measured window.
        self.replies = 0
        self.errors = 0
        self.sent = 0
        self.running = False
        self.measure_from_us = 0
        self.measure_until_us = 0
        self.quota = quota
        self.finished_ns = 0
        self.done: asyncio.Event | None = None
        self.latencies: list[int] = []
        self.bins: list[int] = []
        self.histogram = new_histogram()
        self.error_samples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)

    def open_window(self, window: Window) -> None:
        self.measure_from_us = window.measure_from_ns // 1000
        self.measure_until_us = window.measure_until_ns // 1000
        self.finished_ns = window.measure_until_ns
        self.done = asyncio.Event()
        if self.quota == 0:
            # Nothing to count here (more processes than requests): close at once.
            self.measure_until_us = self.measure_from_us
            self.finished_ns = window.measure_from_ns
            self.done.set()

    def count(self, now: int, good: int) -> None:
        """`good` replies received at `now` (µs) inside the window, their latencies
        already appended to `latencies`."""
        replies = self.replies + good
        quota = self.quota
        if quota is not None and replies >= quota:
            excess = replies - quota
            if excess:
                del self.latencies[-excess:]
                good -= excess
            replies = quota
            self.close_window(now)
        self.replies = replies
        index = (now - self.measure_from_us) // INTERVAL_US
        bins = self.bins
        if index >= len(bins):
            bins.extend([0] * (index + 1 - len(bins)))
        bins[index] += good
        if len(self.latencies) >= _FLUSH_EVERY:
            self.flush()

    def record(self, started: int, now: int) -> None:
        """One scenario iteration that started at `started` and ended at `now` (µs)."""
        self.answered += 1
        if self.measure_from_us <= now < self.measure_until_us:
            self.latencies.append(now - started)
            self.count(now, 1)

    def close_window(self, now: int) -> None:
        """Stop counting (this process's share of --requests is in): later replies fall
        outside the window, and the worker stops."""
        self.measure_until_us = now
        self.finished_ns = now * 1000
        self.running = False
        if self.done is not None:
            self.done.set()

    async def hold(self, window: Window) -> None:
        """Until the window closes: its end, or the quota reached."""
        assert self.done is not None
        remaining = (window.measure_until_ns - time.monotonic_ns()) / 1e9
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), remaining)
        self.running = False

    def flush(self) -> None:
        record = self.histogram.record_value
        for value, count in Counter(self.latencies).items():
            record(value if value < HIGHEST_US else HIGHEST_US, count)
        self.latencies.clear()

    def result(
        self,
        *,
        connections: int,
        connect_errors: int,
        connect_samples: list[str],
        send_lag: HdrHistogram | None = None,
    ) -> WorkerEchoResult:
        self.flush()
        return WorkerEchoResult(
            connections=connections,
            connect_errors=connect_errors,
            sent=self.sent,
            replies=self.replies,
            errors=self.errors,
            histogram=self.histogram.encode(),
            throughput=self.bins,
            finished_ns=self.finished_ns,
            send_lag_histogram=send_lag.encode() if send_lag is not None else b"",
            error_samples=(connect_samples + self.error_samples)[:ERROR_SAMPLES],
        )


async def wait_for_start(pipe: Connection) -> Window | None:
    """The parent's start command (None: it aborted the run)."""
    command = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    if command[0] != "start":
        return None
    return Window(*command[1:])


async def sleep_until(when_ns: int) -> None:
    await asyncio.sleep(max(0.0, (when_ns - time.monotonic_ns()) / 1e9))


async def report_progress(pipe: Connection, totals: LoadTotals) -> None:
    """Send ``("progress", answered, replies, errors, sent)`` every PROGRESS_EVERY_S until
    cancelled: one small write per 250 ms, off the per-reply path."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        pipe.send(("progress", totals.answered, totals.replies, totals.errors, totals.sent))


async def run_loops(
    pipe: Connection,
    totals: LoadTotals,
    window: Window,
    loops: list[Coroutine[Any, Any, None]],
    drain_s: float,
) -> set[int]:
    """The measured part of a closed-loop worker: from the window's start, run one loop
    per connection with progress reports until the window ends, give the loops `drain_s`
    to finish their last request, and cancel the rest. Returns the indexes of the loops
    that had to be cancelled (their streams may have a reply on its way)."""
    await sleep_until(window.start_ns)
    reporter = asyncio.create_task(report_progress(pipe, totals))
    totals.running = True
    tasks = [asyncio.create_task(loop) for loop in loops]
    await totals.hold(window)
    _, still = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in still:
        task.cancel()
    reporter.cancel()
    await asyncio.gather(*still, reporter, return_exceptions=True)
    return {i for i, task in enumerate(tasks) if task in still}


# -- parent side -----------------------------------------------------------------------


class Driven(NamedTuple):
    """What `drive` gathered: the workers' results and the CPU readings of the window."""

    results: list[WorkerEchoResult]
    window: Window
    server_cpu_pct: float | None
    client_cpu_pct: float
    other_cpu_pct: float | None
    #: CPU% of the `helper_pid` given to `drive` (the Redis a login run uses), not in
    #: `other_cpu_pct`; None without one, or when it could not be read.
    helper_cpu_pct: float | None = None


class _Rate:
    """Replies/s over the last second or so, from cumulative counts."""

    def __init__(self) -> None:
        self._points: list[tuple[float, int]] = []

    def update(self, now: float, answered: int) -> float:
        points = self._points
        points.append((now, answered))
        while len(points) > 2 and now - points[1][0] >= 1.0:
            points.pop(0)
        t0, a0 = points[0]
        return (answered - a0) / (now - t0) if now > t0 else 0.0


def drive(
    worker: Callable[[Connection, Share, Any], None],
    params: RunParams,
    server: Endpoint,
    *,
    client_cpus: list[int] | None,
    progress: ProgressSink | None = None,
    label: str = "",
    helper_pid: int | None = None,
) -> Driven:
    """One measured run of `worker` processes against a server that is listening.

    `helper_pid`: a process the server depends on (a local redis-server), whose CPU is
    read over the window like the server's and kept out of "other"."""
    sink = progress
    if sink is not None:
        sink.begin(
            label,
            warmup=params.warmup,
            duration=None if params.requests is not None else params.duration,
            requests=params.requests,
        )
    workers = Workers(worker, params, server, cpus=client_cpus)
    try:
        ready = workers.recv_all("ready", timeout=60.0)
        if sum(r[1] for r in ready) == 0:
            workers.send_all(("abort",))
            raise BenchError(f"no connection to {server.host}:{server.port} could be opened")
        # A little slack so every worker has its start command before the start time.
        start_ns = time.monotonic_ns() + _START_SLACK_NS
        measure_from_ns = start_ns + int(params.warmup * 1e9)
        measure_until_ns = measure_from_ns + int(params.window_s * 1e9)
        window = Window(start_ns, measure_from_ns, measure_until_ns)
        workers.send_all(("start", *window))
        return _collect(workers, params, server, window, sink, helper_pid)
    finally:
        workers.close()
        if sink is not None:
            sink.end()


def _collect(
    workers: Workers,
    params: RunParams,
    server: Endpoint,
    window: Window,
    sink: ProgressSink | None,
    helper_pid: int | None = None,
) -> Driven:
    """Read progress and results until every worker has sent its result.

    CPU is sampled from the start of the measured window to its end: the fixed end with
    --duration, the last worker's result with --requests.
    """
    server_cpu = CpuSampler([server.pid], tree=True) if server.pid else None
    client_cpu = CpuSampler(workers.pids, tree=False)
    helper_cpu = CpuSampler([helper_pid], tree=False) if helper_pid else None
    machine_cpu = MachineSampler()
    sampling = stopped = False
    readings: tuple[float | None, float | None, float | None] = (None, None, None)
    helper_pct: float | None = None

    def start_sampling() -> None:
        nonlocal sampling
        sampling = True
        machine_cpu.start()
        if server_cpu:
            server_cpu.start()
        if helper_cpu:
            helper_cpu.start()
        client_cpu.start()

    def stop_sampling() -> None:
        nonlocal stopped, readings, helper_pct
        stopped = True
        readings = (
            server_cpu.stop() if server_cpu else None,
            client_cpu.stop(),
            machine_cpu.stop(),
        )
        helper_pct = helper_cpu.stop() if helper_cpu else None

    fixed_end = params.requests is None
    n = len(workers.pipes)
    counts = [(0, 0, 0, 0)] * n
    results: list[WorkerEchoResult | None] = [None] * n
    pending = dict(enumerate(workers.pipes))
    index_of = {id(pipe): i for i, pipe in pending.items()}
    deadline_ns = window.measure_until_ns + int(_WORKER_REPLY_TIMEOUT_S * 1e9)
    rate = _Rate()
    while pending:
        now = time.monotonic_ns()
        if not sampling and now >= window.measure_from_ns:
            start_sampling()
        if fixed_end and sampling and not stopped and now >= window.measure_until_ns:
            stop_sampling()
        if now > deadline_ns:
            raise BenchError(
                f"{len(pending)} load generator(s) sent no result within "
                f"{_WORKER_REPLY_TIMEOUT_S:.0f} s of the end of the run"
            )
        wake_ns = now + int(PROGRESS_EVERY_S * 1e9)
        if not sampling:
            wake_ns = min(wake_ns, window.measure_from_ns)
        elif fixed_end and not stopped:
            wake_ns = min(wake_ns, window.measure_until_ns)
        for pipe in wait(list(pending.values()), max(0.0, (wake_ns - now) / 1e9)):
            assert isinstance(pipe, Connection)
            i = index_of[id(pipe)]
            try:
                message = pipe.recv()
            except EOFError:
                raise BenchError(f"load generator {i} exited without a result") from None
            if message[0] == "progress":
                counts[i] = message[1:5]
            elif message[0] == "result":
                result = msgspec.msgpack.decode(message[1], type=WorkerEchoResult)
                results[i] = result
                counts[i] = (counts[i][0], result.replies, result.errors, result.sent)
                del pending[i]
            elif message[0] == "error":
                raise BenchError(f"load generator {i} failed:\n{message[1]}")
            else:
                raise BenchError(f"load generator {i} sent {message[0]!r} during the run")
        if sink is not None:
            answered, replies, errors, sent = (sum(c[k] for c in counts) for k in range(4))
            mono = time.monotonic()
            sink.update(
                Snapshot(
                    since_window_s=(time.monotonic_ns() - window.measure_from_ns) / 1e9,
                    rate=rate.update(mono, answered),
                    answered=answered,
                    replies=replies,
                    errors=errors,
                    sent=sent,
                    finishing=not pending or (fixed_end and stopped),
                )
            )
    if not stopped:
        if not sampling:
            start_sampling()
        stop_sampling()
    server_pct, client_pct, machine_pct = readings
    return Driven(
        results=[r for r in results if r is not None],
        window=window,
        server_cpu_pct=server_pct,
        client_cpu_pct=client_pct or 0.0,
        other_cpu_pct=(
            max(0.0, machine_pct - server_pct - (client_pct or 0.0) - (helper_pct or 0.0))
            if machine_pct is not None and server_pct is not None
            else None
        ),
        helper_cpu_pct=helper_pct,
    )


def latency_curve(histogram: HdrHistogram, points_per_decade: int = 20) -> list[tuple[float, int]]:
    """(percentile, value µs) at evenly spaced points of log10(1 / (1 - p/100)): 0, 90,
    99, 99.9, ... and the steps between, up to the last percentile the sample can tell
    apart (1 / count), then (100, max)."""
    count = histogram.get_total_count()
    if not count:
        return []
    points: list[tuple[float, int]] = []
    top = math.log10(count)
    k = 0
    while k / points_per_decade < top:
        percentile = 100.0 * (1.0 - 10.0 ** (-k / points_per_decade))
        points.append((round(percentile, 6), int(histogram.get_value_at_percentile(percentile))))
        k += 1
    points.append((100.0, int(histogram.get_max_value())))
    return points


def merge_series(series: list[list[int]], length: int) -> list[int]:
    """Element-wise sum, padded with zeros to `length` (a second with no reply is a 0)."""
    merged = [0] * max(length, *(len(s) for s in series)) if series else [0] * length
    for one in series:
        for i, value in enumerate(one):
            merged[i] += value
    return merged


def summarize_driven(
    driven: Driven,
    *,
    params: RunParams,
    target: str,
    round_no: int,
    client_cpus: list[int] | None,
    depth: int = 1,
    size: int = 0,
    mode: str = "closed",
    rate: float | None = None,
    scenario: str | None = None,
) -> EchoRun:
    """`summarize` for what `drive` gathered: the window and CPU readings come with it."""
    return summarize(
        driven.results,
        params=params,
        target=target,
        round_no=round_no,
        cpu_pin=client_cpus is not None,
        server_cpu_pct=driven.server_cpu_pct,
        client_cpu_pct=driven.client_cpu_pct,
        other_cpu_pct=driven.other_cpu_pct,
        measure_from_ns=driven.window.measure_from_ns,
        depth=depth,
        size=size,
        mode=mode,
        rate=rate,
        scenario=scenario,
    )


def summarize(
    results: list[WorkerEchoResult],
    *,
    params: RunParams,
    target: str,
    round_no: int,
    cpu_pin: bool,
    server_cpu_pct: float | None,
    client_cpu_pct: float,
    other_cpu_pct: float | None = None,
    measure_from_ns: int | None = None,
    depth: int = 1,
    size: int = 0,
    mode: str = "closed",
    rate: float | None = None,
    scenario: str | None = None,
) -> EchoRun:
    """Merge the workers' measurements into one run.

    The window's length is `params.duration`, or with --requests from `measure_from_ns`
    to the last worker's `finished_ns` (`duration_s` is then the time limit).
    """
    histogram = new_histogram()
    for result in results:
        histogram.decode_and_add(result.histogram)
    lag = new_histogram()
    for result in results:
        if result.send_lag_histogram:
            lag.decode_and_add(result.send_lag_histogram)
    elapsed = params.window_s
    finished = [r.finished_ns for r in results if r.finished_ns]
    if params.requests is not None and measure_from_ns is not None and finished:
        elapsed = max(1e-6, (max(finished) - measure_from_ns) / 1e9)
    replies = sum(r.replies for r in results)
    count = histogram.get_total_count()
    lag_count = lag.get_total_count()

    def pct(p: float) -> int:
        return int(histogram.get_value_at_percentile(p)) if count else 0

    def lag_pct(p: float) -> int | None:
        return int(lag.get_value_at_percentile(p)) if lag_count else None

    intervals = max(1, math.ceil(elapsed * 1e6 / INTERVAL_US - 1e-9))
    return EchoRun(
        target=target,
        round=round_no,
        conns=params.conns,
        depth=depth,
        procs=len(results),
        size=size,
        warmup_s=params.warmup,
        duration_s=params.window_s,
        cpu_pin=cpu_pin,
        connections=sum(r.connections for r in results),
        connect_errors=sum(r.connect_errors for r in results),
        replies=replies,
        replies_per_s=replies / elapsed,
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
        error_samples=first_samples(results),
        mode=mode,
        rate=rate,
        requests=params.requests,
        scenario=scenario,
        elapsed_s=elapsed,
        sent=sum(r.sent for r in results),
        send_lag_p50_us=lag_pct(50),
        send_lag_p99_us=lag_pct(99),
        send_lag_max_us=int(lag.get_max_value()) if lag_count else None,
        throughput_interval_s=INTERVAL_US / 1e6,
        throughput=merge_series([r.throughput for r in results], intervals),
        throughput_by_proc=[merge_series([r.throughput], intervals) for r in results],
        latency_curve=latency_curve(histogram),
        histogram=histogram.encode().decode("ascii") if count else "",
    )
