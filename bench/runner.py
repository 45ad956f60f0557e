"""Putting a bench together: which servers to start, where to place them, in what order.

`tools/bench_cmd.py` only turns arguments into `EchoOptions`/`IdleOptions` and prints;
the decisions live here so that tests drive the same code the command does.

Comparison rounds start a fresh server process for every run (baseline, tickwire,
baseline, tickwire, ...). A fresh process costs about half a second per run and buys
independent samples: no run inherits another's heap, caches or leftover connections, and
a server that degrades over time cannot pass that off as noise. Interleaving puts each
tickwire run next to a baseline run made moments before, so slow drift of the machine
(other load, thermal state) hits both sides of a pair alike; the summary is the median of
the per-round ratios.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import msgspec
from rich.console import Console

from bench.echo import EchoParams, compare, run_echo
from bench.idle import IdleParams, run_idle
from bench.proc import Endpoint, ServerProcess, available_cpus, pin_process, server_command
from bench.progress import ProgressSink
from bench.report import comparison_table, echo_table, idle_table, run_notes
from bench.results import EchoReport, EchoRun, IdleReport
from bench.scenario import ScenarioParams, run_scenario
from bench.workers import BenchError

#: One measured run: (server, target name, round number) -> the run.
RunOne = Callable[[Endpoint, str, int], EchoRun]


class Placement(msgspec.Struct, frozen=True):
    """Where the server and the load generators run; None means wherever the OS likes."""

    server_cpus: set[int] | None = None
    client_cpus: list[int] | None = None


def placement(cpu_pin: bool) -> Placement:
    """Server on the first CPU, load generators on the rest.

    Pinning only makes sense with at least two CPUs; asked for on one, it is refused
    rather than silently putting both sides on the same core.
    """
    if not cpu_pin:
        return Placement()
    cpus = available_cpus()
    if len(cpus) < 2:
        raise BenchError(f"--cpu-pin needs at least 2 CPUs, this process may use {cpus}")
    return Placement(server_cpus={cpus[0]}, client_cpus=cpus[1:])


class ServerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The server under test, and where it and the load generators run."""

    host: str = "127.0.0.1"
    #: An external server; None starts one (--spawn).
    port: int | None = None
    server_pid: int | None = None
    target: str = "tickwire"
    server_cmd: list[str] | None = None
    cpu_pin: bool = False

    def command(self) -> list[str]:
        """The command that starts the server under test when the bench starts it."""
        return self.server_cmd or server_command(self.target, self.host)


class EchoOptions(msgspec.Struct, frozen=True, kw_only=True):
    params: EchoParams
    server: ServerOptions = msgspec.field(default_factory=ServerOptions)
    compare_baseline: bool = False
    rounds: int = 1


@contextlib.contextmanager
def _spawned(cmd: list[str], where: Placement) -> Iterator[ServerProcess]:
    """A fresh server started by `cmd`, on the CPUs `where` gives it; stopped on exit."""
    with ServerProcess(cmd) as server:
        if where.server_cpus:
            pin_process(server.pid, where.server_cpus)
        yield server


def _spawned_run(
    target: str, cmd: list[str], where: Placement, round_no: int, run_one: RunOne
) -> EchoRun:
    with _spawned(cmd, where) as server:
        run = run_one(server.endpoint, target, round_no)
        if not server.alive():
            raise BenchError(f"{target} server died during the run; its stderr:\n{server.tail()}")
        return run


def _print_runs(console: Console, runs: list[EchoRun], title: str) -> None:
    console.print(echo_table(runs, title))
    for run in runs:
        for note in run_notes(run):
            console.print(note, highlight=False)


