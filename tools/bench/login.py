"""`tickwire bench login`: logins per second and their latency, against a `tickwire serve`
the bench starts with users it made (bench/login.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    login = kinds.add_parser(
        "login",
        help="logins per second and login latency (spawns tickwire serve with its own users)",
        description="Every connection logs in as its own user, again and again (closed "
        "loop); each login replaces the connection's previous session. The bench writes "
        "the users file and starts `tickwire serve` on it. See docs/bench.md.",
    )
    common.add_load_args(login, conns=50)
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
        type=common.scrypt_cost,
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
        type=common.positive_int,
        default=100,
        help="TCP handshakes in flight at once, over all processes (default: %(default)s)",
    )
    common.add_set_arg(where, "duplicate_login=allow")
    common.add_json_arg(login)
    login.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.login import LoginParams
    from bench.runner import LoginOptions, ServerOptions

    err = common.console(stderr=True)
    problem = common.check_plot(args) or common.window_problem(args)
    if problem is None and args.redis_url is not None and args.store != "redis":
        problem = "--redis-url is for --store redis"
    if problem is None:
        problem = common.set_problem(args)
    if problem:
        return common.refuse(err, "login", problem)
    options = LoginOptions(
        params=LoginParams(**common.run_fields(args), users=[]),
        store=args.store,
        redis_url=args.redis_url,
        scrypt_n=args.scrypt_n,
        server=ServerOptions(host=args.host, cpu_pin=args.cpu_pin, settings=list(args.set)),
    )
    from bench.runner import bench_login

    return common.finish_load(
        "login", common.run_bench("login", bench_login, options, args, err), args, err
    )
