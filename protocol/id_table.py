"""The committed message ID table (protocol/message_ids.txt), as pure functions.

An ID on the wire means one message type forever: a client built last year decodes
ID 10 as ``system.EchoRequest`` and nothing else. The registry is built from the
``(tickwire.msg_id)`` options in the .proto files, where an edit can silently move an ID;
the committed table is the memory of every ID ever handed out, and `check_id_table`
compares the two so that a test (and ``tickwire ids``) can refuse the drift.

Format: one ``ID FULLNAME`` pair per line; ``#`` starts a comment, blank lines are
ignored. The file is read by the caller: nothing here touches the file system.
"""

from __future__ import annotations

import re

#: Where the table lives, relative to the repository root (named in the messages).
ID_TABLE_PATH = "protocol/message_ids.txt"

#: The comment block `format_id_table` writes above the entries by default.
ID_TABLE_HEADER = (
    "# The committed ID table: id, full name. A test compares it with the registry built from\n"
    "# the .proto files, so an ID can never silently change meaning. Add a line when you add a\n"
    "# message; never edit or reuse one.\n"
)

_MIN_ID = 1
_MAX_ID = 0xFFFF
# Decimal digits only: int() would also take "+5", "1_0" and non-ASCII digits.
_ID_RE = re.compile(r"[0-9]+")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_entry(msg_id: int, full_name: str) -> str | None:
    """Why an entry is invalid, or None; shared so format never writes what parse rejects."""
    if not _MIN_ID <= msg_id <= _MAX_ID:
        return f"id {msg_id} is outside {_MIN_ID}-{_MAX_ID}"
    if not _NAME_RE.fullmatch(full_name):
        return f"{full_name!r} is not a message full name (package.Message)"
    return None


def parse_id_table(text: str, path: str = ID_TABLE_PATH) -> dict[int, str]:
    """Parse the table (read from `path`, named in the errors); any malformed or ambiguous
    line raises ValueError naming its number.

    Duplicates are refused rather than letting the last line win, since either reading of
    a twice-listed ID would hide a conflict the table exists to catch.
    """
    table: dict[int, str] = {}
    id_line: dict[int, int] = {}
    name_line: dict[str, tuple[int, int]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path} line {lineno}: expected 'ID FULLNAME', got {raw.strip()!r}")
        id_text, full_name = parts
        if not _ID_RE.fullmatch(id_text):
            raise ValueError(f"{path} line {lineno}: id {id_text!r} is not a decimal number")
        msg_id = int(id_text)
        problem = _check_entry(msg_id, full_name)
        if problem is not None:
            raise ValueError(f"{path} line {lineno}: {problem}")
        if msg_id in table:
            raise ValueError(
                f"{path} line {lineno}: id {msg_id} is listed twice: "
                f"{table[msg_id]} (line {id_line[msg_id]}) and {full_name}"
            )
        if full_name in name_line:
            other_id, other_line = name_line[full_name]
            raise ValueError(
                f"{path} line {lineno}: {full_name} is listed twice: "
                f"as id {other_id} (line {other_line}) and as id {msg_id}"
            )
        table[msg_id] = full_name
        id_line[msg_id] = lineno
        name_line[full_name] = (msg_id, lineno)
    return dict(sorted(table.items()))


def format_id_table(table: dict[int, str], *, header: str = ID_TABLE_HEADER) -> str:
    """The file text for `table`, sorted by id, that `parse_id_table` reads back unchanged.

    Raises ValueError on an entry the parser would refuse, so a tool can never write a
    table that breaks the next build.
    """
    seen: dict[str, int] = {}
    lines: list[str] = []
    for msg_id, full_name in sorted(table.items()):
        problem = _check_entry(msg_id, full_name)
        if problem is not None:
            raise ValueError(problem)
        if full_name in seen:
            raise ValueError(f"{full_name} has two ids: {seen[full_name]} and {msg_id}")
        seen[full_name] = msg_id
        lines.append(f"{msg_id} {full_name}\n")
    if header and not header.endswith("\n"):
        header += "\n"
    return header + "".join(lines)


def check_id_table(
    committed: dict[int, str], current: dict[int, str], path: str = ID_TABLE_PATH
) -> list[str]:
    """Every way `current` (the registry's table) breaks `committed` (the table at `path`);
    empty when it is safe.

    Only additions are allowed, and only once committed: a new ID that is not in the file
    yet is reported too, so that the file stays the complete record of IDs in use.
    """
    problems: list[str] = []
    for msg_id in sorted(committed.keys() | current.keys()):
        old = committed.get(msg_id)
        new = current.get(msg_id)
        if old is not None and new is not None:
            if old != new:
                problems.append(
                    f"id {msg_id} changed meaning: {old} -> {new}; an id never changes meaning, "
                    f"give {new} a new id"
                )
        elif old is not None:
            problems.append(
                f"id {msg_id} ({old}) is in {path} but no longer registered; "
                "an id is never removed or reused"
            )
        elif new is not None:
            problems.append(f"id {msg_id} ({new}) is not in the committed table: add it to {path}")
    return problems
