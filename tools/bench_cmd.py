"""`tickwire bench`: load tests against a running or freshly started server.

    tickwire bench echo --conns 50 --depth 8 --duration 5
    tickwire bench echo --conns 50 --depth 8 --compare-baseline --rounds 3 --json out.json
    tickwire bench idle --conns 15000

Exit status: 0 when the run was clean, 1 when it ran but saw errors (bad replies, connect
errors, unanswered pings), 2 when it could not run at all. A benchmark that quietly
reports numbers from a broken server is worse than none.

See docs/bench.md for what each number means.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from rich.console import Console

from bench.echo import EchoParams
from bench.idle import IdleParams
from bench.proc import ServerStartError
from bench.results import EchoReport, IdleReport
from bench.runner import EchoOptions, IdleOptions, ServerOptions, bench_echo, bench_idle
from bench.workers import BenchError

#: Runs where other processes used more CPU than this (% of one core) get a warning:
#: their numbers measure the neighbours as much as the server.
BUSY_MACHINE_PCT = 25.0

_Options = TypeVar("_Options", EchoOptions, IdleOptions)
_Report = TypeVar("_Report", EchoReport, IdleReport)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _add_server_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("server under test")
    where.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    where.add_argument(
        "--port", type=int, help="bench a server already listening here (else --spawn)"
    )
    where.add_argument(
        "--spawn",
        action="store_true",
        help="start the server as a subprocess on an ephemeral port (the default without --port)",
    )
    where.add_argument(
        "--server-pid",
        type=int,
        help="pid of the server at --port, to read its CPU time and memory from /proc",
    )
    where.add_argument(
        "--server-cmd",
        help="command that starts the server under test instead of `tickwire serve` "
        "(must print 'listening on HOST:PORT' to stderr)",
    )
    # Lets the bench run before `tickwire serve` exists, and lets tests bench the baseline.
    where.add_argument(
        "--target", choices=["tickwire", "baseline"], default="tickwire", help=argparse.SUPPRESS
    )
    where.add_argument(
        "--cpu-pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pin the spawned server to the first CPU and the load generators to the others; "
        "off by default, see docs/bench.md 'CPU placement'",
    )
    where.add_argument(
        "--connect-concurrency",
        type=_positive_int,
        default=100,
        help="TCP handshakes in flight at once, over all processes (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="load-test a tickwire server")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    echo = kinds.add_parser(
        "echo",
        help="closed-loop EchoRequest throughput and latency",
        description="Closed-loop echo load: every connection keeps --depth requests in flight.",
    )
    echo.add_argument("--conns", type=_positive_int, default=50, help="default: %(default)s")
    echo.add_argument(
        "--depth", type=_positive_int, default=1, help="requests in flight per connection"
    )
    echo.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds (default: %(default)s)"
    )
    echo.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=1.0,
        help="seconds of load before measuring (default: %(default)s)",
    )
    echo.add_argument(
        "--procs",
        type=_positive_int,
        default=2,
        help="load-generator processes (default: %(default)s)",
    )
    echo.add_argument(
        "--size",
        type=_non_negative_int,
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
        type=_positive_int,
        help="runs per server (default: 3 with --compare-baseline, else 1)",
    )
    _add_server_args(echo)
    echo.set_defaults(func=run_echo_cmd)

    idle = kinds.add_parser(
        "idle",
        help="memory per idle connection, then one Ping on each",
        description="Open many idle connections, read the server's RSS, ping every one.",
    )
    idle.add_argument("--conns", type=_positive_int, default=15000, help="default: %(default)s")
    idle.add_argument(
        "--procs",
        type=_positive_int,
        default=2,
        help="client processes holding the connections (default: %(default)s)",
    )
    idle.add_argument(
        "--settle",
        type=_non_negative_float,
        default=2.0,
        help="seconds between the last connect and the RSS reading (default: %(default)s)",
    )
    idle.add_argument(
        "--ping-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for every Pong (default: %(default)s)",
    )
    _add_server_args(idle)
    idle.set_defaults(func=run_idle_cmd)


def _check_server_args(args: argparse.Namespace) -> str | None:
    if args.spawn and args.port is not None:
        return "--spawn and --port exclude each other"
    if args.server_pid is not None and args.port is None:
        return "--server-pid describes the server at --port; give --port too"
    if args.server_cmd is not None and args.port is not None:
        return "--server-cmd starts a server; it makes no sense with --port"
    return None


def _write_json(path: str, report: EchoReport | IdleReport) -> None:
    data = msgspec.json.format(msgspec.json.encode(report), indent=2)
    if path == "-":
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data + b"\n")


def _console(*, stderr: bool = False) -> Console:
    """A console that keeps the tables whole when output goes to a file or a pipe.

    Rich assumes 80 columns off a terminal, which folds every column of the echo table.
    """
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=132)
    return console


def _logger(console: Console) -> Callable[[str], None]:
    def log(message: str) -> None:
        console.print(f"[dim]{message}[/dim]", highlight=False)

    return log


def _refuse(err: Console, kind: str, problem: str) -> int:
    err.print(f"[red]tickwire bench {kind}: {problem}[/red]")
    return 2


def _server_options(args: argparse.Namespace) -> ServerOptions:
    """The server-under-test options (`_add_server_args`) that every bench shares."""
    return ServerOptions(
        host=args.host,
        port=args.port,
        server_pid=args.server_pid,
        target=args.target,
        server_cmd=shlex.split(args.server_cmd) if args.server_cmd else None,
        cpu_pin=args.cpu_pin,
    )


def _run_bench(
    kind: str,
    bench: Callable[[_Options, Console, Callable[[str], None]], _Report],
    options: _Options,
    args: argparse.Namespace,
    err: Console,
) -> _Report | None:
    """Run `bench` with its tables on stdout (stderr when --json writes to stdout) and its
    progress on `err`, then write the report to --json.

    None when the bench could not run; it has said why on `err` and the exit status is 2.
    """
    out = _console(stderr=args.json == "-")
    try:
        report = bench(options, out, _logger(err))
    except (BenchError, ServerStartError) as exc:
        err.print(f"[red]tickwire bench {kind}: {exc}[/red]", highlight=False)
        return None
    if args.json:
        _write_json(args.json, report)
    return report


def run_echo_cmd(args: argparse.Namespace) -> int:
    err = _console(stderr=True)
    problem = _check_server_args(args)
    if problem is None and args.duration <= 0:
        problem = "--duration must be positive"
    if problem is None and args.compare_baseline and args.port is not None:
        problem = "--compare-baseline starts both servers itself; drop --port"
    if problem:
        return _refuse(err, "echo", problem)
    rounds = args.rounds or (3 if args.compare_baseline else 1)
    options = EchoOptions(
        params=EchoParams(
            conns=args.conns,
            depth=args.depth,
            duration=args.duration,
            warmup=args.warmup,
            procs=args.procs,
            size=args.size,
            connect_concurrency=args.connect_concurrency,
        ),
        server=_server_options(args),
        compare_baseline=args.compare_baseline,
        rounds=rounds,
    )
    report = _run_bench("echo", bench_echo, options, args, err)
    if report is None:
        return 2
    for run in report.runs:
        if run.other_cpu_pct is not None and run.other_cpu_pct > BUSY_MACHINE_PCT:
            err.print(
                f"[yellow]{run.target} round {run.round}: other processes used "
                f"{run.other_cpu_pct:.0f}% CPU during the run; its numbers are not those "
                "of a quiet machine[/yellow]",
                highlight=False,
            )
    failed = [r for r in report.runs if r.errors or r.connect_errors or not r.replies]
    for run in failed:
        err.print(
            f"[red]{run.target} round {run.round}: {run.errors} errors, "
            f"{run.connect_errors} connect errors, {run.replies} replies[/red]",
            highlight=False,
        )
        for sample in run.error_samples:
            err.print(f"  {sample}", highlight=False)
    return 1 if failed else 0


def run_idle_cmd(args: argparse.Namespace) -> int:
    err = _console(stderr=True)
    problem = _check_server_args(args)
    if problem:
        return _refuse(err, "idle", problem)
    options = IdleOptions(
        params=IdleParams(
            conns=args.conns,
            procs=args.procs,
            settle=args.settle,
            ping_timeout=args.ping_timeout,
            connect_concurrency=args.connect_concurrency,
        ),
        server=_server_options(args),
    )
    report = _run_bench("idle", bench_idle, options, args, err)
    if report is None:
        return 2
    clean = report.connect_errors == 0 and report.answered == report.opened
    if not clean:
        for sample in report.error_samples:
            err.print(f"  {sample}", highlight=False)
    return 0 if clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.bench_cmd ...` == `tickwire bench ...`, without the other commands.

    Lets the bench run (and be tested) whatever state the rest of the CLI is in.
    """
    parser = argparse.ArgumentParser(prog="tickwire")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
