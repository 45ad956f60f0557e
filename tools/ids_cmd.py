"""`tickwire ids`: print the message ID table, or check it against the committed one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from protocol.id_table import check_id_table, parse_id_table
from protocol.registry import system_registry

COMMITTED = Path(__file__).resolve().parent.parent / "protocol" / "message_ids.txt"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("ids", help="show or check the message ID table")
    p.add_argument(
        "--check", action="store_true", help="compare with protocol/message_ids.txt; exit 1 if off"
    )
    p.set_defaults(func=ids)


def ids(args: argparse.Namespace) -> int:
    current = system_registry().table()
    if args.check:
        problems = check_id_table(parse_id_table(COMMITTED.read_text()), current)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "message")
    for msg_id, name in current.items():
        table.add_row(str(msg_id), name)
    Console().print(table)
    return 0
