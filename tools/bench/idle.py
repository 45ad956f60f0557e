"""`tickwire bench idle`: memory per quiet connection, then one Ping on each
(bench/idle.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    idle = kinds.add_parser(
        "idle",
        help="memory per idle connection, then one Ping on each",
        description="Open many idle connections, read the server's RSS, ping every one.",
    )
    idle.add_argument(
        "--conns", type=common.positive_int, default=15000, help="default: %(default)s"
    )
    idle.add_argument(
        "--procs",
        type=common.positive_int,
        default=2,
        help="client processes holding the connections (default: %(default)s)",
    )
    idle.add_argument(
        "--settle",
        type=common.non_negative_float,
        default=2.0,
        help="seconds between the last connect and the RSS reading (default: %(default)s)",
    )
    idle.add_argument(
        "--ping-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for every Pong (default: %(default)s)",
    )
    common.add_server_args(idle)
    idle.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.idle import IdleParams
    from bench.runner import IdleOptions, bench_idle

    err = common.console(stderr=True)
    problem = common.check_server_args(args)
    if problem:
        return common.refuse(err, "idle", problem)
    options = IdleOptions(
        params=IdleParams(
            conns=args.conns,
            procs=args.procs,
            settle=args.settle,
            ping_timeout=args.ping_timeout,
            connect_concurrency=args.connect_concurrency,
        ),
        server=common.server_options(args),
    )
    report = common.run_bench("idle", bench_idle, options, args, err)
    if report is None:
        return 2
    clean = report.connect_errors == 0 and report.answered == report.opened
    if report.dropped:
        err.print(
            f"[red]the server closed {report.dropped} of the {report.opened} connections "
            "while they were quiet: they were not measured. A server whose auth_timeout or "
            "idle_timeout is shorter than the run closes quiet connections (the bench starts "
            "its own with --set auth_timeout=0 --set idle_timeout=0).[/red]",
            highlight=False,
        )
    if not clean:
        for sample in report.error_samples:
            err.print(f"  {escape(sample)}", highlight=False)
    return 0 if clean else 1
