"""`tickwire bench fanout`: a room broadcast to N members, counted by receivers in other
processes (bench/fanout.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tools.bench import common

if TYPE_CHECKING:
    from bench.results import FanoutComparison, FanoutReport


def register(kinds: Any) -> None:
    fanout = kinds.add_parser(
        "fanout",
        help="room broadcast to N members: deliveries/s read by other processes, fan-out "
        "p50/p99, stalled members (spawns tickwire serve with the bench app)",
        description="Every member logs in as its own user and joins one room; a driver "
        "connection makes the server broadcast to it in a closed loop; receivers in other "
        "processes count the pushes. See docs/bench.md.",
    )
    fanout.add_argument(
        "--members", type=common.positive_int, default=10_000, help="default: %(default)s"
    )
    fanout.add_argument(
        "--duration",
        type=common.positive_float,
        default=common.DEFAULT_DURATION_S,
        help="measured seconds (default: %(default)s)",
    )
    fanout.add_argument(
        "--warmup",
        type=common.non_negative_float,
        default=1.0,
        help="seconds of broadcasting before measuring (default: %(default)s)",
    )
    fanout.add_argument(
        "--burst",
        type=common.positive_int,
        default=1,
        metavar="K",
        help="broadcasts per Trigger, made in one handler call: the server writes them to "
        "a member in one write (default: %(default)s)",
    )
    fanout.add_argument(
        "--size",
        type=common.non_negative_int,
        default=64,
        help="bytes of data in each pushed message (default: %(default)s)",
    )
    fanout.add_argument(
        "--ack-every",
        type=common.non_negative_int,
        default=256,
        metavar="N",
        help="each member sends a PushAck every N pushes; 0: never (default: %(default)s)",
    )
    fanout.add_argument(
        "--stalled",
        type=common.non_negative_int,
        default=0,
        metavar="S",
        help="members that stop reading for the whole run (default: %(default)s)",
    )
    fanout.add_argument(
        "--procs",
        type=common.positive_int,
        default=2,
        help="receiver processes holding the members (default: %(default)s)",
    )
    fanout.add_argument(
        "--nodes",
        type=common.positive_int,
        default=1,
        metavar="N",
        help="tickwire serve processes to spread the members over (member i on node i %% N; "
        "the driver triggers node 0); N > 1: nodes of a cluster (default: %(default)s)",
    )
    fanout.add_argument(
        "--cluster",
        metavar="URL",
        help="the cluster's Redis (redis://HOST:PORT/DB), read for its cost per broadcast; "
        "default with --nodes > 1: a private redis-server from PATH, stopped after",
    )
    fanout.add_argument(
        "--compare-nodes",
        type=_layouts,
        metavar="N,M",
        help="run the same workload on N nodes, then on M (e.g. 1,3), in one invocation, "
        "and print them side by side with the ratio of deliveries/s",
    )
    fanout.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    fanout.add_argument(
        "--connect-concurrency",
        type=common.positive_int,
        default=100,
        help="handshakes and logins in flight at once, over all processes (default: %(default)s)",
    )
    common.add_set_arg(fanout, "slow_consumer_bytes=1048576")
    common.add_json_arg(fanout)
    fanout.set_defaults(func=run)


def _layouts(text: str) -> list[int]:
    try:
        layouts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of node counts: {text!r}") from None
    if len(layouts) < 2 or min(layouts) < 1:
        raise argparse.ArgumentTypeError(
            f"give two or more node counts of at least 1, e.g. 1,3 (not {text!r})"
        )
    return layouts


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.fanout import FanoutOptions, FanoutParams, bench_fanout, bench_fanout_compare
    from bench.proc import ServerStartError
    from bench.workers import BenchError

    err = common.console(stderr=True)
    problem = common.set_problem(args)
    if problem:
        return common.refuse(err, "fanout", problem)
    if args.stalled >= args.members:
        return common.refuse(err, "fanout", "--stalled must leave at least one member reading")
    if args.procs > args.members:
        return common.refuse(err, "fanout", "--procs must not exceed --members")
    layouts = args.compare_nodes or [args.nodes]
    if args.compare_nodes and args.nodes != 1:
        return common.refuse(err, "fanout", "--compare-nodes and --nodes exclude each other")
    if max(layouts) > args.members:
        return common.refuse(err, "fanout", "more nodes than --members leaves a node empty")
    options = FanoutOptions(
        params=FanoutParams(
            conns=args.members,
            procs=args.procs,
            connect_concurrency=args.connect_concurrency,
            users=[],
            duration=args.duration,
            warmup=args.warmup,
            burst=args.burst,
            size=args.size,
            ack_every=args.ack_every,
            stalled=args.stalled,
        ),
        host=args.host,
        settings=list(args.set),
        nodes=args.nodes,
        cluster_url=args.cluster,
    )
    out = common.console(stderr=args.json == "-")
    try:
        if args.compare_nodes:
            comparison = bench_fanout_compare(options, layouts, out, common.logger(err))
            result: FanoutReport | FanoutComparison = comparison
            reports = comparison.runs
        else:
            result = bench_fanout(options, out, common.logger(err))
            reports = [result]
    except (BenchError, ServerStartError) as exc:
        err.print(f"[red]tickwire bench fanout: {escape(str(exc))}[/red]", highlight=False)
        return 2
    if args.json:
        common.write_json(args.json, result)
    clean = True
    for report in reports:
        if report.other_cpu_pct is not None and report.other_cpu_pct > common.BUSY_MACHINE_PCT:
            err.print(
                f"[yellow]other processes used {report.other_cpu_pct:.0f}% CPU during the "
                f"run on {report.nodes} node(s); its numbers are not those of a quiet "
                "machine[/yellow]",
                highlight=False,
            )
        if not report.clean:
            clean = False
            for sample in report.error_samples:
                err.print(f"  {escape(sample)}", highlight=False)
    return 0 if clean else 1
