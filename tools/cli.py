"""The `tickwire` command. Each subcommand lives in its own module and registers here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from tools import (
        bench,
        client_cmd,
        config_cmd,
        decode_cmd,
        ids_cmd,
        nodes_cmd,
        restart_cmd,
        serve_cmd,
        users_cmd,
    )

    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.register(sub)
    bench.register(sub)
    ids_cmd.register(sub)
    client_cmd.register(sub)
    decode_cmd.register(sub)
    config_cmd.register(sub)
    restart_cmd.register(sub)
    users_cmd.register(sub)
    nodes_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # What a restarted successor runs with: the same command line.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
