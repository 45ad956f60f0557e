"""`tickwire bench`: load tests against a running or freshly started server.

    tickwire bench echo --conns 50 --depth 8 --duration 5
    tickwire bench echo --conns 50 --rate 20000 --duration 10 --plot echo.png
    tickwire bench echo --conns 50 --depth 8 --compare-baseline --rounds 3 --json out.json
    tickwire bench scenario bench.scenarios:ping_echo --conns 20 --requests 50000
    tickwire bench compare before.json after.json
    tickwire bench idle --conns 15000
    tickwire bench login --conns 50 --duration 5 [--scrypt-n 16] [--store redis]
    tickwire bench restore --sessions 100000
    tickwire bench fanout --members 10000 --duration 5 [--burst 8] [--stalled 20]

Exit status: 0 when the run was clean, 1 when it ran but saw errors (bad replies, connect
errors, unanswered pings, fewer replies than --requests), 2 when it could not run at
all. A benchmark that quietly reports numbers from a broken server is worse than none.

See docs/bench.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

# The bench modules (and through them server.*, prometheus_client, msgspec) and rich
# are imported by the functions that use them: `tickwire --help` and every other
# command import this module to register `bench`, and should not pay for a benchmark.
if TYPE_CHECKING:
    from rich.console import Console

    from bench.progress import ProgressSink
    from bench.results import EchoReport, EchoRun, IdleReport, RestoreReport
    from bench.runner import (
        EchoOptions,
        IdleOptions,
        LoginOptions,
        RestoreOptions,
        ScenarioOptions,
        ServerOptions,
    )

#: Runs where other processes used more CPU than this (% of one core) get a warning:
#: their numbers measure the neighbours as much as the server.
BUSY_MACHINE_PCT = 25.0

_Options = TypeVar(
    "_Options", bound="EchoOptions | IdleOptions | ScenarioOptions | LoginOptions | RestoreOptions"
)
_Report = TypeVar("_Report", bound="EchoReport | IdleReport | RestoreReport")

#: --duration when neither it nor --requests is given.
DEFAULT_DURATION_S = 5.0


_N = TypeVar("_N", int, float)


def _checked(
    parse: Callable[[str], _N], ok: Callable[[_N], bool], rule: str
) -> Callable[[str], _N]:
    """An argparse `type` that parses a number and refuses it, saying `rule`, unless ok."""

    def convert(text: str) -> _N:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    convert.__name__ = parse.__name__  # argparse's "invalid int value: 'x'"
    return convert


_positive_int = _checked(int, lambda v: v >= 1, "must be at least 1")
_non_negative_int = _checked(int, lambda v: v >= 0, "must not be negative")
_non_negative_float = _checked(float, lambda v: v >= 0, "must not be negative")
_positive_float = _checked(float, lambda v: v > 0, "must be positive")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_load_args(parser: argparse.ArgumentParser, *, conns: int) -> None:
    """Options of every request/reply load (echo, scenario): its size, its window, and
    what it shows and writes."""
    parser.add_argument("--conns", type=_positive_int, default=conns, help="default: %(default)s")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration",
        type=_positive_float,
        help=f"measured seconds (default: {DEFAULT_DURATION_S:g})",
    )
    stop.add_argument(
        "--requests",
        type=_positive_int,
        metavar="N",
        help="stop after N replies in the measured window, over all processes",
    )
    parser.add_argument(
        "--time-limit",
        type=_positive_float,
        metavar="S",
        help="with --requests: give up after S measured seconds (default: 60)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=1.0,
        help="seconds of load before measuring (default: %(default)s)",
    )
    parser.add_argument(
        "--procs",
        type=_positive_int,
        default=2,
        help="load-generator processes (default: %(default)s)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="live display of the run on stderr (only when stderr is a terminal)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw latency by percentile and throughput over time (needs tickwire[plot])",
    )


def _add_json_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")


def _add_set_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, example: str) -> None:
    """`--set KEY=VALUE` for the spawned `tickwire serve`; `example` shows one."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"more config for the spawned tickwire serve, e.g. {example}",
    )


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
    _add_json_arg(parser)


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="load-test a tickwire server")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    echo = kinds.add_parser(
        "echo",
        help="EchoRequest throughput and latency, closed or open loop",
        description="Echo load. Closed loop (default): every connection keeps --depth "
        "requests in flight. Open loop (--rate): requests go out on a fixed schedule, "
        "latency measured from each request's scheduled time.",
    )
    _add_load_args(echo, conns=50)
    mode = echo.add_mutually_exclusive_group()
    mode.add_argument(
        "--depth",
        type=_positive_int,
        help="closed loop: requests in flight per connection (default: 1)",
    )
    mode.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="open loop: R requests/s in total, over all processes and connections",
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

    scenario = kinds.add_parser(
        "scenario",
        help="a load written as an async Python function using the client SDK",
        description="Call `async def FUNC(client, ctx)` in a loop on every connection "
        "(closed loop); each call is one measured iteration. See docs/bench.md.",
    )
    scenario.add_argument(
        "spec",
        metavar="MODULE:FUNC",
        help="e.g. bench.scenarios:ping_echo; MODULE may be a path to a .py file",
    )
    _add_load_args(scenario, conns=20)
    scenario.add_argument(
        "--arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the scenario as ctx.args[KEY] (repeatable)",
    )
    scenario.add_argument(
        "--seed", type=int, default=0, help="seeds ctx.rng of every connection (default: 0)"
    )
    scenario.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="MODULE",
        help="a generated _pb2 module of the application's messages, e.g. myapp.chat_pb2: "
        "every connection's client can send and receive them (repeatable; a scenario "
        "module's SCHEMA list adds its own)",
    )
    _add_server_args(scenario)
    scenario.set_defaults(func=run_scenario_cmd)

    login = kinds.add_parser(
        "login",
        help="logins per second and login latency (spawns tickwire serve with its own users)",
        description="Every connection logs in as its own user, again and again (closed "
        "loop); each login replaces the connection's previous session. The bench writes "
        "the users file and starts `tickwire serve` on it. See docs/bench.md.",
    )
    _add_load_args(login, conns=50)
    login.add_argument(
        "--store",
        choices=["memory", "redis"],
        default="memory",
        help="the server's session store (default: %(default)s)",
    )
    login.add_argument(
        "--redis-url",
        metavar="URL",
        help="with --store redis: the Redis to use (default: the server's, "
        "redis://127.0.0.1:6379/0); give the bench a db of its own, e.g. /15",
    )
    login.add_argument(
        "--scrypt-n",
        type=_checked(int, lambda v: v >= 2 and not v & (v - 1), "must be a power of 2, >= 2"),
        default=1 << 14,
        metavar="N",
        help="scrypt cost of the users' password hashes (default: %(default)s, the "
        "production cost; 16 measures the session machinery rather than scrypt)",
    )
    where = login.add_argument_group("server under test")
    where.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    where.add_argument(
        "--cpu-pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pin the server to the first CPU and the load generators to the others",
    )
    where.add_argument(
        "--connect-concurrency",
        type=_positive_int,
        default=100,
        help="TCP handshakes in flight at once, over all processes (default: %(default)s)",
    )
    _add_set_arg(where, "duplicate_login=allow")
    _add_json_arg(login)
    login.set_defaults(func=run_login_cmd)

    restore = kinds.add_parser(
        "restore",
        help="restart time with N sessions in a memory-store snapshot, and resumes",
        description="Make N sessions in a memory-store snapshot, start `tickwire serve` on "
        "it, time the start to 'listening' (and one without a snapshot), and resume a "
        "sample of the sessions over the wire with their tokens.",
    )
    restore.add_argument(
        "--sessions", type=_positive_int, default=100_000, help="default: %(default)s"
    )
    restore.add_argument(
        "--sample",
        type=_positive_int,
        default=200,
        help="sessions resumed over the wire per round (default: %(default)s)",
    )
    restore.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="starts with and without the snapshot (default: %(default)s)",
    )
    restore.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    _add_json_arg(restore)
    restore.set_defaults(func=run_restore_cmd)

    fanout = kinds.add_parser(
        "fanout",
        help="room broadcast to N members: deliveries/s read by other processes, fan-out "
        "p50/p99, stalled members (spawns tickwire serve with the bench app)",
        description="Every member logs in as its own user and joins one room; a driver "
        "connection makes the server broadcast to it in a closed loop; receivers in other "
        "processes count the pushes. See docs/bench.md.",
    )
    fanout.add_argument(
        "--members", type=_positive_int, default=10_000, help="default: %(default)s"
    )
    fanout.add_argument(
        "--duration",
        type=_positive_float,
        default=DEFAULT_DURATION_S,
        help="measured seconds (default: %(default)s)",
    )
    fanout.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=1.0,
        help="seconds of broadcasting before measuring (default: %(default)s)",
    )
    fanout.add_argument(
        "--burst",
        type=_positive_int,
        default=1,
        metavar="K",
        help="broadcasts per Trigger, made in one handler call: the server writes them to "
        "a member in one write (default: %(default)s)",
    )
    fanout.add_argument(
        "--size",
        type=_non_negative_int,
        default=64,
        help="bytes of data in each pushed message (default: %(default)s)",
    )
    fanout.add_argument(
        "--ack-every",
        type=_non_negative_int,
        default=256,
        metavar="N",
        help="each member sends a PushAck every N pushes; 0: never (default: %(default)s)",
    )
    fanout.add_argument(
        "--stalled",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="members that stop reading for the whole run (default: %(default)s)",
    )
    fanout.add_argument(
        "--procs",
        type=_positive_int,
        default=2,
        help="receiver processes holding the members (default: %(default)s)",
    )
    fanout.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    fanout.add_argument(
        "--connect-concurrency",
        type=_positive_int,
        default=100,
        help="handshakes and logins in flight at once, over all processes (default: %(default)s)",
    )
    _add_set_arg(fanout, "slow_consumer_bytes=1048576")
    _add_json_arg(fanout)
    fanout.set_defaults(func=run_fanout_cmd)

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
    diff.set_defaults(func=run_compare_cmd)


