"""The book bench still runs (at a toy size; its figures go to docs/trade.md)."""

from __future__ import annotations

import pytest

from bench.serverside.book_bench import _print, main, make_stream, run


def test_bench_runs_every_kind_of_request(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(orders=600, depth=200, seed=3, repeat=2)
    assert set(result["requests"]) == {"limit", "market", "cancel", "replace"}
    assert sum(result["requests"].values()) == 600
    for label in ("book", "venue"):
        row = result[label]
        assert row["resting_before"] == 200
        assert row["orders_per_s"] > 0 and row["events_per_order"] >= 1
    # The venue's accounts are rich enough never to refuse, so it matches like the book.
    assert result["venue"]["resting_after"] == result["book"]["resting_after"]
    assert result["venue"]["events_per_order"] == result["book"]["events_per_order"]
    _print(result)
    assert "orders/s" in capsys.readouterr().out
    main(["--orders", "50", "--depth", "20", "--repeat", "1", "--json"])
    assert '"orders":50' in capsys.readouterr().out


def test_the_stream_is_the_same_for_the_same_seed() -> None:
    assert make_stream(50, 300, 7) == make_stream(50, 300, 7)
    assert make_stream(50, 300, 7) != make_stream(50, 300, 8)
