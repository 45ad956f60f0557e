"""Shared by the bench tool tests: short bounded runs and checks of their results."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
from hdrh.histogram import HdrHistogram

from bench.results import EchoReport, EchoRun
from tools.bench import main

#: Against the inline baseline, so the tests do not depend on the state of the server.
BASELINE = ("--target", "baseline", "--no-cpu-pin")


def run_cli(*args: str) -> int:
    return main(list(args))


def read_report(path: Path) -> EchoReport:
    return msgspec.json.decode(path.read_bytes(), type=EchoReport)


def assert_valid_run(run: EchoRun) -> None:
    """The numbers exist and hang together; nothing about how fast."""
    assert run.errors == 0, run.error_samples
    assert run.connect_errors == 0, run.error_samples
    assert run.connections == run.conns
    assert run.replies > 0
    assert run.replies_per_s > 0
    assert run.elapsed_s > 0
    assert run.replies_per_s == run.replies / run.elapsed_s
    assert 0 < run.p50_us <= run.p90_us <= run.p99_us <= run.p999_us <= run.max_us
    # Throughput over time: one entry per started second of the window, every counted
    # reply in exactly one of them, and the per-process series adding up to the total.
    assert len(run.throughput) == math.ceil(run.elapsed_s - 1e-9)
    assert sum(run.throughput) == run.replies
    assert len(run.throughput_by_proc) == run.procs
    assert [sum(col) for col in zip(*run.throughput_by_proc, strict=True)] == run.throughput
    # The percentile curve rises, ends at the max; the histogram decodes to the replies.
    percentiles = [p for p, _ in run.latency_curve]
    values = [v for _, v in run.latency_curve]
    assert percentiles == sorted(percentiles) and percentiles[-1] == 100.0
    assert values == sorted(values) and values[-1] == run.max_us
    histogram = HdrHistogram.decode(run.histogram.encode("ascii"))
    assert histogram.get_total_count() == run.replies