def _check_server_args(args: argparse.Namespace) -> str | None:
    if args.spawn and args.port is not None:
        return "--spawn and --port exclude each other"
    if args.server_pid is not None and args.port is None:
        return "--server-pid describes the server at --port; give --port too"
    if args.server_cmd is not None and args.port is not None:
        return "--server-cmd starts a server; it makes no sense with --port"
    return None


def _write_json(path: str, report: EchoReport | IdleReport | RestoreReport) -> None:
    import msgspec

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
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


def _logger(console: Console) -> Callable[[str], None]:
    from rich.markup import escape

    def log(message: str) -> None:
        console.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    return log


def _refuse(err: Console, kind: str, problem: str) -> int:
    from rich.markup import escape

    err.print(f"[red]tickwire bench {kind}: {escape(problem)}[/red]", highlight=False)
    return 2


def _server_options(args: argparse.Namespace) -> ServerOptions:
    """The server-under-test options (`_add_server_args`) that every bench shares."""
    from bench.runner import ServerOptions

    return ServerOptions(
        host=args.host,
        port=args.port,
        server_pid=args.server_pid,
        target=args.target,
        server_cmd=shlex.split(args.server_cmd) if args.server_cmd else None,
        cpu_pin=args.cpu_pin,
    )


def _progress(args: argparse.Namespace, err: Console) -> ProgressSink | None:
    """The live display, unless --no-progress or stderr is not a terminal (a log file or
    CI would fill up with redraws)."""
    if not getattr(args, "progress", False) or not err.is_terminal:
        return None
    from bench.progress import LiveProgress

    return LiveProgress(err)


