"""Accounts behind the venue: the pre-trade check, holds on accept, release on cancel and
replace, settlement of both counterparties on a fill, and the venue's own refusals."""

from __future__ import annotations

import pytest

from examples.trade.accounts import Accounts
from examples.trade.book import (
    CxlRejResponseTo,
    Event,
    ExecType,
    ExecutionReport,
    OrderCancelReject,
    OrdStatus,
    OrdType,
    Reason,
    Side,
    Trade,
)
from examples.trade.venue import Venue

BUY, SELL = Side.BUY, Side.SELL


@pytest.fixture
def venue() -> Venue:
    venue = Venue(["XYZ", "ABC"])
    venue.accounts.open("buyer", cash=10_000)
    venue.accounts.open("seller", positions={"XYZ": 50})
    return venue


def order(
    venue: Venue,
    account: str,
    side: Side,
    price: int,
    qty: int,
    symbol: str = "XYZ",
    cl_ord_id: str = "c",
) -> list[Event]:
    return venue.new_order(
        account=account,
        cl_ord_id=cl_ord_id,
        symbol=symbol,
        side=side,
        ord_type=OrdType.LIMIT if price else OrdType.MARKET,
        price=price,
        order_qty=qty,
    )


def first_report(events: list[Event]) -> ExecutionReport:
    report = events[0]
    assert isinstance(report, ExecutionReport)
    return report


def rejected(events: list[Event]) -> Reason | None:
    report = first_report(events)
    return Reason(report.text) if report.exec_type is ExecType.REJECTED else None


def test_a_buy_holds_its_cash_and_a_cancel_releases_it(venue: Venue) -> None:
    order_id = first_report(order(venue, "buyer", BUY, 100, 30)).order_id
    assert venue.accounts.available_cash("buyer") == 7_000
    assert venue.accounts.account("buyer").cash == 10_000
    assert venue.accounts.held(order_id) == 3_000
    venue.cancel(account="buyer", cl_ord_id="x", symbol="XYZ", order_id=order_id)
    assert venue.accounts.available_cash("buyer") == 10_000
    assert venue.accounts.held(order_id) == 0


def test_a_buy_beyond_the_free_cash_is_rejected(venue: Venue) -> None:
    order(venue, "buyer", BUY, 100, 60)
    assert rejected(order(venue, "buyer", BUY, 100, 41)) is Reason.INSUFFICIENT_CASH
    assert rejected(order(venue, "buyer", BUY, 100, 40)) is None
    assert venue.accounts.available_cash("buyer") == 0
    assert len(venue.books["XYZ"]) == 2


def test_a_sell_holds_its_position_and_shorting_is_refused(venue: Venue) -> None:
    order(venue, "seller", SELL, 100, 30)
    assert venue.accounts.available_qty("seller", "XYZ") == 20
    assert rejected(order(venue, "seller", SELL, 100, 21)) is Reason.INSUFFICIENT_POSITION
    assert rejected(order(venue, "seller", SELL, 100, 1, symbol="ABC")) is (
        Reason.INSUFFICIENT_POSITION
    )
    assert rejected(order(venue, "buyer", SELL, 0, 1)) is Reason.INSUFFICIENT_POSITION


def test_a_fill_settles_both_sides_at_the_trade_price(venue: Venue) -> None:
    order(venue, "seller", SELL, 90, 10)
    events = order(venue, "buyer", BUY, 100, 15)  # 10 at 90, 5 rest at 100
    assert [e.qty for e in events if isinstance(e, Trade)] == [10]
    buyer, seller = venue.accounts.account("buyer"), venue.accounts.account("seller")
    assert (buyer.cash, buyer.positions, buyer.held_cash) == (10_000 - 900, {"XYZ": 10}, 500)
    assert (seller.cash, seller.positions, seller.held_qty) == (900, {"XYZ": 40}, {})
    assert venue.accounts.available_cash("buyer") == 10_000 - 900 - 500


def test_a_resting_sell_filled_later_releases_its_hold(venue: Venue) -> None:
    order_id = first_report(order(venue, "seller", SELL, 100, 10)).order_id
    order(venue, "buyer", BUY, 100, 4)
    assert venue.accounts.held(order_id) == 6
    assert venue.accounts.account("seller").held_qty == {"XYZ": 6}
    order(venue, "buyer", BUY, 100, 6)
    assert venue.accounts.held(order_id) == 0
    assert venue.accounts.account("seller").held_qty == {}
    assert venue.accounts.account("seller").positions == {"XYZ": 40}
    assert venue.accounts.account("seller").cash == 1_000


def test_a_market_buy_is_checked_against_what_it_would_pay(venue: Venue) -> None:
    venue.accounts.open("rich", positions={"XYZ": 200})
    order(venue, "rich", SELL, 100, 50)
    order(venue, "rich", SELL, 200, 50)
    # 50 at 100 and 25 at 200 = 10,000: exactly the buyer's cash.
    assert rejected(order(venue, "buyer", BUY, 0, 76)) is Reason.INSUFFICIENT_CASH
    events = order(venue, "buyer", BUY, 0, 75)
    assert first_report(events).exec_type is ExecType.NEW
    assert venue.accounts.account("buyer").cash == 0
    assert venue.accounts.account("buyer").positions == {"XYZ": 75}


def test_a_market_buy_beyond_the_book_costs_what_the_book_has(venue: Venue) -> None:
    order(venue, "seller", SELL, 100, 5)
    events = order(venue, "buyer", BUY, 0, 1_000)
    last = events[-1]
    assert isinstance(last, ExecutionReport)
    assert (last.ord_status, last.cum_qty, last.text) == (
        OrdStatus.CANCELED,
        5,
        Reason.IMMEDIATE_OR_CANCEL,
    )
    assert venue.accounts.account("buyer").cash == 9_500
    assert venue.accounts.available_cash("buyer") == 9_500


