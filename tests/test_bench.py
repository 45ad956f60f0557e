"""`tickwire bench` end to end against the inline baseline server, and its error checks.

Runs are short and bounded; nothing here asserts on timing, only that the numbers exist,
hang together and that errors are seen when a server breaks the contract. Open loop,
--requests, progress, scenarios, --plot and compare: tests/bench_tool/.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import msgspec
import pytest

from bench.echo import EchoParams, compare
from bench.idle import IdleParams
from bench.load import new_histogram, summarize
from bench.proc import Endpoint
from bench.results import EchoReport, EchoRun, IdleReport, WorkerEchoResult
from bench.workers import shares, split
from tools.bench import main as bench_main

# A server that answers every request with the wrong seq: the bench must count errors.
LIAR_SERVER = """
import asyncio, struct, sys
H = struct.Struct(">IHBI")

class Liar(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        data, pos, out = self.buf + data, 0, []
        while len(data) - pos >= 11:
            length, msg_id, flags, seq = H.unpack_from(data, pos)
            end = pos + 4 + length
            if end > len(data):
                break
            out.append(H.pack(length, 11, 1, seq + 1) + data[pos + 11 : end])
            pos = end
        self.buf = data[pos:]
        self.transport.write(b"".join(out))

async def main():
    server = await asyncio.get_running_loop().create_server(Liar, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"tickwire listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _echo_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "echo",
        "--conns",
        "2",
        "--depth",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--procs",
        "1",
        "--no-cpu-pin",
        "--json",
        str(tmp_path / "result.json"),
        *extra,
    ]


def _assert_sane(run: EchoRun) -> None:
    assert run.errors == 0, run.error_samples
    assert run.connect_errors == 0, run.error_samples
    assert run.connections == run.conns
    assert run.replies > 0
    assert run.replies_per_s > 0
    assert 0 < run.p50_us <= run.p90_us <= run.p99_us <= run.p999_us <= run.max_us
    assert run.mean_us > 0
    assert run.server_cpu_pct is not None and run.server_cpu_pct >= 0
    assert sum(run.throughput) == run.replies


def test_echo_against_baseline_writes_valid_json(tmp_path: Path) -> None:
    code = bench_main(_echo_args(tmp_path, "--target", "baseline"))
    assert code == 0
    report = msgspec.json.decode((tmp_path / "result.json").read_bytes(), type=EchoReport)
    assert report.comparison is None
    [run] = report.runs
    assert run.target == "baseline"
    assert (run.conns, run.depth, run.procs, run.size) == (2, 2, 1, 64)
    _assert_sane(run)


@pytest.mark.slow
def test_compare_baseline_interleaves_rounds(tmp_path: Path) -> None:
    # The baseline stands in for tickwire here so the test does not depend on the server.
    stand_in = shlex.join([sys.executable, "-m", "bench.baseline", "--port", "0"])
    code = bench_main(
        _echo_args(tmp_path, "--compare-baseline", "--rounds", "2", "--server-cmd", stand_in)
    )
    assert code == 0
    report = msgspec.json.decode((tmp_path / "result.json").read_bytes(), type=EchoReport)
    assert [(r.round, r.target) for r in report.runs] == [
        (1, "baseline"),
        (1, "tickwire"),
        (2, "baseline"),
        (2, "tickwire"),
    ]
    for run in report.runs:
        _assert_sane(run)
    assert report.comparison is not None
    assert report.comparison.rounds == 2
    assert len(report.comparison.rps_ratios) == 2
    assert report.comparison.rps_ratio_median > 0
    assert report.comparison.p99_ratio_median > 0


def test_wrong_seq_is_counted_as_errors(tmp_path: Path) -> None:
    script = tmp_path / "liar.py"
    script.write_text(LIAR_SERVER)
    code = bench_main(
        _echo_args(tmp_path, "--server-cmd", shlex.join([sys.executable, str(script)]))
    )
    assert code == 1
    report = msgspec.json.decode((tmp_path / "result.json").read_bytes(), type=EchoReport)
    [run] = report.runs
    assert run.errors > 0
    assert run.replies == 0
    assert any("seq=" in sample for sample in run.error_samples)


def test_server_that_never_listens_fails_cleanly(tmp_path: Path) -> None:
    cmd = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert bench_main(_echo_args(tmp_path, "--server-cmd", cmd)) == 2
    assert not (tmp_path / "result.json").exists()


def test_idle_connections_all_answer_their_ping(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    code = bench_main(
        [
            "idle",
            "--target",
            "baseline",
            "--conns",
            "200",
            "--procs",
            "2",
            "--settle",
            "0.2",
            "--no-cpu-pin",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = msgspec.json.decode(out.read_bytes(), type=IdleReport)
    assert report.opened == 200
    assert report.connect_errors == 0
    assert report.pinged == report.answered == 200
    assert report.dropped == 0
    assert report.rss_before_kib is not None and report.rss_before_kib > 0
    assert report.rss_idle_kib is not None
    assert report.kib_per_conn_idle is not None


def test_split_spreads_evenly_and_never_leaves_a_part_empty() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1]
    assert sum(split(15000, 7)) == 15000


def test_shares_divide_connections_and_the_handshake_budget() -> None:
    server = Endpoint("127.0.0.1", 7000, None)
    parts = shares(IdleParams(conns=10, procs=3, connect_concurrency=100), server, [1])
    assert [p.conns for p in parts] == [4, 3, 3]
    assert {(p.host, p.port, p.connect_concurrency) for p in parts} == {("127.0.0.1", 7000, 33)}
    assert all(p.cpus == [1] for p in parts)
    # Never below one handshake per process, and no process without connections.
    [one] = shares(IdleParams(conns=1, procs=4, connect_concurrency=1), server, None)
    assert (one.conns, one.connect_concurrency) == (1, 1)
    parts = shares(IdleParams(conns=8, procs=4, connect_concurrency=2), server, None)
    assert [(p.conns, p.connect_concurrency) for p in parts] == [(2, 1)] * 4


def _worker(values: list[int], errors: int = 0) -> WorkerEchoResult:
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return WorkerEchoResult(
        connections=1,
        connect_errors=0,
        sent=len(values),
        replies=len(values),
        errors=errors,
        histogram=histogram.encode(),
    )


def test_histograms_from_workers_are_merged_not_averaged() -> None:
    params = EchoParams(conns=2, depth=1, duration=2.0, warmup=0.0, procs=2, size=64)
    fast = _worker([100] * 99)
    slow = _worker([10_000] * 1, errors=3)
    run = summarize(
        [fast, slow],
        params=params,
        target="baseline",
        round_no=1,
        cpu_pin=False,
        server_cpu_pct=None,
        client_cpu_pct=0.0,
    )
    assert run.replies == 100
    assert run.replies_per_s == 50.0
    assert run.errors == 3
    assert run.p50_us == 100
    assert 9_990 <= run.max_us <= 10_010  # 3 significant digits


def test_compare_takes_the_median_of_per_round_ratios() -> None:
    params = EchoParams(conns=1, depth=1, duration=1.0, warmup=0.0, procs=1, size=64)

    def run(target: str, round_no: int, replies: int, p99: int) -> EchoRun:
        base = summarize(
            [_worker([p99] * replies)],
            params=params,
            target=target,
            round_no=round_no,
            cpu_pin=False,
            server_cpu_pct=None,
            client_cpu_pct=0.0,
        )
        return msgspec.structs.replace(base, p99_us=p99)

    runs = [
        run("baseline", 1, 100, 100),
        run("tickwire", 1, 50, 200),
        run("baseline", 2, 100, 100),
        run("tickwire", 2, 80, 150),
        run("baseline", 3, 100, 100),
        run("tickwire", 3, 90, 110),
    ]
    result = compare(runs)
    assert result.rounds == 3
    assert result.rps_ratio_median == pytest.approx(0.8)
    assert result.p99_ratio_median == pytest.approx(1.5)