def _run_bench(
    kind: str,
    bench: Callable[[_Options, Console, Callable[[str], None], ProgressSink | None], _Report],
    options: _Options,
    args: argparse.Namespace,
    err: Console,
) -> _Report | None:
    """Run `bench` with its tables on stdout (stderr when --json writes to stdout) and its
    progress on `err`, then write the report to --json.

    None when the bench could not run; it has said why on `err` and the exit status is 2.
    """
    from rich.markup import escape

    from bench.proc import ServerStartError
    from bench.workers import BenchError

    out = _console(stderr=args.json == "-")
    try:
        report = bench(options, out, _logger(err), _progress(args, err))
    except (BenchError, ServerStartError) as exc:
        err.print(f"[red]tickwire bench {kind}: {escape(str(exc))}[/red]", highlight=False)
        return None
    if args.json:
        _write_json(args.json, report)
    return report


def _check_plot(args: argparse.Namespace) -> str | None:
    """Refuse --plot before the run when matplotlib is missing, not after it."""
    if getattr(args, "plot", None):
        from bench.plot import require_matplotlib
        from bench.workers import BenchError

        try:
            require_matplotlib()
        except BenchError as exc:
            return str(exc)
    return None


def _write_plot(path: str, runs: list[tuple[str, EchoRun]], title: str, err: Console) -> bool:
    from rich.markup import escape

    from bench.plot import plot_runs
    from bench.workers import BenchError

    try:
        plot_runs(runs, path, title)
    except (OSError, ValueError, BenchError) as exc:
        err.print(
            f"[red]tickwire bench: could not write {escape(path)}: {escape(str(exc))}[/red]",
            highlight=False,
        )
        return False
    err.print(f"[dim]plot written to {escape(path)}[/dim]", highlight=False)
    return True