def test_a_replace_that_needs_more_than_is_free_is_refused(venue: Venue) -> None:
    order_id = first_report(order(venue, "buyer", BUY, 100, 50)).order_id
    [reject] = venue.replace(
        account="buyer", cl_ord_id="r", symbol="XYZ", order_id=order_id, price=100, order_qty=101
    )
    assert isinstance(reject, OrderCancelReject)
    assert (reject.cxl_rej_reason, reject.cxl_rej_response_to) == (
        Reason.INSUFFICIENT_CASH,
        CxlRejResponseTo.REPLACE,
    )
    assert venue.accounts.held(order_id) == 5_000
    [done] = venue.replace(
        account="buyer", cl_ord_id="r", symbol="XYZ", order_id=order_id, price=200, order_qty=50
    )
    assert isinstance(done, ExecutionReport) and done.exec_type is ExecType.REPLACED
    assert venue.accounts.held(order_id) == 10_000
    venue.replace(
        account="buyer", cl_ord_id="r2", symbol="XYZ", order_id=order_id, price=10, order_qty=5
    )
    assert venue.accounts.available_cash("buyer") == 10_000 - 50


def test_a_sell_replace_is_checked_against_the_position(venue: Venue) -> None:
    order_id = first_report(order(venue, "seller", SELL, 100, 40)).order_id
    [reject] = venue.replace(
        account="seller", cl_ord_id="r", symbol="XYZ", order_id=order_id, price=100, order_qty=51
    )
    assert isinstance(reject, OrderCancelReject)
    assert reject.cxl_rej_reason is Reason.INSUFFICIENT_POSITION
    [done] = venue.replace(
        account="seller", cl_ord_id="r", symbol="XYZ", order_id=order_id, price=100, order_qty=50
    )
    assert isinstance(done, ExecutionReport) and venue.accounts.available_qty("seller", "XYZ") == 0


def test_unknown_symbols_and_accounts_are_refused(venue: Venue) -> None:
    assert rejected(order(venue, "buyer", BUY, 100, 1, symbol="NOPE")) is Reason.UNKNOWN_SYMBOL
    assert rejected(order(venue, "nobody", BUY, 100, 1)) is Reason.UNKNOWN_ACCOUNT
    assert rejected(order(venue, "buyer", BUY, 0, 0)) is Reason.BAD_QTY
    for events in (
        venue.cancel(account="buyer", cl_ord_id="x", symbol="NOPE", order_id=1),
        venue.replace(
            account="buyer", cl_ord_id="x", symbol="NOPE", order_id=1, price=1, order_qty=1
        ),
    ):
        [reject] = events
        assert isinstance(reject, OrderCancelReject)
        assert (reject.cxl_rej_reason, reject.ord_status) == (
            Reason.UNKNOWN_ORDER,
            OrdStatus.REJECTED,
        )


def test_only_the_owner_may_cancel(venue: Venue) -> None:
    order_id = first_report(order(venue, "buyer", BUY, 100, 1)).order_id
    [reject] = venue.cancel(account="seller", cl_ord_id="x", symbol="XYZ", order_id=order_id)
    assert isinstance(reject, OrderCancelReject)
    assert venue.books["XYZ"].order(order_id) is not None


def test_self_trade_prevention_releases_the_cancelled_hold(venue: Venue) -> None:
    venue.accounts.deposit("seller", cash=1_000)
    bid = first_report(order(venue, "seller", BUY, 100, 10)).order_id
    assert venue.accounts.available_cash("seller") == 0
    order(venue, "seller", SELL, 100, 5)
    assert venue.books["XYZ"].order(bid) is None
    assert venue.accounts.available_cash("seller") == 1_000
    assert venue.accounts.available_qty("seller", "XYZ") == 45


def test_deposit_and_withdrawal(venue: Venue) -> None:
    order(venue, "buyer", BUY, 100, 60)
    with pytest.raises(ValueError, match="withdrawal"):
        venue.accounts.deposit("buyer", cash=-4_001)
    venue.accounts.deposit("buyer", cash=-4_000)
    venue.accounts.deposit("buyer", symbol="XYZ", qty=3)
    assert venue.accounts.available_cash("buyer") == 0
    assert venue.accounts.available_qty("buyer", "XYZ") == 3
    with pytest.raises(ValueError, match="exists"):
        venue.accounts.open("buyer")
    with pytest.raises(ValueError, match="0 or more"):
        venue.accounts.open("broke", cash=-1)


def test_accounts_snapshot_round_trip(venue: Venue) -> None:
    order(venue, "buyer", BUY, 100, 20)
    order(venue, "seller", SELL, 100, 5)
    order(venue, "seller", SELL, 101, 5)
    data = venue.accounts.snapshot()
    restored = Accounts.restore(data)
    assert restored.snapshot() == data
    assert restored.state() == venue.accounts.state()
    assert restored.available_cash("buyer") == venue.accounts.available_cash("buyer")


def test_venue_snapshot_restores_a_venue_that_answers_alike(venue: Venue) -> None:
    order(venue, "buyer", BUY, 100, 20, cl_ord_id="b1")
    order(venue, "seller", SELL, 101, 5, cl_ord_id="s1")
    order(venue, "seller", SELL, 100, 5, cl_ord_id="s2")
    restored = Venue.restore(venue.snapshot())
    assert restored.snapshot() == venue.snapshot()
    assert list(restored.books) == ["XYZ", "ABC"]
    assert order(restored, "buyer", BUY, 101, 9) == order(venue, "buyer", BUY, 101, 9)
    assert restored.snapshot() == venue.snapshot()
