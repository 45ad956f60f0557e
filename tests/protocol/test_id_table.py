"""The committed ID table: its format, the drift check, and the guard on the real file.

The guard (`test_registry_matches_committed_table`) is the reason the table exists: a
message ID that changes meaning breaks every deployed client without a single failing
unit test elsewhere, because both ends of a test run are built from the same schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.id_table import (
    ID_TABLE_HEADER,
    ID_TABLE_PATH,
    check_id_table,
    format_id_table,
    parse_id_table,
)
from protocol.registry import system_registry

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / ID_TABLE_PATH


# -- the guard -------------------------------------------------------------------------


def test_registry_matches_committed_table() -> None:
    committed = parse_id_table(COMMITTED.read_text(encoding="utf-8"))
    assert check_id_table(committed, system_registry().table()) == []


def test_committed_table_holds_the_fixed_ids() -> None:
    committed = parse_id_table(COMMITTED.read_text(encoding="utf-8"))
    fixed = {
        1: "system.Ping",
        2: "system.Pong",
        3: "system.Error",
        10: "system.EchoRequest",
        11: "system.EchoReply",
        20: "system.DescribeRequest",
        21: "system.DescribeReply",
        30: "system.GoAway",
    }
    assert {i: committed.get(i) for i in fixed} == fixed


def test_header_is_the_committed_one() -> None:
    # format_id_table must be able to rewrite the file without losing its explanation.
    assert COMMITTED.read_text(encoding="utf-8").startswith(ID_TABLE_HEADER)


# -- parse -----------------------------------------------------------------------------


def test_parse_skips_comments_and_blank_lines() -> None:
    text = (
        "# header\n"
        "\n"
        "   \n"
        "10 system.EchoRequest\n"
        "  # indented comment\n"
        "1\tsystem.Ping   # trailing comment\n"
        "300 game.v1.Move\r\n"
    )
    assert parse_id_table(text) == {1: "system.Ping", 10: "system.EchoRequest", 300: "game.v1.Move"}


def test_parse_empty() -> None:
    assert parse_id_table("") == {}
    assert parse_id_table("# nothing yet\n") == {}


def test_parse_returns_sorted_by_id() -> None:
    assert list(parse_id_table("20 a.B\n3 a.C\n")) == [3, 20]


@pytest.mark.parametrize(
    "bad_line",
    [
        "10",
        "system.Ping",
        "10 system.Ping extra",
        "ten system.Ping",
        "-1 system.Ping",
        "+5 system.Ping",
        "1_0 system.Ping",
        "0x10 system.Ping",
        "\u0661 system.Ping",  # ARABIC-INDIC DIGIT ONE: int() would accept it
        "0 system.Ping",
        "65536 system.Ping",
        "10 system..Ping",
        "10 .system.Ping",
        "10 system.Ping.",
        "10 1system.Ping",
        "10 system-x.Ping",
    ],
)
def test_parse_malformed_line_names_its_number(bad_line: str) -> None:
    text = "# header\n1 system.Ping\n\n" + bad_line + "\n2 system.Pong\n"
    with pytest.raises(ValueError, match=r"line 4\b"):
        parse_id_table(text)


def test_parse_duplicate_id_names_both_lines() -> None:
    text = "10 system.EchoRequest\n11 system.EchoReply\n10 x.Y\n"
    with pytest.raises(ValueError, match=r"line 3\b") as info:
        parse_id_table(text)
    message = str(info.value)
    assert "id 10" in message
    assert "system.EchoRequest" in message and "x.Y" in message
    assert "line 1" in message


def test_parse_duplicate_name_names_both_ids() -> None:
    text = "# c\n10 system.EchoRequest\n12 system.EchoRequest\n"
    with pytest.raises(ValueError, match=r"line 3\b") as info:
        parse_id_table(text)
    message = str(info.value)
    assert "system.EchoRequest" in message
    assert "10" in message and "12" in message


# -- format ----------------------------------------------------------------------------


def test_format_layout() -> None:
    text = format_id_table({11: "system.EchoReply", 1: "system.Ping"}, header="# h\n")
    assert text == "# h\n1 system.Ping\n11 system.EchoReply\n"


def test_format_default_header_and_no_header() -> None:
    assert format_id_table({1: "a.B"}).startswith(ID_TABLE_HEADER)
    assert format_id_table({1: "a.B"}, header="") == "1 a.B\n"
    assert format_id_table({}, header="") == ""


def test_format_adds_missing_newline_after_header() -> None:
    assert format_id_table({1: "a.B"}, header="# h") == "# h\n1 a.B\n"


@pytest.mark.parametrize(
    "table",
    [{0: "a.B"}, {65536: "a.B"}, {1: "not a name"}, {1: ""}, {1: "a.B", 2: "a.B"}],
)
def test_format_refuses_what_parse_would_refuse(table: dict[int, str]) -> None:
    with pytest.raises(ValueError):
        format_id_table(table)


def test_committed_file_survives_a_rewrite() -> None:
    committed = parse_id_table(COMMITTED.read_text(encoding="utf-8"))
    assert parse_id_table(format_id_table(committed)) == committed


_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_names = st.lists(_ident, min_size=1, max_size=4).map(".".join)
_tables = st.dictionaries(st.integers(1, 0xFFFF), _names, max_size=30).filter(
    lambda t: len(set(t.values())) == len(t)
)


@settings(max_examples=100, deadline=None)
@given(table=_tables)
def test_format_parse_round_trip(table: dict[int, str]) -> None:
    assert parse_id_table(format_id_table(table)) == table


# -- check -----------------------------------------------------------------------------

BASE = {1: "system.Ping", 10: "system.EchoRequest", 11: "system.EchoReply"}


def test_check_same_table_is_clean() -> None:
    assert check_id_table(BASE, dict(BASE)) == []
    assert check_id_table({}, {}) == []


def test_check_changed_meaning() -> None:
    problems = check_id_table(BASE, {**BASE, 10: "x.Y"})
    assert len(problems) == 1
    assert "id 10 changed meaning: system.EchoRequest -> x.Y" in problems[0]


def test_check_removed_id() -> None:
    current = {k: v for k, v in BASE.items() if k != 11}
    problems = check_id_table(BASE, current)
    assert len(problems) == 1
    assert "id 11" in problems[0] and "system.EchoReply" in problems[0]
    assert "removed" in problems[0]


def test_check_new_id_must_be_committed() -> None:
    problems = check_id_table(BASE, {**BASE, 300: "game.Move"})
    assert len(problems) == 1
    assert "id 300" in problems[0] and "game.Move" in problems[0]
    assert "add it to protocol/message_ids.txt" in problems[0]


def test_check_reports_every_problem_in_id_order() -> None:
    committed = {1: "a.A", 2: "a.B", 3: "a.C"}
    current = {1: "a.A", 2: "a.Z", 4: "a.C"}
    problems = check_id_table(committed, current)
    assert len(problems) == 3
    assert problems[0].startswith("id 2 changed meaning: a.B -> a.Z")
    assert problems[1].startswith("id 3 (a.C)")
    assert problems[2].startswith("id 4 (a.C)")


def test_check_does_not_mutate_its_inputs() -> None:
    committed, current = dict(BASE), {**BASE, 10: "x.Y", 99: "n.N"}
    check_id_table(committed, current)
    assert committed == BASE
    assert current == {**BASE, 10: "x.Y", 99: "n.N"}
