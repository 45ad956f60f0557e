"""The journal bench still runs (at a toy size; its figures go to docs/journal.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serverside.journal_bench import MODES, _print, run


async def test_bench_script_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = await run(seconds=0.05, directory=str(tmp_path), concurrencies=(1, 8), bare_syncs=5)
    assert list(result["modes"]) == [label for label, _, _ in MODES]
    for label, rows in result["modes"].items():
        assert [row["concurrency"] for row in rows] == [1, 8]
        for row in rows:
            assert row["appends"] > 0
            assert (row["fsyncs"] > 0) == (label != "no fsync")
    assert result["modes"]["fsync each"][1]["appends_per_fsync"] == 1.0
    _print(result)
    assert "bare write+fdatasync" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # its journals are removed
