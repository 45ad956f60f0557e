"""What the `tickwire bench` kinds share: argument types, the option groups of the load and
of the server under test, and running a bench with its output, JSON, plot and exit status.

The bench modules (and through them prometheus_client, msgspec) and rich are imported
by the functions that use them: `tickwire --help` and every other command import this
package to register `bench`, and should not pay for a benchmark.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

    from bench.progress import ProgressSink
    from bench.results import (
        EchoReport,
        EchoRun,
        FanoutComparison,
        FanoutReport,
        IdleReport,
        RestoreReport,
    )
    from bench.runner import (
        EchoOptions,
        IdleOptions,
        LoginOptions,
        RestoreOptions,
        ScenarioOptions,
        ServerOptions,
    )
    from bench.workers import TLSOptions

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


def checked(parse: Callable[[str], _N], ok: Callable[[_N], bool], rule: str) -> Callable[[str], _N]:
    """An argparse `type` that parses a number and refuses it, saying `rule`, unless ok."""

    def convert(text: str) -> _N:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    convert.__name__ = parse.__name__  # argparse's "invalid int value: 'x'"
    return convert


positive_int = checked(int, lambda v: v >= 1, "must be at least 1")
non_negative_int = checked(int, lambda v: v >= 0, "must not be negative")
non_negative_float = checked(float, lambda v: v >= 0, "must not be negative")
positive_float = checked(float, lambda v: v > 0, "must be positive")
#: scrypt's cost n (--scrypt-n of the benches that make users).
scrypt_cost = checked(int, lambda v: v >= 2 and not v & (v - 1), "must be a power of 2, >= 2")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_load_args(parser: argparse.ArgumentParser, *, conns: int) -> None:
    """Options of every request/reply load (echo, scenario): its size, its window, and
    what it shows and writes."""
    parser.add_argument("--conns", type=positive_int, default=conns, help="default: %(default)s")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration",
        type=positive_float,
        help=f"measured seconds (default: {DEFAULT_DURATION_S:g})",
    )
    stop.add_argument(
        "--requests",
        type=positive_int,
        metavar="N",
        help="stop after N replies in the measured window, over all processes",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        metavar="S",
        help="with --requests: give up after S measured seconds (default: 60)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_float,
        default=1.0,
        help="seconds of load before measuring (default: %(default)s)",
    )
    parser.add_argument(
        "--procs",
        type=positive_int,
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


def add_json_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")


def add_set_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, example: str) -> None:
    """`--set KEY=VALUE` for the spawned `tickwire serve`; `example` shows one."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"more config for the spawned tickwire serve, e.g. {example}",
    )


def set_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the `--set` values (add_set_arg), if anything."""
    bad = [s for s in args.set if not s.partition("=")[0] or "=" not in s]
    return f"--set takes KEY=VALUE, got {bad[0]!r}" if bad else None


def add_server_args(parser: argparse.ArgumentParser) -> None:
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
    # Hidden: benches bench.baseline alone, so tests need not depend on `tickwire serve`.
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
        type=positive_int,
        default=100,
        help="TCP handshakes in flight at once, over all processes (default: %(default)s)",
    )
    add_json_arg(parser)


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    """TLS for the load's connections, and the certificate of the server it spawns."""
    tls = parser.add_argument_group("TLS")
    tls.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS; a spawned tickwire serve gets a throwaway certificate "
        "(needs trustme) unless --tls-cert/--tls-key name one",
    )
    tls.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="trust the CAs in this file (default: the system's, or the throwaway CA)",
    )
    tls.add_argument("--tls-cert", metavar="PEM", help="certificate of the spawned server")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument(
        "--server-hostname",
        metavar="NAME",
        help="the name the server's certificate must carry (default: --host)",
    )


def tls_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the TLS arguments (add_tls_args), if anything."""
    given = [f for f in ("tls_ca", "tls_cert", "tls_key", "server_hostname") if getattr(args, f)]
    if given and not args.tls:
        return f"--{given[0].replace('_', '-')} is for a TLS bench; add --tls"
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    if args.tls_cert and (args.port is not None or args.server_cmd is not None):
        return "--tls-cert/--tls-key are for the server the bench spawns"
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert)):
        if path and not Path(path).is_file():
            return f"{flag} {path}: no such file"
    return None


def tls_options(args: argparse.Namespace) -> TLSOptions | None:
    """The load's TLSOptions, None without --tls."""
    if not args.tls:
        return None
    from bench.workers import TLSOptions

    return TLSOptions(ca=args.tls_ca or "", server_hostname=args.server_hostname or "")


