"""Terminal tables for bench results (rich). The JSON from `--json` carries the same data."""

from __future__ import annotations

from rich.table import Table

from bench.results import Comparison, EchoRun, IdleReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def echo_table(runs: list[EchoRun], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("target")
    table.add_column("conns x depth", justify="right")
    table.add_column("replies/s", justify="right")
    table.add_column("p50 µs", justify="right")
    table.add_column("p99 µs", justify="right")
    table.add_column("p99.9 µs", justify="right")
    table.add_column("max µs", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("server CPU", justify="right")
    table.add_column("loadgen CPU", justify="right")
    table.add_column("other CPU", justify="right")
    for run in runs:
        errors = run.errors + run.connect_errors
        table.add_row(
            run.target,
            f"{run.conns} x {run.depth}",
            _int(run.replies_per_s),
            _int(run.p50_us),
            _int(run.p99_us),
            _int(run.p999_us),
            _int(run.max_us),
            f"[red]{errors}[/red]" if errors else "0",
            _pct(run.server_cpu_pct),
            f"{_pct(run.client_cpu_pct)} ({run.procs}p)",
            _pct(run.other_cpu_pct),
        )
    return table


def comparison_table(comparison: Comparison) -> Table:
    table = Table(
        title=f"tickwire vs baseline, median of {comparison.rounds} interleaved rounds",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("tickwire", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio (median of rounds)", justify="right")
    table.add_column("per round", justify="right")
    table.add_row(
        "replies/s",
        _int(comparison.tickwire_rps_median),
        _int(comparison.baseline_rps_median),
        f"{comparison.rps_ratio_median:.2f}",
        " ".join(f"{r:.2f}" for r in comparison.rps_ratios),
    )
    table.add_row(
        "p99 µs",
        _int(comparison.tickwire_p99_median_us),
        _int(comparison.baseline_p99_median_us),
        f"{comparison.p99_ratio_median:.2f}",
        " ".join(f"{r:.2f}" for r in comparison.p99_ratios),
    )
    return table


def idle_table(report: IdleReport) -> Table:
    table = Table(title=f"idle connections: {report.target}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("connections opened", f"{report.opened:,} / {report.conns:,}")
    table.add_row("connect errors", str(report.connect_errors))
    table.add_row("time to open", f"{report.connect_s:.1f} s")
    table.add_row("server RSS before", f"{_int(report.rss_before_kib)} KiB")
    table.add_row("server RSS idle", f"{_int(report.rss_idle_kib)} KiB")
    table.add_row("server RSS after ping", f"{_int(report.rss_after_ping_kib)} KiB")
    per_idle = report.kib_per_conn_idle
    per_ping = report.kib_per_conn_after_ping
    table.add_row("KiB per connection, idle", "-" if per_idle is None else f"{per_idle:.2f}")
    table.add_row("KiB per connection, after ping", "-" if per_ping is None else f"{per_ping:.2f}")
    answered = f"{report.answered:,} / {report.pinged:,}"
    if report.answered < report.opened:
        answered = f"[red]{answered}[/red]"
    table.add_row("pings answered", answered)
    table.add_row("dropped by server", str(report.dropped))
    return table
