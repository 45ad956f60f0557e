"""The venue's commands (examples/trade/commands.py): the memory of client order ids
is bounded, oldest forgotten first, and survives a snapshot."""

from __future__ import annotations

import pytest

from examples.trade import commands
from examples.trade.book import ExecType, OrdType, Side
from examples.trade.commands import Ledger, NewOrder, Open
from examples.trade.venue import Venue


def test_the_remembered_client_order_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "MAX_REMEMBERED", 3)
    ledger = Ledger(Venue(["XYZ"]))
    ledger.apply(Open("alice", 10**9, {"XYZ": 0}))
    for i in range(5):
        ledger.apply(NewOrder("alice", f"c{i}", "XYZ", Side.BUY, OrdType.LIMIT, 100, 1))
    assert [key for _, key in ledger.remembered] == ["c2", "c3", "c4"]
    assert ledger.seen("alice", "c0") is None
    seen = ledger.seen("alice", "c4")
    assert seen is not None and seen.exec_type is ExecType.NEW
    again = Ledger.restore(ledger.snapshot())
    assert list(again.remembered) == list(ledger.remembered)