def _window(args: argparse.Namespace) -> tuple[float, int | None, float] | str:
    """(duration, requests, time limit) from the load arguments, or what is wrong."""
    if args.time_limit is not None and args.requests is None:
        return "--time-limit bounds a --requests run; with --duration the window is fixed"
    duration = args.duration if args.duration is not None else DEFAULT_DURATION_S
    return duration, args.requests, args.time_limit if args.time_limit is not None else 60.0


def _check_runs(runs: list[EchoRun], err: Console) -> bool:
    """Warn about busy machines, report failed runs; True when every run was clean."""
    from rich.markup import escape

    for run in runs:
        if run.other_cpu_pct is not None and run.other_cpu_pct > BUSY_MACHINE_PCT:
            err.print(
                f"[yellow]{run.target} round {run.round}: other processes used "
                f"{run.other_cpu_pct:.0f}% CPU during the run; its numbers are not those "
                "of a quiet machine[/yellow]",
                highlight=False,
            )
    failed = [
        r
        for r in runs
        if r.errors
        or r.connect_errors
        or not r.replies
        or (r.requests is not None and r.replies < r.requests)
    ]
    for run in failed:
        short = ""
        if run.requests is not None and run.replies < run.requests:
            short = f" (of {run.requests} asked for, within the time limit)"
        err.print(
            f"[red]{run.target} round {run.round}: {run.errors} errors, "
            f"{run.connect_errors} connect errors, {run.replies} replies{short}[/red]",
            highlight=False,
        )
        for sample in run.error_samples:
            err.print(f"  {escape(sample)}", highlight=False)
    return not failed


def _finish_load(
    kind: str, report: EchoReport | None, args: argparse.Namespace, err: Console
) -> int:
    if report is None:
        return 2
    clean = _check_runs(report.runs, err)
    if args.plot:
        from bench.plot import run_label

        runs = [(run_label(r), r) for r in report.runs]
        if not _write_plot(args.plot, runs, f"tickwire bench {kind}", err):
            return 2
    return 0 if clean else 1


