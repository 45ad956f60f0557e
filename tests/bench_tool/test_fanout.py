"""`tickwire bench fanout` against a real `tickwire serve` serving the bench app.

Small and bounded: 20 members for about a second, receivers in 2 real processes. No
timing assertions: every broadcast reaches every reading member exactly once, the
server's fan-out histogram comes back for the window, and a member that stops reading
is cut off with SLOW_CONSUMER while the others keep receiving.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hdrh.histogram import HdrHistogram

from bench.results import FanoutReport
from tests.bench_tool.helpers import run_cli

SMALL = ("fanout", "--members", "20", "--procs", "2", "--duration", "1", "--warmup", "0.3")


def read_fanout(path: Path) -> FanoutReport:
    return msgspec.json.decode(path.read_bytes(), type=FanoutReport)


@pytest.mark.parametrize(("burst", "ack_every"), [(1, 256), (4, 0)])
def test_every_broadcast_reaches_every_member(tmp_path: Path, burst: int, ack_every: int) -> None:
    out = tmp_path / "fanout.json"
    code = run_cli(*SMALL, "--burst", str(burst), "--ack-every", str(ack_every), "--json", str(out))
    assert code == 0
    report = read_fanout(out)
    assert (report.kind, report.members, report.joined, report.burst) == ("fanout", 20, 20, burst)
    assert report.errors == report.connect_errors == report.join_errors == report.lost == 0
    # No loss: every member read every broadcast of the run, counted by the receivers.
    assert report.broadcasts_total > 0
    assert report.broadcasts_total % burst == 0
    assert report.expected_total == report.broadcasts_total * 20
    assert report.delivered_total == report.expected_total
    assert report.behind == 0
    # The window: pushes read in it, per second of it adding up, and a rate from them.
    assert report.deliveries_window > 0
    assert sum(report.throughput) == report.deliveries_window
    assert report.deliveries_per_s == report.deliveries_window / report.duration_s
    # The server's fan-out histogram of the window: one value per broadcast made in it.
    assert report.broadcasts_window > 0
    assert report.fanout_count == report.broadcasts_window
    assert 0 < report.fanout_p50_us <= report.fanout_p90_us <= report.fanout_p99_us
    assert report.fanout_p99_us <= report.fanout_max_us
    histogram = HdrHistogram.decode(report.fanout_histogram.encode("ascii"))
    assert histogram.get_total_count() == report.fanout_count
    assert report.server_cpu_pct is not None and report.server_cpu_pct > 0
    assert report.rss_before_kib is not None and report.rss_peak_kib is not None
    assert report.stalled == report.stalled_cut == report.slow_consumer_closes == 0


def test_a_stalled_member_is_cut_off_and_the_others_keep_receiving(tmp_path: Path) -> None:
    """2 of 20 members never read; 16 KiB pushes pass a 64 KiB limit within the run."""
    out = tmp_path / "fanout.json"
    code = run_cli(
        *SMALL,
        "--stalled",
        "2",
        "--size",
        "16384",
        "--set",
        "slow_consumer_bytes=65536",
        "--json",
        str(out),
    )
    assert code == 0
    report = read_fanout(out)
    assert report.stalled == 2
    assert report.slow_consumer_bytes == 65536
    # The server closed both with SLOW_CONSUMER, and both read its Error when they read.
    assert report.slow_consumer_closes == 2
    assert report.stalled_cut == 2
    assert report.stalled_saw_slow_consumer == 2
    # What the server still held for any connection at the end: at most the limit plus
    # the one write that passed it (a 16 KiB push and its header).
    assert report.pending_bytes_max <= 65536 + 16384 + 64
    # The 18 others lost nothing.
    assert report.expected_total == report.broadcasts_total * 18
    assert report.delivered_total == report.expected_total
    assert report.errors == report.lost == report.behind == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--stalled", "20"), "--stalled must leave at least one member reading"),
        (("--set", "nokey"), "--set takes KEY=VALUE"),
        (("--procs", "21"), "--procs must not exceed --members"),
    ],
)
def test_fanout_refuses_contradictions(
    args: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*SMALL, *args) == 2
    assert says in capsys.readouterr().err