def check_server_args(args: argparse.Namespace) -> str | None:
    if args.spawn and args.port is not None:
        return "--spawn and --port exclude each other"
    if args.server_pid is not None and args.port is None:
        return "--server-pid describes the server at --port; give --port too"
    if args.server_cmd is not None and args.port is not None:
        return "--server-cmd starts a server; it makes no sense with --port"
    return None


def write_json(
    path: str,
    report: EchoReport | IdleReport | RestoreReport | FanoutReport | FanoutComparison,
) -> None:
    import msgspec

    data = msgspec.json.format(msgspec.json.encode(report), indent=2)
    if path == "-":
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data + b"\n")


def console(*, stderr: bool = False) -> Console:
    """A console that keeps the tables whole when output goes to a file or a pipe.

    Rich assumes 80 columns off a terminal, which folds every column of the echo table.
    """
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


def logger(console: Console) -> Callable[[str], None]:
    from rich.markup import escape

    def log(message: str) -> None:
        console.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    return log


def refuse(err: Console, kind: str, problem: str) -> int:
    from rich.markup import escape

    err.print(f"[red]tickwire bench {kind}: {escape(problem)}[/red]", highlight=False)
    return 2


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The server-under-test options (`add_server_args`) that every bench shares."""
    from bench.runner import ServerOptions

    return ServerOptions(
        host=args.host,
        port=args.port,
        server_pid=args.server_pid,
        target=args.target,
        server_cmd=shlex.split(args.server_cmd) if args.server_cmd else None,
        cpu_pin=args.cpu_pin,
        tls_cert=getattr(args, "tls_cert", None) or "",
        tls_key=getattr(args, "tls_key", None) or "",
    )


def progress(args: argparse.Namespace, err: Console) -> ProgressSink | None:
    """The live display, unless --no-progress or stderr is not a terminal (a log file or
    CI would fill up with redraws)."""
    if not getattr(args, "progress", False) or not err.is_terminal:
        return None
    from bench.progress import LiveProgress

    return LiveProgress(err)


def run_bench(
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

    out = console(stderr=args.json == "-")
    try:
        report = bench(options, out, logger(err), progress(args, err))
    except (BenchError, ServerStartError) as exc:
        err.print(f"[red]tickwire bench {kind}: {escape(str(exc))}[/red]", highlight=False)
        return None
    if args.json:
        write_json(args.json, report)
    return report


def check_plot(args: argparse.Namespace) -> str | None:
    """Refuse --plot before the run when matplotlib is missing, not after it."""
    if getattr(args, "plot", None):
        from bench.plot import require_matplotlib
        from bench.workers import BenchError

        try:
            require_matplotlib()
        except BenchError as exc:
            return str(exc)
    return None


def write_plot(path: str, runs: list[tuple[str, EchoRun]], title: str, err: Console) -> bool:
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


def window_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the load window's arguments, if anything."""
    if args.time_limit is not None and args.requests is None:
        return "--time-limit bounds a --requests run; with --duration the window is fixed"
    return None


def run_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The RunParams fields every request/reply load (echo, login, scenario) takes from
    its arguments (`add_load_args`): connections, processes and the window."""
    return {
        "conns": args.conns,
        "procs": args.procs,
        "connect_concurrency": args.connect_concurrency,
        "duration": args.duration if args.duration is not None else DEFAULT_DURATION_S,
        "requests": args.requests,
        "time_limit": args.time_limit if args.time_limit is not None else 60.0,
        "warmup": args.warmup,
    }


def check_runs(runs: list[EchoRun], err: Console) -> bool:
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


def finish_load(
    kind: str, report: EchoReport | None, args: argparse.Namespace, err: Console
) -> int:
    if report is None:
        return 2
    clean = check_runs(report.runs, err)
    if args.plot:
        from bench.plot import run_label

        runs = [(run_label(r), r) for r in report.runs]
        if not write_plot(args.plot, runs, f"tickwire bench {kind}", err):
            return 2
    return 0 if clean else 1
