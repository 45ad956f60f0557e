"""What a run leaves behind: its JSON (with throughput over time), `--plot`, and
`tickwire bench compare` on two real result files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bench.diff import NotABenchResult, diff_reports, load_report
from tests.bench_tool.helpers import BASELINE, assert_valid_run, read_report, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason="matplotlib missing: pip install -e '.[dev]' (or '.[plot]')"
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real result files: closed loop (with --plot when matplotlib is there; the dev
    extra has it) and open loop."""
    tmp = tmp_path_factory.mktemp("results")
    paths = {name: tmp / f"{name}.json" for name in ("closed", "open")}
    paths["plot"] = tmp / "closed.png"
    plot = ("--plot", str(paths["plot"])) if HAVE_MATPLOTLIB else ()
    common = ("--conns", "4", "--procs", "2", "--duration", "1", "--warmup", "0.3")
    closed = run_cli(
        "echo", *BASELINE, *common, "--depth", "2", "--json", str(paths["closed"]), *plot
    )
    assert closed == 0
    assert run_cli("echo", *BASELINE, *common, "--rate", "400", "--json", str(paths["open"])) == 0
    return paths


def test_a_short_run_writes_a_valid_result_with_throughput_over_time(
    results: dict[str, Path],
) -> None:
    report = read_report(results["closed"])
    assert report.kind == "echo"
    [run] = report.runs
    assert_valid_run(run)
    assert (run.mode, run.conns, run.depth, run.procs) == ("closed", 4, 2, 2)
    assert run.requests is None and run.elapsed_s == run.duration_s == 1.0
    assert run.send_lag_p50_us is None  # closed loop sends when a reply comes, never late
    assert len(run.throughput) == 1 and run.throughput[0] == run.replies


@needs_matplotlib
def test_plot_writes_a_png(results: dict[str, Path]) -> None:
    data = results["plot"].read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # two panels with axes, curves and legends, not an empty canvas


def test_compare_prints_the_differences_of_two_results(
    results: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plot = tmp_path / "compare.png"
    with_plot = ("--plot", str(plot)) if HAVE_MATPLOTLIB else ()
    code = run_cli("compare", str(results["closed"]), str(results["open"]), *with_plot)
    assert code == 0
    out = capsys.readouterr().out
    for heading in ("baseline", "A", "B", "B / A", "change"):
        assert heading in out
    for metric in ("replies/s", "p50 µs", "p99 µs", "p99.9 µs", "errors"):
        assert metric in out
    assert "%" in out
    assert "load differs, mode: closed vs open" in out
    if HAVE_MATPLOTLIB:
        assert plot.read_bytes().startswith(PNG_MAGIC)


def test_compare_numbers_match_the_files(results: dict[str, Path]) -> None:
    a, b = load_report(results["closed"]), load_report(results["open"])
    [diff] = diff_reports(a, b)
    metrics = {m.name: m for m in diff.metrics}
    rps = metrics["replies/s"]
    assert (rps.a, rps.b) == (a.runs[0].replies_per_s, b.runs[0].replies_per_s)
    assert rps.ratio == pytest.approx(rps.b / rps.a)
    assert rps.change_pct == pytest.approx(100 * (rps.b - rps.a) / rps.a)
    # Fewer replies/s is worse; lower latency would be better.
    assert rps.better is (rps.b > rps.a)
    assert metrics["p99 µs"].higher_is_better is False


def test_compare_refuses_what_is_not_a_bench_result(
    results: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    idle = tmp_path / "idle.json"
    idle.write_text(json.dumps({"kind": "idle", "target": "baseline"}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json at all")
    for bad, says in [
        (other, "is not a tickwire bench result"),
        (idle, "is an idle bench result"),
        (garbage, "is not JSON"),
        (tmp_path / "missing.json", "missing.json"),
    ]:
        assert run_cli("compare", str(results["closed"]), str(bad)) == 2
        assert says in capsys.readouterr().err
        with pytest.raises(NotABenchResult):
            load_report(bad)


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "never.png"
    code = run_cli("echo", *BASELINE, "--duration", "1", "--plot", str(out))
    assert code == 2  # refused before any load was made
    assert "tickwire[plot]" in capsys.readouterr().err
    assert not out.exists()
