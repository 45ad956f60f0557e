"""`tickwire bench attack`: the server's peak memory and a well-behaved client's latency
and login time under each hostile-peer attack, beside the same client on the quiet
server (bench/attack.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common

#: bench.attack.KINDS, spelled out: registering the subcommand must not import the bench
#: (every `tickwire` command registers it); tests/bench_tool/test_attack.py keeps them equal.
KINDS = ("unread", "partial", "logins", "slowloris", "flood", "connect")


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown attack {', '.join(unknown) or '(none)'}; the kinds: {', '.join(KINDS)}"
        )
    return kinds


def _credentials(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return user, password


def register(kinds: Any) -> None:
    attack = kinds.add_parser(
        "attack",
        help="server memory and a well-behaved client's latency under hostile peers",
        description="For each attack, start a fresh `tickwire serve`, attack it with "
        "--hostile connections for --duration seconds and measure one well-behaved client "
        "beside them (Pings, fresh logins); the same client is measured first on the quiet "
        f"server. Attacks: {', '.join(KINDS)}. See docs/bench.md.",
    )
    attack.add_argument(
        "--kinds",
        type=_kinds,
        default=list(KINDS),
        metavar="K1,K2",
        help="attacks to run, comma-separated (default: all)",
    )
    attack.add_argument(
        "--hostile",
        type=common.positive_int,
        default=50,
        help="hostile connections per attack (default: %(default)s)",
    )
    attack.add_argument(
        "--duration",
        type=common.positive_float,
        default=10.0,
        help="measured seconds per attack and for the quiet run (default: %(default)s)",
    )
    attack.add_argument(
        "--interval",
        type=common.positive_float,
        default=0.05,
        help="seconds between the well-behaved client's Pings (default: %(default)s)",
    )
    attack.add_argument(
        "--login-every",
        type=common.positive_float,
        default=1.0,
        metavar="S",
        help="seconds between its fresh logins (default: %(default)s)",
    )
    attack.add_argument(
        "--timeout",
        type=common.positive_float,
        default=10.0,
        help="a request of the well-behaved client unanswered this long failed "
        "(default: %(default)s)",
    )
    attack.add_argument(
        "--frame-size",
        type=common.checked(int, lambda v: v >= 64, "must be at least 64"),
        default=1 << 20,
        metavar="BYTES",
        help="frame length of the unread and partial attacks (default: %(default)s)",
    )
    attack.add_argument(
        "--slowloris-interval",
        type=common.positive_float,
        default=2.0,
        metavar="S",
        help="seconds between a slowloris connection's bytes (default: %(default)s)",
    )
    attack.add_argument(
        "--rss-limit",
        type=common.positive_int,
        default=3072,
        metavar="MIB",
        help="kill a server the bench started once it holds this much memory, so an "
        "unbounded attack cannot take the machine (default: %(default)s)",
    )
    attack.add_argument(
        "--scrypt-n",
        type=common.scrypt_cost,
        default=1 << 14,
        metavar="N",
        help="scrypt cost of the users the bench makes (default: %(default)s, production)",
    )
    where = attack.add_argument_group("server under test")
    where.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    where.add_argument(
        "--port", type=int, help="with --pid: attack the server already listening here"
    )
    where.add_argument(
        "--pid",
        type=int,
        help="pid of the server at --port (its memory is sampled from /proc; one server "
        "for every attack, so the peak is sampled VmRSS, not VmHWM)",
    )
    where.add_argument(
        "--user",
        type=_credentials,
        metavar="NAME:PASSWORD",
        help="with --pid: the user of the well-behaved client's pinging connection "
        "(without it, that connection stays anonymous)",
    )
    where.add_argument(
        "--login-user",
        type=_credentials,
        metavar="NAME:PASSWORD",
        help="with --pid: the user it logs in afresh every --login-every seconds, another "
        "than --user, since a login replaces the user's other session (without it, no "
        "login is timed)",
    )
    where.add_argument(
        "--target-user",
        metavar="NAME",
        help="with --pid: the user whose password the logins attack guesses "
        "(default: the --login-user name, else a user that does not exist)",
    )
    common.add_set_arg(where, "max_connections_per_ip=64")
    common.add_json_arg(attack)
    attack.set_defaults(func=run)


def _problem(args: argparse.Namespace) -> str | None:
    if (args.pid is None) != (args.port is None):
        return "--pid and --port go together: the server already running, and its pid"
    if args.pid is not None and args.set:
        return "--set configures a server the bench starts; with --pid it is yours"
    if args.pid is None and (args.user or args.login_user or args.target_user):
        return "--user, --login-user and --target-user are for --pid; the bench makes its own"
    return common.set_problem(args)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.attack import (
        AttackParams,
        Credentials,
        Users,
        attack_table,
        clean,
        run_attacks,
    )
    from bench.proc import Endpoint, ServerStartError
    from bench.workers import BenchError

    err = common.console(stderr=True)
    problem = _problem(args)
    if problem:
        return common.refuse(err, "attack", problem)
    params = AttackParams(
        kinds=args.kinds,
        hostile=args.hostile,
        duration=args.duration,
        interval=args.interval,
        login_every=args.login_every,
        timeout=args.timeout,
        frame_size=args.frame_size,
        slowloris_interval=args.slowloris_interval,
        rss_limit_mib=args.rss_limit,
        settings=list(args.set),
    )
    endpoint = users = None
    if args.pid is not None:
        endpoint = Endpoint(args.host, args.port, args.pid)
        users = Users(
            pinger=Credentials(*args.user) if args.user else None,
            login=Credentials(*args.login_user) if args.login_user else None,
            target=args.target_user
            or (args.login_user[0] if args.login_user else "bench-attack-nobody"),
        )
    try:
        report = run_attacks(
            params,
            host=args.host,
            scrypt_n=args.scrypt_n,
            log=common.logger(err),
            endpoint=endpoint,
            users=users,
        )
    except (BenchError, ServerStartError, OSError) as exc:
        err.print(f"[red]tickwire bench attack: {escape(str(exc))}[/red]", highlight=False)
        return 2
    out = common.console(stderr=args.json == "-")
    out.print(attack_table(report))
    if args.json:
        import sys
        from pathlib import Path

        import msgspec

        data = msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
        if args.json == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            Path(args.json).write_bytes(data)
    if clean(report):
        return 0
    for run in report.runs:
        for sample in run.bystander.failure_samples:
            err.print(f"  {run.kind}: {escape(sample)}", highlight=False)
    err.print(
        "[yellow]the well-behaved client failed or a server died or passed --rss-limit in "
        "some run (exit status 1)[/yellow]",
        highlight=False,
    )
    return 1
