"""`tickwire ids`: print a message ID table, or check it against the committed one.

Without --app it is the system table (protocol/message_ids.txt). With --app it is the
application's own messages, checked against the table committed beside the app's module
(``message_ids.txt`` in its package, or --table): an application's client built last
year must decode its IDs as it did then, as much as the system's (docs/tools.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from protocol.id_table import check_id_table, format_id_table, parse_id_table
from protocol.registry import system_registry

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "protocol" / "message_ids.txt"

APP_TABLE_HEADER = (
    "# This application's committed ID table: id, full name (`tickwire ids --app ... --check`\n"
    "# compares it with the registry). Add a line when you add a message (`--write` adds\n"
    "# them); never edit or reuse one.\n"
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("ids", help="show or check a message ID table")
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an application's messages instead of the system's (repeatable)",
    )
    p.add_argument(
        "--table",
        type=Path,
        help="the application's committed table (default: message_ids.txt beside --app's module)",
    )
    p.add_argument(
        "--check", action="store_true", help="compare with the committed table; exit 1 if off"
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="with --app: add the IDs not in the committed table yet (never changes one)",
    )
    p.set_defaults(func=ids)


def app_table(specs: list[str]) -> dict[int, str]:
    """The IDs the apps named by `specs` add to the system's, as the server registers them."""
    from server.reload import AppLoader

    registry = system_registry()
    system = registry.table()
    for app in AppLoader(specs).load():
        app.register_messages(registry)
    return {i: name for i, name in registry.table().items() if i not in system}


def default_table(spec: str) -> Path:
    """``message_ids.txt`` in the directory of the module `spec` names."""
    from server.reload import app_module

    file = getattr(app_module(spec), "__file__", None)
    if not file:
        raise SystemExit(f"tickwire ids: {spec} has no file to put a table beside; use --table")
    return Path(file).resolve().parent / "message_ids.txt"


def problems_of(specs: list[str], table: Path) -> list[str]:
    """Every way the apps' IDs break the table committed at `table` (a test helper too)."""
    name = _shown(table)
    committed = parse_id_table(table.read_text(), name) if table.exists() else {}
    problems = check_id_table(committed, app_table(specs), name)
    if not table.exists():
        problems.insert(0, f"{name} does not exist: `tickwire ids --app ... --write` makes it")
    return problems


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def ids(args: argparse.Namespace) -> int:
    if args.write and not args.app:
        print("tickwire ids: --write is for an application's table (--app)", file=sys.stderr)
        return 2
    if args.app:
        table_path = args.table or default_table(args.app[0])
        if args.write:
            return _write(args.app, table_path)
        if args.check:
            return _report(problems_of(args.app, table_path))
        current = app_table(args.app)
    else:
        current = system_registry().table()
        if args.check:
            return _report(check_id_table(parse_id_table(COMMITTED.read_text()), current))
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "message")
    for msg_id, name in current.items():
        table.add_row(str(msg_id), name)
    Console().print(table)
    return 0


def _report(problems: list[str]) -> int:
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def _write(specs: list[str], path: Path) -> int:
    name = _shown(path)
    committed = parse_id_table(path.read_text(), name) if path.exists() else {}
    current = app_table(specs)
    added = {i: n for i, n in current.items() if i not in committed}
    refused = [
        line
        for line in check_id_table(committed, current, name)
        if "is not in the committed table" not in line
    ]
    if refused:
        # Only additions are written: a change or a removal is the mistake the table exists
        # to catch, never something a tool makes right by rewriting it.
        return _report(refused)
    if not added and path.exists():
        print(f"{name}: up to date")
        return 0
    path.write_text(format_id_table({**committed, **added}, header=APP_TABLE_HEADER))
    print(f"{name}: added {len(added)} id(s)")
    return 0
