"""`tickwire bench fanout` against a real `tickwire serve` serving the bench app.

Small and bounded: 20 members for about a second, receivers in 2 real processes. No
timing assertions: every broadcast reaches every reading member exactly once, the
server's fan-out histogram comes back for the window, and a member that stops reading
is cut off with SLOW_CONSUMER while the others keep receiving. With `--nodes` the
servers are nodes of a cluster on a redis-server the bench starts itself: what Redis
counted per broadcast is checked for the design's one PUBLISH, not for speed.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hdrh.histogram import HdrHistogram

from bench.results import FanoutComparison, FanoutReport
from tests.bench_tool.helpers import run_cli
from tests.conftest import need_redis_binary

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


def assert_cluster_run(report: FanoutReport, nodes: int) -> None:
    """Every member read every broadcast across the nodes, and Redis carried each
    broadcast as one PUBLISH handed to every node."""
    assert (report.nodes, report.cluster) == (nodes, True)
    assert len(report.node_members) == len(report.node_cpu_pct) == nodes
    assert sum(report.node_members) == report.joined == report.members
    assert max(report.node_members) - min(report.node_members) <= 1
    assert report.errors == report.connect_errors == report.join_errors == report.lost == 0
    assert report.broadcasts_total > 0
    assert report.delivered_total == report.expected_total
    assert report.expected_total == report.broadcasts_total * report.members
    assert report.behind == 0
    # Counted by Redis from before the first Trigger to the last delivery.
    assert 0 < report.redis_broadcasts <= report.broadcasts_total
    assert report.redis_publishes == report.redis_broadcasts
    assert report.redis_publishes_per_broadcast == 1.0
    assert report.redis_commands is not None
    assert report.redis_commands >= report.redis_publishes
    assert report.redis_commands_per_broadcast == report.redis_commands / report.redis_broadcasts
    # Each PUBLISH (64 data bytes and more) went out once to each subscribed node.
    assert report.redis_out_bytes is not None
    assert report.redis_out_bytes >= nodes * 64 * report.redis_broadcasts
    assert report.redis_out_bytes_per_broadcast == report.redis_out_bytes / report.redis_broadcasts
    assert report.redis_cpu_pct is not None


def test_three_nodes_deliver_every_broadcast_through_one_publish_each(tmp_path: Path) -> None:
    need_redis_binary()
    out = tmp_path / "fanout.json"
    code = run_cli(
        "fanout",
        "--nodes",
        "3",
        "--members",
        "30",
        "--procs",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--json",
        str(out),
    )
    assert code == 0
    report = read_fanout(out)
    assert report.node_members == [10, 10, 10]
    assert_cluster_run(report, 3)
    # Node 0's histogram: one value per broadcast it made in the window.
    assert report.fanout_count == report.broadcasts_window > 0


def test_compare_nodes_runs_both_layouts_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_redis_binary()
    out = tmp_path / "fanout.json"
    code = run_cli(
        "fanout",
        "--compare-nodes",
        "1,2",
        "--members",
        "10",
        "--procs",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--json",
        str(out),
    )
    assert code == 0
    comparison = msgspec.json.decode(out.read_bytes(), type=FanoutComparison)
    assert comparison.kind == "fanout-compare"
    one, two = comparison.runs
    # One node is a plain server: no cluster, no Redis read.
    assert (one.nodes, one.cluster, one.redis_broadcasts, one.redis_publishes) == (
        1,
        False,
        0,
        None,
    )
    assert one.lossless and one.delivered_total == one.broadcasts_total * 10 > 0
    assert_cluster_run(two, 2)
    assert comparison.ratios == [1.0, two.deliveries_per_s / one.deliveries_per_s]
    assert "the same broadcasts on each number of nodes" in capsys.readouterr().out


def test_nodes_without_redis_server_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the users are made, naming --cluster as the way out."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run_cli(*SMALL, "--nodes", "2") == 2
    err = capsys.readouterr().err
    assert "redis-server is not on PATH" in err and "--cluster" in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--stalled", "20"), "--stalled must leave at least one member reading"),
        (("--set", "nokey"), "--set takes KEY=VALUE"),
        (("--procs", "21"), "--procs must not exceed --members"),
        (("--nodes", "21"), "more nodes than --members leaves a node empty"),
        (("--nodes", "2", "--compare-nodes", "1,3"), "exclude each other"),
    ],
)
def test_fanout_refuses_contradictions(
    args: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*SMALL, *args) == 2
    assert says in capsys.readouterr().err
