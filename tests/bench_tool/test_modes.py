"""Open loop, --requests, the live progress display, and the window arithmetic behind them.

Every run is short (about a second of load) against the inline baseline. The one timing
assertion is the issue's own: open loop holds its rate within 5% on a light load.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench import pacer
from bench.echo import EchoParams
from bench.load import RunParams, apportion, latency_curve, merge_series, new_histogram, quota_of
from bench.proc import PROJECT_ROOT, Endpoint
from bench.progress import LiveProgress, Snapshot, describe
from bench.runner import EchoOptions, ServerOptions, bench_echo
from bench.workers import shares
from tests.bench_tool.helpers import BASELINE, assert_valid_run, read_report, run_cli
from tools.bench import common, main


class Recorder:
    """A ProgressSink that keeps what it was given."""

    def __init__(self) -> None:
        self.began: list[tuple[str, float, float | None, int | None]] = []
        self.snapshots: list[Snapshot] = []
        self.ended = 0

    def begin(
        self, label: str, *, warmup: float, duration: float | None, requests: int | None
    ) -> None:
        self.began.append((label, warmup, duration, requests))

    def update(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def end(self) -> None:
        self.ended += 1


def test_open_loop_holds_its_rate_and_reports_progress() -> None:
    rate = 500.0
    recorder = Recorder()
    options = EchoOptions(
        params=EchoParams(conns=5, procs=2, rate=rate, duration=2.0, warmup=0.5),
        server=ServerOptions(target="baseline"),
    )
    log: list[str] = []
    report = bench_echo(options, Console(file=io.StringIO()), log.append, recorder)
    [run] = report.runs
    assert_valid_run(run)
    assert (run.mode, run.rate, run.depth) == ("open", rate, 0)
    # The check: within 5% of the asked rate on a light load.
    assert abs(run.replies_per_s - rate) <= 0.05 * rate, run.replies_per_s
    # How late the sends went out is measured (it is part of every latency).
    assert run.send_lag_p50_us is not None and run.send_lag_max_us is not None
    assert 0 < run.send_lag_p50_us <= run.send_lag_max_us
    # Requests were sent during warm-up too, and never more than the schedule holds.
    assert run.replies < run.sent <= rate * 2.6 + 10
    # Workers reported while the run went: warm-up first, then measuring, counts growing.
    assert recorder.began == [("echo baseline", 0.5, 2.0, None)]
    assert recorder.ended == 1
    snaps = recorder.snapshots
    assert any(s.since_window_s < 0 and s.answered > 0 for s in snaps)
    assert any(s.since_window_s > 0 and s.replies > 0 and s.rate > 0 for s in snaps)
    answered = [s.answered for s in snaps]
    assert answered == sorted(answered)
    assert snaps[-1].replies == run.replies
    assert snaps[-1].finishing


def test_requests_stops_at_the_count(tmp_path: Path) -> None:
    out = tmp_path / "requests.json"
    code = run_cli(
        "echo",
        *BASELINE,
        "--conns", "3",
        "--depth", "4",
        "--procs", "2",
        "--requests", "3001",
        "--warmup", "0.2",
        "--json", str(out),
    )  # fmt: skip
    assert code == 0
    [run] = read_report(out).runs
    assert_valid_run(run)
    # Exactly N over both processes, shared by their connections (2 and 1 of 3).
    assert run.requests == 3001
    assert run.replies == 3001
    assert [sum(p) for p in run.throughput_by_proc] == [2001, 1000]
    assert run.sent >= run.replies


def test_requests_gives_up_at_the_time_limit(tmp_path: Path) -> None:
    out = tmp_path / "limit.json"
    code = run_cli(
        "echo",
        *BASELINE,
        "--conns", "2",
        "--procs", "1",
        "--rate", "200",
        "--requests", "1000000",
        "--time-limit", "0.5",
        "--warmup", "0",
        "--json", str(out),
    )  # fmt: skip
    assert code == 1  # it ran, but did not get what was asked for
    [run] = read_report(out).runs
    assert 0 < run.replies < 1_000_000
    assert run.elapsed_s == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "100", "--depth", "2"], "not allowed with argument"),
        (["--duration", "1", "--requests", "5"], "not allowed with argument"),
        (["--time-limit", "3"], "--time-limit bounds a --requests run"),
        (["--rate", "0"], "must be positive"),
    ],
)
def test_contradictory_load_options_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["echo", *BASELINE, *args])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_progress_only_on_a_terminal_and_not_with_no_progress() -> None:
    parser_args = argparse.Namespace(progress=True)
    tty = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(common.progress(parser_args, tty), LiveProgress)
    assert common.progress(parser_args, pipe) is None
    assert common.progress(argparse.Namespace(progress=False), tty) is None


def test_live_progress_draws_phase_rate_and_errors() -> None:
    out = io.StringIO()
    live = LiveProgress(Console(file=out, force_terminal=True, width=120))
    live.begin("echo baseline", warmup=1.0, duration=2.0, requests=None)
    snap = Snapshot(since_window_s=0.5, rate=12345.0, answered=9, replies=7, errors=2, sent=10)
    live.update(snap)
    live.end()
    text = out.getvalue()
    assert "echo baseline" in text
    assert "measuring" in text and "0.5/2.0 s" in text
    assert "12,345 replies/s" in text and "2 errors" in text
    warm = Snapshot(since_window_s=-0.25, rate=0, answered=0, replies=0, errors=0, sent=0)
    line, done, total = describe(warm, warmup=1.0, duration=None, requests=100)
    assert "warm-up 0.8/1.0 s" in line and "0/100 replies" in line
    assert (done, total) == (0.0, 100.0)


def test_apportion_sums_to_the_total_in_proportion() -> None:
    assert apportion(3001, [2, 1]) == [2001, 1000]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(1, [5, 5]) == [1, 0]
    assert sum(apportion(99_999, [7, 3, 5])) == 99_999


def test_each_process_gets_its_share_of_the_requests() -> None:
    params = RunParams(conns=5, procs=2, duration=1.0, warmup=0.0, requests=1000)
    parts = shares(params, Endpoint("127.0.0.1", 1, None), None)
    assert [p.conns for p in parts] == [3, 2]
    assert [quota_of(params, p) for p in parts] == [600, 400]
    no_count = RunParams(conns=5, procs=2, duration=1.0, warmup=0.0)
    assert quota_of(no_count, parts[0]) is None


def test_latency_curve_is_spaced_like_an_hdr_plot() -> None:
    histogram = new_histogram()
    for value in range(1, 10_001):
        histogram.record_value(value)
    curve = latency_curve(histogram, points_per_decade=1)
    assert [p for p, _ in curve] == [0.0, 90.0, 99.0, 99.9, 100.0]
    assert [v for _, v in curve][1:] == pytest.approx([9000, 9900, 9990, 10000], rel=1e-3)
    assert latency_curve(new_histogram()) == []


def test_merge_series_pads_silent_seconds_with_zeros() -> None:
    assert merge_series([[1, 2], [3]], 4) == [4, 2, 0, 0]
    assert merge_series([], 2) == [0, 0]


@pytest.mark.parametrize("timerfd", [True, False])
async def test_pacer_wakes_at_the_armed_time(
    timerfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not timerfd:
        monkeypatch.setattr(pacer, "_libc", lambda: None)  # as on a system without timerfd
    loop = asyncio.get_running_loop()
    woke: list[int] = []
    fired = asyncio.Event()

    def wake() -> None:
        woke.append(time.monotonic_ns())
        fired.set()

    p = pacer.Pacer(loop, wake)
    try:
        if timerfd and sys.platform.startswith("linux"):
            assert p.precise
        due = time.monotonic_ns() + 3_000_000
        p.arm_at(due - 1_000_000)
        p.arm_at(due)  # re-arming replaces the earlier time
        await asyncio.wait_for(fired.wait(), 5.0)
        assert woke[0] >= due - 1_000_000 * (0 if timerfd else 1)  # ms timers may round
        assert len(woke) == 1
    finally:
        p.close()


KINDS = ("echo", "idle", "scenario", "login", "restore", "fanout", "compare")


@pytest.mark.parametrize(
    "entry",
    [("tools.cli", "bench"), ("tools.bench",)],
    ids=["tickwire bench", "python -m tools.bench"],
)
def test_every_entry_point_offers_every_kind(entry: tuple[str, ...]) -> None:
    """`tickwire bench` and `python -m tools.bench` are one command with the same kinds,
    each registered by its module in tools/bench/."""
    out = subprocess.run(
        [sys.executable, "-m", *entry, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    ).stdout
    assert out.startswith("usage: tickwire bench")
    for kind in KINDS:
        assert f"    {kind} " in out, out
