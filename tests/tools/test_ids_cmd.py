"""`tickwire ids --app`: an application's message IDs checked against its own committed
table, as the system's are against protocol/message_ids.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protocol.id_table import parse_id_table
from tools.cli import main
from tools.ids_cmd import problems_of

TESTAPP = "tests.integration.testapp:make_app"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("spec", "folder", "sample"),
    [
        ("examples.chat.service:app", "chat", "chat.JoinRequest"),
        ("examples.game:app", "game", "game.MatchState"),
        ("examples.trade:app", "trade", "trade.NewOrderSingle"),
    ],
)
def test_the_examples_match_their_committed_tables(spec: str, folder: str, sample: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "ids", "--app", spec, "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    table = parse_id_table((ROOT / f"examples/{folder}/message_ids.txt").read_text())
    assert sample in table.values()
    assert not any(name.startswith("system.") for name in table.values())


def test_a_missing_table_is_reported_and_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "ids.txt"
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--check"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--write"]) == 0
    written = parse_id_table(table.read_text())
    assert written[1000] == "testapp.SleepRequest"
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--check"]) == 0
    assert problems_of([TESTAPP], table) == []


def test_a_changed_id_fails_the_check_and_is_never_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "ids.txt"
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--write"]) == 0
    edited = table.read_text().replace("1000 testapp.SleepRequest", "1000 testapp.Old")
    table.write_text(edited)
    capsys.readouterr()
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--check"]) == 1
    err = capsys.readouterr().err
    assert "id 1000 changed meaning: testapp.Old -> testapp.SleepRequest" in err
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--write"]) == 1
    assert table.read_text() == edited  # a change is never written over


def test_a_new_message_is_added_once_committed_ones_stay(tmp_path: Path) -> None:
    table = tmp_path / "ids.txt"
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--write"]) == 0
    lines = table.read_text().splitlines()
    dropped = next(line for line in lines if line.startswith("1000 "))
    table.write_text("\n".join(line for line in lines if line != dropped) + "\n")
    [problem] = problems_of([TESTAPP], table)
    assert "id 1000 (testapp.SleepRequest) is not in the committed table" in problem
    assert main(["ids", "--app", TESTAPP, "--table", str(table), "--write"]) == 0
    assert dropped in table.read_text().splitlines()


def test_write_needs_an_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ids", "--write"]) == 2
    assert "--app" in capsys.readouterr().err
