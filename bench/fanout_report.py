"""The terminal table and notes of `tickwire bench fanout` (the JSON carries the same)."""

from __future__ import annotations

from rich.table import Table

from bench.results import TARGET_DELIVERIES_PER_S, FanoutReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value:,} KiB"


def fanout_table(report: FanoutReport) -> Table:
    reading = report.joined - report.stalled
    table = Table(
        title=f"room broadcast to {report.joined:,} members, {report.size}-byte data, "
        f"burst {report.burst}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("value", justify="right")
    met = report.deliveries_per_s >= TARGET_DELIVERIES_PER_S
    verdict = "[green]at or above[/green]" if met else "[red]below[/red]"
    table.add_row(
        "deliveries/s (read by the receivers)",
        f"{report.deliveries_per_s:,.0f} ({verdict} the {TARGET_DELIVERIES_PER_S:,} target)",
    )
    table.add_row(
        "in the window: read / expected",
        f"{report.deliveries_window:,} / {report.expected_window:,} "
        f"({report.broadcasts_window:,} broadcasts x {reading:,} members; "
        f"driver's window {report.elapsed_s:.2f} s)",
    )
    whole = f"{report.delivered_total:,} / {report.expected_total:,}"
    if not report.lossless:
        whole = f"[red]{whole}, {report.behind:,} members behind[/red]"
    else:
        whole += " (no loss)"
    table.add_row("whole run: read / expected", whole)
    table.add_row(
        "broadcasts/s, triggers in the window",
        f"{report.broadcasts_window / report.elapsed_s:,.1f}, {report.triggers:,} "
        f"(burst {report.burst})",
    )
    table.add_row(
        "server fan-out p50 / p90 / p99 / max µs",
        f"{report.fanout_p50_us:,} / {report.fanout_p90_us:,} / {report.fanout_p99_us:,} / "
        f"{report.fanout_max_us:,} ({report.fanout_count:,} broadcasts)",
    )
    table.add_row(
        "CPU: server / receivers / driver / other",
        f"{_pct(report.server_cpu_pct)} / {_pct(report.receiver_cpu_pct)} ({report.procs}p) / "
        f"{_pct(report.driver_cpu_pct)} / {_pct(report.other_cpu_pct)} "
        f"({report.machine_cpus} CPUs)",
    )
    table.add_row("server CPU in the kernel (system time)", _pct(report.server_sys_pct))
    table.add_row(
        "server RSS before / peak / after",
        f"{_kib(report.rss_before_kib)} / {_kib(report.rss_peak_kib)} / "
        f"{_kib(report.rss_after_kib)}",
    )
    table.add_row(
        "server pending output at the end: all / largest",
        f"{report.pending_bytes:,} B / {report.pending_bytes_max:,} B "
        f"(limit {report.slow_consumer_bytes:,}); {report.closing:,} closed, not yet gone",
    )
    errors = report.errors + report.connect_errors + report.join_errors + report.lost
    table.add_row(
        "errors (frames, connects, joins, lost)",
        f"[red]{errors:,}[/red]" if errors else "0",
    )
    if report.stalled:
        cut = f"{report.stalled_cut:,} of {report.stalled:,}"
        table.add_row(
            "stalled members cut off (SLOW_CONSUMER)",
            f"{cut}; {report.stalled_saw_slow_consumer:,} read the Error; "
            f"server count {report.slow_consumer_closes:,}",
        )
        table.add_row(
            "server RSS growth (peak - before) vs limit",
            _growth(report),
        )
    return table


def _growth(report: FanoutReport) -> str:
    if report.rss_peak_kib is None or report.rss_before_kib is None:
        return "-"
    growth = report.rss_peak_kib - report.rss_before_kib
    limit = report.stalled * report.slow_consumer_bytes // 1024
    return (
        f"{growth:,} KiB vs {report.stalled:,} x slow_consumer_bytes = {limit:,} KiB "
        f"({growth / report.stalled:,.0f} KiB per stalled member)"
    )


def fanout_notes(report: FanoutReport) -> list[str]:
    notes = [
        "fan-out: microseconds from a broadcast call to the write of its last member "
        "(server.pusher.fanout_us, the window only)"
    ]
    if report.server_cpu_pct is not None and report.server_cpu_pct >= 90:
        notes.append("[yellow]the server used a whole core: its event loop was the limit[/yellow]")
    if report.procs and report.receiver_cpu_pct / report.procs >= 90:
        notes.append(
            "[yellow]the receivers used a whole core each: they may have been the limit "
            "(add --procs, or a machine)[/yellow]"
        )
    if report.stalled and report.stalled_cut < report.stalled:
        notes.append(
            f"[yellow]{report.stalled - report.stalled_cut} stalled members were not cut off: "
            "the pushes they missed did not fill their send buffer past slow_consumer_bytes "
            f"({report.slow_consumer_bytes:,}) in the run (a longer run, a larger --size, or "
            "--set slow_consumer_bytes=... reaches it sooner)[/yellow]"
        )
    return notes
