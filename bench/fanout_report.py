"""The terminal table and notes of `tickwire bench fanout` (the JSON carries the same)."""

from __future__ import annotations

from rich.table import Table

from bench.results import TARGET_DELIVERIES_PER_S, FanoutComparison, FanoutReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value:,} KiB"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _layout(report: FanoutReport) -> str:
    if report.nodes == 1:
        return "1 node, cluster" if report.cluster else "1 node"
    return f"{report.nodes} nodes"


def fanout_table(report: FanoutReport) -> Table:
    reading = report.joined - report.stalled
    table = Table(
        title=f"room broadcast to {report.joined:,} members, {report.size}-byte data, "
        f"burst {report.burst}, {_layout(report)}",
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
    if report.nodes > 1:
        table.add_row(
            "members per node",
            " / ".join(f"{n:,}" for n in report.node_members),
        )
    table.add_row(
        "server fan-out p50 / p90 / p99 / max µs" + (" (node 0)" if report.nodes > 1 else ""),
        f"{report.fanout_p50_us:,} / {report.fanout_p90_us:,} / {report.fanout_p99_us:,} / "
        f"{report.fanout_max_us:,} ({report.fanout_count:,} broadcasts)",
    )
    table.add_row(
        "CPU: server / receivers / driver / other",
        f"{_pct(report.server_cpu_pct)} / {_pct(report.receiver_cpu_pct)} ({report.procs}p) / "
        f"{_pct(report.driver_cpu_pct)} / {_pct(report.other_cpu_pct)} "
        f"({report.machine_cpus} CPUs)",
    )
    if report.nodes > 1:
        table.add_row("CPU per node", " / ".join(_pct(p) for p in report.node_cpu_pct))
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
    if report.cluster:
        table.add_row(
            "Redis per broadcast: commands / PUBLISHes / bytes out",
            f"{_num(report.redis_commands_per_broadcast)} / "
            f"{_num(report.redis_publishes_per_broadcast)} / "
            f"{_num(report.redis_out_bytes_per_broadcast, 0)} "
            f"({report.redis_broadcasts:,} broadcasts)",
        )
        table.add_row("Redis CPU", _pct(report.redis_cpu_pct))
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
    if report.nodes > 1:
        notes.append(
            f"{report.nodes} nodes, {report.procs} receiver processes, the driver and Redis "
            f"shared {report.machine_cpus} CPUs; fan-out and broadcasts are node 0's (it "
            "receives the Triggers), CPU and RSS are all nodes' together"
        )
    if report.cluster:
        notes.append(
            "Redis: from its INFO, from before the first Trigger to every member having "
            "read the last broadcast (heartbeats included, the bench's own INFOs not); "
            "its CPU over the window"
        )
    busy = [p for p in report.node_cpu_pct if p is not None] or (
        [report.server_cpu_pct] if report.server_cpu_pct is not None else []
    )
    if any(p >= 90 for p in busy):
        who = "a node" if report.nodes > 1 else "the server"
        notes.append(f"[yellow]{who} used a whole core: its event loop was the limit[/yellow]")
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


def compare_table(comparison: FanoutComparison) -> Table:
    """The runs of `--compare-nodes` side by side."""
    table = Table(
        title="the same broadcasts on each number of nodes (one invocation)",
        title_justify="left",
    )
    table.add_column("nodes", justify="right")
    for heading in (
        "deliveries/s",
        "vs first",
        "broadcasts/s",
        "fan-out p50 / p99 µs (node 0)",
        "CPU nodes / receivers",
        "Redis cmds / PUBLISHes / bytes per broadcast",
        "Redis CPU",
        "loss",
    ):
        table.add_column(heading, justify="right")
    for report, ratio in zip(comparison.runs, comparison.ratios, strict=True):
        redis = "-"
        if report.cluster:
            redis = (
                f"{_num(report.redis_commands_per_broadcast)} / "
                f"{_num(report.redis_publishes_per_broadcast)} / "
                f"{_num(report.redis_out_bytes_per_broadcast, 0)}"
            )
        table.add_row(
            _layout(report),
            f"{report.deliveries_per_s:,.0f}",
            f"{ratio:.2f}",
            f"{report.broadcasts_window / report.elapsed_s:,.1f}",
            f"{report.fanout_p50_us:,} / {report.fanout_p99_us:,}",
            f"{_pct(report.server_cpu_pct)} / {_pct(report.receiver_cpu_pct)}",
            redis,
            _pct(report.redis_cpu_pct) if report.cluster else "-",
            "none" if report.lossless else f"[red]{report.behind:,} members behind[/red]",
        )
    return table
