"""Putting a bench together: which servers to start, where to place them, in what order.

`tools/bench/` only turns arguments into `EchoOptions`/`IdleOptions` and prints;
the decisions live here so that tests drive the same code the command does.

Comparison rounds start a fresh server process for every run (baseline, tickwire,
baseline, tickwire, ...). A fresh process costs its start-up per run and buys
independent samples: no run inherits another's heap, caches or leftover connections, and
a server that degrades over time cannot pass that off as noise. Interleaving puts each
tickwire run next to a baseline run made moments before, so slow drift of the machine
(other load, thermal state) hits both sides of a pair alike; the summary is the median of
the per-round ratios.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
from rich.console import Console

from bench.echo import EchoParams, compare, run_echo
from bench.idle import IdleParams, run_idle
from bench.login import (
    PRODUCTION_SCRYPT_N,
    LoginParams,
    local_redis_pid,
    run_login,
)
from bench.proc import Endpoint, ServerProcess, available_cpus, pin_process, server_command
from bench.progress import ProgressSink
from bench.report import (
    comparison_table,
    echo_table,
    idle_table,
    login_notes,
    restore_table,
    run_notes,
)
from bench.restore import RestoreParams, run_restore
from bench.results import EchoReport, EchoRun, IdleReport, RestoreReport
from bench.scenario import ScenarioParams, run_scenario
from bench.serverside.config import default_redis_url
from bench.serverside.users import make_users
from bench.tlsfiles import throwaway_tls
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
    #: Config of a spawned `tickwire serve`, as ``KEY=VALUE`` for its ``--set``. Not
    #: applied to --server-cmd or --target baseline (their commands are their own).
    settings: list[str] = []
    #: PEM certificate and key a spawned `tickwire serve` serves TLS with (empty: none).
    tls_cert: str = ""
    tls_key: str = ""

    def command(self) -> list[str]:
        """The command that starts the server under test when the bench starts it."""
        if self.server_cmd:
            return self.server_cmd
        cmd = server_command(self.target, self.host)
        if self.target == "tickwire":
            for setting in self.settings:
                cmd += ["--set", setting]
            if self.tls_cert:
                cmd += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        return cmd


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
    if opts.params.tls is not None and _needs_throwaway_tls(opts.server):
        with tempfile.TemporaryDirectory(prefix="tickwire-bench-tls-") as directory:
            files = throwaway_tls(Path(directory), opts.server.host)
            log(f"TLS with a throwaway certificate for {opts.server.host} (CA {files.ca})")
            tls = msgspec.structs.replace(opts.params.tls, ca=files.ca)
            opts = msgspec.structs.replace(
                opts,
                params=msgspec.structs.replace(opts.params, tls=tls),
                server=msgspec.structs.replace(opts.server, tls_cert=files.cert, tls_key=files.key),
            )
            return _bench_echo(opts, console, log, progress)
    return _bench_echo(opts, console, log, progress)


def _needs_throwaway_tls(server: ServerOptions) -> bool:
    """A TLS bench of a `tickwire serve` the bench spawns, given no certificate for it."""
    if server.target == "baseline" and server.server_cmd is None:
        raise BenchError("the baseline server speaks no TLS; bench it without --tls")
    return server.port is None and server.server_cmd is None and not server.tls_cert


def _bench_echo(
    opts: EchoOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None,
) -> EchoReport:
    server = opts.server
    run_one = _load_runner(run_echo, opts.params, placement(server.cpu_pin), progress)
    if server.port is not None and opts.compare_baseline:
        raise BenchError("--compare-baseline starts both servers itself; drop --port")
    target_cmd = server.command()
    # The tables and the JSON say which runs were over TLS.
    label = f"{server.target}+tls" if opts.params.tls is not None else server.target
    order: list[tuple[str, list[str]]] = [(label, target_cmd)]
    if opts.compare_baseline:
        if opts.params.tls is not None:
            raise BenchError("--compare-baseline compares plaintext servers; drop --tls")
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


#: A `tickwire serve` the idle bench spawns keeps quiet connections open however long the
#: run: no AUTH_TIMEOUT (10 s by default: opening 15,000 connections and the settle can
#: take longer, and the first ones would be closed before the memory is read) and no
#: IDLE_TIMEOUT (300 s, within reach of a long --settle), and no server heartbeats (its
#: raw connections do not answer Pings, and would be cut after ping_interval times
#: max_outstanding_pings + 1). The bench measures what a quiet connection costs, not the
#: server's policy for quiet connections.
IDLE_SETTINGS = ["auth_timeout=0", "idle_timeout=0", "ping_interval=0"]


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
        server = msgspec.structs.replace(server, settings=[*IDLE_SETTINGS, *server.settings])
        cmd = server.command()
        log(f"{opts.params.conns} idle connections to {server.target} ({' '.join(cmd[1:])})")
        with _spawned(cmd, where) as process:
            report = run_idle(
                opts.params, process.endpoint, target=server.target, client_cpus=where.client_cpus
            )
    console.print(idle_table(report))
    return report


class LoginOptions(msgspec.Struct, frozen=True, kw_only=True):
    """`bench login`. `params.users` is left empty: `bench_login` makes the users."""

    params: LoginParams
    store: str = "memory"
    redis_url: str | None = None
    scrypt_n: int = PRODUCTION_SCRYPT_N
    server: ServerOptions = msgspec.field(default_factory=ServerOptions)


def login_settings(opts: LoginOptions, users_file: Path) -> list[str]:
    """The `tickwire serve --set` config of a login bench."""
    settings = [f"users_file={users_file}", f"store={opts.store}"]
    if opts.store == "redis" and opts.redis_url:
        settings.append(f"redis_url={opts.redis_url}")
    return settings


def bench_login(
    opts: LoginOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None = None,
) -> EchoReport:
    """Spawn `tickwire serve` with a users file made for the run, then log in on every
    connection, again and again (`bench.login`)."""
    server = opts.server
    if server.port is not None or server.server_cmd is not None or server.target != "tickwire":
        raise BenchError("bench login starts `tickwire serve` itself, with users it made")
    where = placement(server.cpu_pin)
    with tempfile.TemporaryDirectory(prefix="tickwire-bench-login-") as tmp:
        users_file = Path(tmp) / "users"
        log(f"hashing {opts.params.conns} passwords at scrypt n={opts.scrypt_n}")
        users = make_users(opts.params.conns, opts.scrypt_n, users_file)
        params = msgspec.structs.replace(opts.params, users=users)
        server = msgspec.structs.replace(
            server, settings=[*login_settings(opts, users_file), *server.settings]
        )
        cmd = server.command()
        log(f"tickwire ({' '.join(cmd[1:])})")
        store_pid = None
        if opts.store == "redis":
            store_pid = local_redis_pid(opts.redis_url or default_redis_url())
            if store_pid is None:
                log("the Redis is not a local redis-server: its CPU is not read")

        def run_one(endpoint: Endpoint, target: str, round_no: int) -> EchoRun:
            return run_login(
                params,
                endpoint,
                target=target,
                store=opts.store,
                scrypt_n=opts.scrypt_n,
                round_no=round_no,
                client_cpus=where.client_cpus,
                progress=progress,
                store_pid=store_pid,
            )

        run = _spawned_run("tickwire", cmd, where, 1, run_one)
    console.print(echo_table([run], "login", noun="logins"))
    for note in login_notes(run):
        console.print(note, highlight=False)
    return EchoReport(kind="login", host=server.host, runs=[run])


class RestoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    params: RestoreParams
    host: str = "127.0.0.1"


def bench_restore(
    opts: RestoreOptions,
    console: Console,
    log: Callable[[str], None],
    progress: ProgressSink | None = None,
) -> RestoreReport:
    """`bench.restore` in a temporary directory (the snapshot can be large)."""
    with tempfile.TemporaryDirectory(prefix="tickwire-bench-restore-") as tmp:
        report = run_restore(opts.params, Path(tmp), host=opts.host, log=log)
    console.print(restore_table(report))
    return report
