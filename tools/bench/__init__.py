"""`tickwire bench`: load tests against a running or freshly started server.

    tickwire bench echo --conns 50 --depth 8 --duration 5
    tickwire bench echo --conns 50 --rate 20000 --duration 10 --plot echo.png
    tickwire bench echo --conns 50 --depth 8 --compare-baseline --rounds 3 --json out.json
    tickwire bench scenario bench.scenarios:ping_echo --conns 20 --requests 50000
    tickwire bench scenario my_load:chat --schema myapp.chat_pb2
    tickwire bench compare before.json after.json
    tickwire bench idle --conns 15000
    tickwire bench login --conns 50 --duration 5 [--scrypt-n 16] [--store redis]
    tickwire bench restore --sessions 100000
    tickwire bench fanout --members 10000 --duration 5 [--burst 8] [--stalled 20]
    tickwire bench attack --hostile 50 --duration 10 [--kinds unread,logins]

Exit status: 0 when the run was clean, 1 when it ran but saw errors (bad replies, connect
errors, unanswered pings, fewer replies than --requests), 2 when it could not run at
all. A benchmark that quietly reports numbers from a broken server is worse than none.

One module per kind registers its subcommand and runs it; `common` holds the options and
the output they share. See docs/bench.md for what each number means.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tools.bench import attack, compare, echo, fanout, idle, login, restore, scenario


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="load-test a tickwire server")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    for kind in (echo, idle, scenario, login, restore, fanout, attack, compare):
        kind.register(kinds)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.bench ...` == `tickwire bench ...`, without the other commands.

    Lets the bench run (and be tested) whatever state the rest of the CLI is in.
    """
    parser = argparse.ArgumentParser(prog="tickwire")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code