def run_echo_cmd(args: argparse.Namespace) -> int:
    from bench.echo import EchoParams
    from bench.runner import EchoOptions, bench_echo

    err = _console(stderr=True)
    problem = _check_server_args(args) or _check_plot(args)
    window = _window(args)
    if problem is None and isinstance(window, str):
        problem = window
    if problem is None and args.compare_baseline and args.port is not None:
        problem = "--compare-baseline starts both servers itself; drop --port"
    if problem:
        return _refuse(err, "echo", problem)
    assert not isinstance(window, str)
    duration, requests, time_limit = window
    rounds = args.rounds or (3 if args.compare_baseline else 1)
    options = EchoOptions(
        params=EchoParams(
            conns=args.conns,
            depth=args.depth or 1,
            rate=args.rate,
            duration=duration,
            requests=requests,
            time_limit=time_limit,
            warmup=args.warmup,
            procs=args.procs,
            size=args.size,
            connect_concurrency=args.connect_concurrency,
        ),
        server=_server_options(args),
        compare_baseline=args.compare_baseline,
        rounds=rounds,
    )
    return _finish_load("echo", _run_bench("echo", bench_echo, options, args, err), args, err)


def run_scenario_cmd(args: argparse.Namespace) -> int:
    from bench.runner import ScenarioOptions, bench_scenario
    from bench.scenario import ScenarioParams, load_scenario
    from bench.workers import BenchError

    err = _console(stderr=True)
    problem = _check_server_args(args) or _check_plot(args)
    window = _window(args)
    if problem is None and isinstance(window, str):
        problem = window
    spec = args.spec
    module, sep, func = spec.rpartition(":")
    if sep and (module.endswith(".py") or os.sep in module):
        spec = f"{Path(module).resolve()}:{func}"
    if problem is None:
        try:
            load_scenario(spec, os.getcwd(), args.schema)
        except BenchError as exc:
            problem = str(exc)
    if problem:
        return _refuse(err, "scenario", problem)
    assert not isinstance(window, str)
    duration, requests, time_limit = window
    options = ScenarioOptions(
        params=ScenarioParams(
            conns=args.conns,
            procs=args.procs,
            connect_concurrency=args.connect_concurrency,
            duration=duration,
            requests=requests,
            time_limit=time_limit,
            warmup=args.warmup,
            scenario=spec,
            args=dict(args.arg),
            schema=list(args.schema),
            search_path=os.getcwd(),
            seed=args.seed,
        ),
        server=_server_options(args),
    )
    report = _run_bench("scenario", bench_scenario, options, args, err)
    return _finish_load("scenario", report, args, err)


