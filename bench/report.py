"""Terminal tables for bench results (rich). The JSON from `--json` carries the same data."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from bench.diff import TargetDiff
from bench.results import Comparison, EchoRun, IdleReport, RestoreReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def load_shape(run: EchoRun) -> str:
    """How the load was made: "50 x 8" (closed loop: conns x depth), "50 @ 500/s" (open
    loop: conns at a total rate), "50 conns" (scenario, login)."""
    if run.scenario is not None or run.mode == "login":
        return f"{run.conns} conns"
    if run.mode == "open":
        return f"{run.conns} @ {run.rate or 0:,.0f}/s"
    return f"{run.conns} x {run.depth}"


def echo_table(runs: list[EchoRun], title: str, *, noun: str = "replies") -> Table:
    """The runs' numbers; `noun` names what was counted ("logins" for bench login)."""
    table = Table(title=title, title_justify="left")
    table.add_column("target")
    table.add_column("load", justify="right")
    table.add_column(noun, justify="right")
    table.add_column(f"{noun}/s", justify="right")
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
        replies = f"{run.replies:,}"
        if run.requests is not None and run.replies < run.requests:
            replies = f"[red]{replies} of {run.requests:,}[/red]"
        table.add_row(
            run.target,
            load_shape(run),
            replies,
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


def run_notes(run: EchoRun) -> list[str]:
    """Lines to print under a run's table: the window, and for open loop the rate held
    and how late the generator was."""
    notes = []
    if run.requests is not None:
        notes.append(
            f"{run.replies:,} of {run.requests:,} requests in {run.elapsed_s:.2f} s "
            f"(after {run.warmup_s:g} s warm-up)"
        )
    if run.mode == "open" and run.rate:
        held = run.replies_per_s / run.rate
        style = "" if 0.95 <= held <= 1.05 else "yellow"
        line = (
            f"open loop: asked {run.rate:,.0f} req/s, got {run.replies_per_s:,.1f} replies/s "
            f"({100 * held:.1f}%)"
        )
        if run.send_lag_p50_us is not None:
            line += (
                f"; sends late by p50 {run.send_lag_p50_us:,} µs, p99 "
                f"{run.send_lag_p99_us or 0:,} µs, max {run.send_lag_max_us or 0:,} µs "
                "(included in latency)"
            )
        notes.append(f"[{style}]{line}[/{style}]" if style else line)
    return notes


def login_notes(run: EchoRun) -> list[str]:
    """What a login run measured: the store, and whether scrypt dominated."""
    n = run.scrypt_n or 0
    cost = (
        "the production cost: logins/s is mostly scrypt's"
        if n >= 1 << 14
        else "a cheap hash: this measures the session machinery, not scrypt"
    )
    notes = [f"store {run.store}, password hashes at scrypt n={n:,} ({cost})"]
    if run.store_cpu_pct is not None:
        notes.append(
            f"redis-server CPU {run.store_cpu_pct:.0f}% in the window (not in other CPU; "
            "Redis runs one command at a time, so 100% is its ceiling)"
        )
    return notes


def restore_table(report: RestoreReport) -> Table:
    table = Table(
        title=f"restart with {report.sessions:,} sessions in a memory-store snapshot",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row(
        "snapshot", f"{report.snapshot_bytes / 1e6:,.1f} MB, {report.snapshot_keys:,} keys"
    )
    table.add_row("sessions made / written in", f"{report.build_s:.1f} s / {report.write_s:.1f} s")
    met = report.start_median_s <= report.target_s
    verdict = "[green]within[/green]" if met else "[red]over[/red]"
    table.add_row(
        "start to listening, restoring",
        f"{report.start_median_s:.2f} s median ({verdict} {report.target_s:g} s); "
        + " ".join(f"{s:.2f}" for s in report.start_s),
    )
    table.add_row(
        "start to listening, no snapshot",
        f"{report.empty_start_median_s:.2f} s median; "
        + " ".join(f"{s:.2f}" for s in report.empty_start_s),
    )
    table.add_row(
        "restore's share (difference)",
        f"{report.start_median_s - report.empty_start_median_s:.2f} s",
    )
    restored = "-" if report.restored_keys is None else f"{report.restored_keys:,}"
    expired = "-" if report.expired_keys is None else f"{report.expired_keys:,}"
    if report.restored_keys != report.snapshot_keys:
        restored = f"[red]{restored}[/red]"
    table.add_row("keys restored / expired (server log)", f"{restored} / {expired}")
    table.add_row(
        "server RSS restored / empty",
        f"{_int(report.rss_kib)} KiB / {_int(report.empty_rss_kib)} KiB",
    )
    resumed = f"{report.resumed:,} / {report.resume_sample:,}"
    if report.resumed != report.resume_sample:
        resumed = f"[red]{resumed}[/red]"
    table.add_row("sampled sessions resumed", resumed)
    table.add_row(
        "made-up token refused",
        "yes" if report.bogus_refused else "[red]no[/red]",
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


def _num(value: float, name: str) -> str:
    return f"{value:,.1f}" if name == "replies/s" and value < 100 else f"{value:,.0f}"


def diff_table(diff: TargetDiff) -> Table:
    """One table per target: A, B, B/A and the change in %, green where B is better."""
    runs = ""
    if diff.runs_a > 1 or diff.runs_b > 1:
        runs = f" (median of {diff.runs_a} / {diff.runs_b} runs)"
    table = Table(title=f"{diff.label}{runs}", title_justify="left")
    table.add_column("")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B / A", justify="right")
    table.add_column("change", justify="right")
    for metric in diff.metrics:
        ratio, change = metric.ratio, metric.change_pct
        style = {True: "green", False: "red", None: ""}[metric.better]
        if metric.higher_is_better is None:
            style = "dim"
        if change is not None and abs(change) < 1.0:
            style = ""
        if ratio is None:
            ratio_text = "-" if metric.b == 0 else "new"
            change_text = ratio_text
        else:
            ratio_text = f"{ratio:.3f}"
            change_text = f"{change:+.1f}%"
        table.add_row(
            metric.name,
            _num(metric.a, metric.name),
            _num(metric.b, metric.name),
            Text(ratio_text, style=style),
            Text(change_text, style=style),
        )
    return table
