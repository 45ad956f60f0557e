"""The store bench script still runs (at a toy size; its figures go to docs/store.md)."""

from __future__ import annotations

import pytest

from tests.store.bench_store import _print, run


async def test_bench_script_runs(capsys: pytest.CaptureFixture[str]) -> None:
    result = await run(sessions=200, ops=300)
    assert result["restore"]["keys"] == 400
    assert set(result["memory"]) >= {"get", "set", "compare_and_set"}
    _print(result)
    assert "restore: median" in capsys.readouterr().out