def run_compare_cmd(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.diff import NotABenchResult, diff_reports, load_report
    from bench.plot import run_label
    from bench.report import diff_table
    from bench.workers import BenchError

    err = _console(stderr=True)
    out = _console()
    problem = _check_plot(args)
    if problem:
        return _refuse(err, "compare", problem)
    try:
        a, b = load_report(args.a), load_report(args.b)
        diffs = diff_reports(a, b)
    except NotABenchResult as exc:
        return _refuse(err, "compare", str(exc))
    except BenchError as exc:
        return _refuse(err, "compare", f"{args.a} and {args.b}: {exc}")
    out.print(f"A = {escape(args.a)}\nB = {escape(args.b)}", highlight=False)
    for diff in diffs:
        out.print(diff_table(diff))
        for name, other in (("A", diff.other_cpu_a), ("B", diff.other_cpu_b)):
            if other is not None and other > BUSY_MACHINE_PCT:
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
        if not _write_plot(args.plot, runs, f"A = {args.a}, B = {args.b}", err):
            return 2
    return 0


def run_idle_cmd(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.idle import IdleParams
    from bench.runner import IdleOptions, bench_idle

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


def run_login_cmd(args: argparse.Namespace) -> int:
    from bench.login import LoginParams
    from bench.runner import LoginOptions, ServerOptions

    err = _console(stderr=True)
    problem = _check_plot(args)
    window = _window(args)
    if problem is None and isinstance(window, str):
        problem = window
    if problem is None and args.redis_url is not None and args.store != "redis":
        problem = "--redis-url is for --store redis"
    if problem is None:
        bad = [s for s in args.set if not s.partition("=")[0] or "=" not in s]
        if bad:
            problem = f"--set takes KEY=VALUE, got {bad[0]!r}"
    if problem:
        return _refuse(err, "login", problem)
    assert not isinstance(window, str)
    duration, requests, time_limit = window
    options = LoginOptions(
        params=LoginParams(
            conns=args.conns,
            procs=args.procs,
            connect_concurrency=args.connect_concurrency,
            duration=duration,
            requests=requests,
            time_limit=time_limit,
            warmup=args.warmup,
            users=[],
        ),
        store=args.store,
        redis_url=args.redis_url,
        scrypt_n=args.scrypt_n,
        server=ServerOptions(host=args.host, cpu_pin=args.cpu_pin, settings=list(args.set)),
    )
    from bench.runner import bench_login

    return _finish_load("login", _run_bench("login", bench_login, options, args, err), args, err)


def run_restore_cmd(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.restore import RestoreParams
    from bench.runner import RestoreOptions, bench_restore

    err = _console(stderr=True)
    options = RestoreOptions(
        params=RestoreParams(sessions=args.sessions, sample=args.sample, rounds=args.rounds),
        host=args.host,
    )
    report = _run_bench("restore", bench_restore, options, args, err)
    if report is None:
        return 2
    clean = (
        report.resumed == report.resume_sample
        and report.bogus_refused
        and report.restored_keys == report.snapshot_keys
    )
    if not clean:
        if report.restored_keys != report.snapshot_keys:
            err.print(
                f"[red]the server restored {report.restored_keys} keys of "
                f"{report.snapshot_keys}[/red]",
                highlight=False,
            )
        for sample in report.error_samples:
            err.print(f"  {escape(sample)}", highlight=False)
    return 0 if clean else 1


def run_fanout_cmd(args: argparse.Namespace) -> int:
    import msgspec
    from rich.markup import escape

    from bench.fanout import FanoutOptions, FanoutParams, bench_fanout
    from bench.proc import ServerStartError
    from bench.workers import BenchError

    err = _console(stderr=True)
    bad = [s for s in args.set if not s.partition("=")[0] or "=" not in s]
    if bad:
        return _refuse(err, "fanout", f"--set takes KEY=VALUE, got {bad[0]!r}")
    if args.stalled >= args.members:
        return _refuse(err, "fanout", "--stalled must leave at least one member reading")
    if args.procs > args.members:
        return _refuse(err, "fanout", "--procs must not exceed --members")
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
    )
    out = _console(stderr=args.json == "-")
    try:
        report = bench_fanout(options, out, _logger(err))
    except (BenchError, ServerStartError) as exc:
        err.print(f"[red]tickwire bench fanout: {escape(str(exc))}[/red]", highlight=False)
        return 2
    if args.json:
        data = msgspec.json.format(msgspec.json.encode(report), indent=2)
        if args.json == "-":
            sys.stdout.buffer.write(data + b"\n")
            sys.stdout.flush()
        else:
            Path(args.json).write_bytes(data + b"\n")
    if report.other_cpu_pct is not None and report.other_cpu_pct > BUSY_MACHINE_PCT:
        err.print(
            f"[yellow]other processes used {report.other_cpu_pct:.0f}% CPU during the run; "
            "its numbers are not those of a quiet machine[/yellow]",
            highlight=False,
        )
    if not report.clean:
        for sample in report.error_samples:
            err.print(f"  {escape(sample)}", highlight=False)
        return 1
    return 0


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
