"""`tickwire bench compare A.json B.json`: what changed between two echo or scenario
results (bench/diff.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    diff = kinds.add_parser(
        "compare",
        help="the differences between two --json results",
        description="Compare two `bench echo`/`bench scenario` JSON results: replies/s, "
        "latency percentiles and errors, as B/A and % change.",
    )
    diff.add_argument("a", metavar="A.json")
    diff.add_argument("b", metavar="B.json")
    diff.add_argument(
        "--plot", metavar="FILE.png", help="overlay both results' curves (needs tickwire[plot])"
    )
    diff.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.diff import NotABenchResult, diff_reports, load_report
    from bench.plot import run_label
    from bench.report import diff_table
    from bench.workers import BenchError

    err = common.console(stderr=True)
    out = common.console()
    problem = common.check_plot(args)
    if problem:
        return common.refuse(err, "compare", problem)
    try:
        a, b = load_report(args.a), load_report(args.b)
        diffs = diff_reports(a, b)
    except NotABenchResult as exc:
        return common.refuse(err, "compare", str(exc))
    except BenchError as exc:
        return common.refuse(err, "compare", f"{args.a} and {args.b}: {exc}")
    out.print(f"A = {escape(args.a)}\nB = {escape(args.b)}", highlight=False)
    for diff in diffs:
        out.print(diff_table(diff))
        for name, other in (("A", diff.other_cpu_a), ("B", diff.other_cpu_b)):
            if other is not None and other > common.BUSY_MACHINE_PCT:
                out.print(
                    f"[yellow]{name}: other processes used {other:.0f}% CPU during its run; "
                    "a busy machine's numbers do not compare with a quiet one's[/yellow]",
                    highlight=False,
                )
        for difference in diff.shape_differences:
            out.print(
                f"[yellow]load differs, {escape(difference)}: the numbers are not like for like"
                "[/yellow]",
                highlight=False,
            )
    if args.plot:
        runs = [(run_label(r, "A: "), r) for r in a.runs] + [
            (run_label(r, "B: "), r) for r in b.runs
        ]
        if not common.write_plot(args.plot, runs, f"A = {args.a}, B = {args.b}", err):
            return 2
    return 0
