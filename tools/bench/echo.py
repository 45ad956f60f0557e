"""`tickwire bench echo`: EchoRequest/EchoReply load, closed or open loop, optionally
interleaved with the baseline server (bench/echo.py, bench/runner.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    echo = kinds.add_parser(
        "echo",
        help="EchoRequest throughput and latency, closed or open loop",
        description="Echo load. Closed loop (default): every connection keeps --depth "
        "requests in flight. Open loop (--rate): requests go out on a fixed schedule, "
        "latency measured from each request's scheduled time.",
    )
    common.add_load_args(echo, conns=50)
    mode = echo.add_mutually_exclusive_group()
    mode.add_argument(
        "--depth",
        type=common.positive_int,
        help="closed loop: requests in flight per connection (default: 1)",
    )
    mode.add_argument(
        "--rate",
        type=common.positive_float,
        metavar="R",
        help="open loop: R requests/s in total, over all processes and connections",
    )
    echo.add_argument(
        "--size",
        type=common.non_negative_int,
        default=64,
        help="bytes in EchoRequest.data (default: %(default)s)",
    )
    echo.add_argument(
        "--compare-baseline",
        action="store_true",
        help="interleave runs against bench.baseline and report tickwire/baseline ratios",
    )
    echo.add_argument(
        "--rounds",
        type=common.positive_int,
        help="runs per server (default: 3 with --compare-baseline, else 1)",
    )
    common.add_server_args(echo)
    common.add_tls_args(echo)
    echo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.echo import EchoParams
    from bench.runner import EchoOptions, bench_echo

    err = common.console(stderr=True)
    problem = (
        common.check_server_args(args)
        or common.tls_problem(args)
        or common.check_plot(args)
        or common.window_problem(args)
    )
    if problem is None and args.compare_baseline and args.port is not None:
        problem = "--compare-baseline starts both servers itself; drop --port"
    if problem is None and args.compare_baseline and args.tls:
        problem = "--compare-baseline compares plaintext servers (the baseline has no TLS)"
    if problem:
        return common.refuse(err, "echo", problem)
    rounds = args.rounds or (3 if args.compare_baseline else 1)
    options = EchoOptions(
        params=EchoParams(
            **common.run_fields(args),
            depth=args.depth or 1,
            rate=args.rate,
            size=args.size,
            tls=common.tls_options(args),
        ),
        server=common.server_options(args),
        compare_baseline=args.compare_baseline,
        rounds=rounds,
    )
    return common.finish_load(
        "echo", common.run_bench("echo", bench_echo, options, args, err), args, err
    )