def _rounds(
    server: ServerOptions,
    order: list[tuple[str, list[str]]],
    rounds: int,
    run_one: RunOne,
    console: Console,
    log: Callable[[str], None],
) -> list[EchoRun]:
    """`rounds` rounds of one run per (target, command) of `order`, each against a fresh
    server; or against the external server at --port, when there is one."""
    where = placement(server.cpu_pin)
    runs: list[EchoRun] = []
    if server.port is not None:
        external = Endpoint(server.host, server.port, server.server_pid)
        for round_no in range(1, rounds + 1):
            log(f"round {round_no}: {server.host}:{server.port}")
            run = run_one(external, "external", round_no)
            runs.append(run)
            _print_runs(console, [run], f"round {round_no}")
        return runs
    for round_no in range(1, rounds + 1):
        this_round = []
        for target, cmd in order:
            log(f"round {round_no}/{rounds}: {target} ({' '.join(cmd[1:])})")
            this_round.append(_spawned_run(target, cmd, where, round_no, run_one))
        runs.extend(this_round)
        _print_runs(console, this_round, f"round {round_no}")
    return runs


def _load_runner(
    run: Callable[..., EchoRun],
    params: EchoParams | ScenarioParams,
    where: Placement,
    progress: ProgressSink | None,
) -> Callable[[Endpoint, str, int], EchoRun]:
    """One measured run of `run` (run_echo or run_scenario) per server and round."""

    def run_one(endpoint: Endpoint, target: str, round_no: int) -> EchoRun:
        return run(
            params,
            endpoint,
            target=target,
            round_no=round_no,
            client_cpus=where.client_cpus,
            progress=progress,
        )

    return run_one


def bench_echo(
    opts: EchoOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None = None,
) -> EchoReport:
    server = opts.server
    run_one = _load_runner(run_echo, opts.params, placement(server.cpu_pin), progress)
    if server.port is not None and opts.compare_baseline:
        raise BenchError("--compare-baseline starts both servers itself; drop --port")
    target_cmd = server.command()
    order: list[tuple[str, list[str]]] = [(server.target, target_cmd)]
    if opts.compare_baseline:
        if server.target == "baseline" and server.server_cmd is None:
            raise BenchError("--compare-baseline with --target baseline compares it to itself")
        order = [("baseline", server_command("baseline", server.host)), ("tickwire", target_cmd)]
    runs = _rounds(server, order, opts.rounds, run_one, console, log)
    comparison = compare(runs) if opts.compare_baseline else None
    if comparison is not None:
        console.print(comparison_table(comparison))
    return EchoReport(host=server.host, runs=runs, comparison=comparison)


class ScenarioOptions(msgspec.Struct, frozen=True, kw_only=True):
    params: ScenarioParams
    server: ServerOptions = msgspec.field(default_factory=ServerOptions)
    rounds: int = 1


def bench_scenario(
    opts: ScenarioOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None = None,
) -> EchoReport:
    server = opts.server
    run_one = _load_runner(run_scenario, opts.params, placement(server.cpu_pin), progress)
    order = [(server.target, server.command())]
    runs = _rounds(server, order, opts.rounds, run_one, console, log)
    return EchoReport(kind="scenario", host=server.host, runs=runs)


class IdleOptions(msgspec.Struct, frozen=True, kw_only=True):
    params: IdleParams
    server: ServerOptions = msgspec.field(default_factory=ServerOptions)


def bench_idle(
    opts: IdleOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None = None,
) -> IdleReport:
    """`progress` is accepted for a uniform signature; the idle bench reports its own
    steps through `log`."""
    server = opts.server
    where = placement(server.cpu_pin)
    if server.port is not None:
        log(f"{opts.params.conns} idle connections to {server.host}:{server.port}")
        external = Endpoint(server.host, server.port, server.server_pid)
        report = run_idle(opts.params, external, target="external", client_cpus=where.client_cpus)
    else:
        cmd = server.command()
        log(f"{opts.params.conns} idle connections to {server.target} ({' '.join(cmd[1:])})")
        with _spawned(cmd, where) as process:
            report = run_idle(
                opts.params, process.endpoint, target=server.target, client_cpus=where.client_cpus
            )
    console.print(idle_table(report))
    return report
