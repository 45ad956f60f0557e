"""The book's rules one by one: priority, fills and their reports, market orders, cancel,
replace and its priority rule, self-trade prevention, refusals, snapshot."""

from __future__ import annotations

import msgspec
import pytest

from examples.trade.book import (
    MAX_INT64,
    Book,
    CxlRejResponseTo,
    Depth,
    Event,
    ExecType,
    ExecutionReport,
    Ids,
    Order,
    OrderCancelReject,
    OrdStatus,
    OrdType,
    PriceLevel,
    Reason,
    Side,
    TopOfBook,
    Trade,
)

BUY, SELL = Side.BUY, Side.SELL


class Desk:
    """A book and a short way to send it orders."""

    def __init__(self) -> None:
        self.ids = Ids()
        self.book = Book("XYZ", self.ids)
        self.n = 0

    def limit(self, side: Side, price: int, qty: int, account: str = "a") -> list[Event]:
        self.n += 1
        return self.book.new_order(
            cl_ord_id=f"c{self.n}",
            account=account,
            side=side,
            ord_type=OrdType.LIMIT,
            price=price,
            order_qty=qty,
        )

    def market(self, side: Side, qty: int, account: str = "a") -> list[Event]:
        self.n += 1
        return self.book.new_order(
            cl_ord_id=f"c{self.n}",
            account=account,
            side=side,
            ord_type=OrdType.MARKET,
            price=0,
            order_qty=qty,
        )

    def rest(self, side: Side, price: int, qty: int, account: str = "a") -> int:
        """Rest an order that does not cross; its order id."""
        [report] = self.limit(side, price, qty, account)
        assert isinstance(report, ExecutionReport) and report.exec_type is ExecType.NEW
        return report.order_id


def resting(desk: Desk, order_id: int) -> Order:
    order = desk.book.order(order_id)
    assert order is not None
    return order


def reports(events: list[Event]) -> list[ExecutionReport]:
    return [e for e in events if isinstance(e, ExecutionReport)]


def trades(events: list[Event]) -> list[tuple[int, int, int, int]]:
    return [
        (e.maker_order_id, e.taker_order_id, e.price, e.qty) for e in events if isinstance(e, Trade)
    ]


def states(events: list[Event]) -> list[tuple[int, ExecType, OrdStatus, int, int]]:
    return [
        (r.order_id, r.exec_type, r.ord_status, r.cum_qty, r.leaves_qty) for r in reports(events)
    ]


@pytest.fixture
def desk() -> Desk:
    return Desk()


def test_a_limit_order_that_does_not_cross_rests(desk: Desk) -> None:
    [new] = desk.limit(BUY, 100, 5)
    assert isinstance(new, ExecutionReport)
    assert (new.order_id, new.exec_id, new.cl_ord_id, new.symbol) == (1, 1, "c1", "XYZ")
    assert (new.exec_type, new.ord_status, new.leaves_qty, new.cum_qty) == (
        ExecType.NEW,
        OrdStatus.NEW,
        5,
        0,
    )
    assert desk.book.top() == TopOfBook(100, 5, None, 0)
    assert desk.book.levels(BUY) == [(100, [1])]


def test_a_crossing_order_fills_at_the_makers_price(desk: Desk) -> None:
    maker = desk.rest(SELL, 100, 5, "m")
    events = desk.limit(BUY, 103, 5, "t")
    assert trades(events) == [(maker, 2, 100, 5)]
    assert states(events) == [
        (2, ExecType.NEW, OrdStatus.NEW, 0, 5),
        (2, ExecType.TRADE, OrdStatus.FILLED, 5, 0),
        (maker, ExecType.TRADE, OrdStatus.FILLED, 5, 0),
    ]
    taker_fill, maker_fill = reports(events)[1:]
    assert (taker_fill.last_px, taker_fill.last_qty, taker_fill.price) == (100, 5, 103)
    assert taker_fill.trd_match_id == maker_fill.trd_match_id == 1
    [trade] = [e for e in events if isinstance(e, Trade)]
    assert trade.aggressor_side is BUY
    assert len(desk.book) == 0 and desk.book.top() == TopOfBook(None, 0, None, 0)


def test_a_partly_filled_taker_rests_its_remainder(desk: Desk) -> None:
    maker = desk.rest(SELL, 100, 3)
    events = desk.limit(BUY, 100, 10, "t")
    assert states(events)[1:] == [
        (2, ExecType.TRADE, OrdStatus.PARTIALLY_FILLED, 3, 7),
        (maker, ExecType.TRADE, OrdStatus.FILLED, 3, 0),
    ]
    assert desk.book.top() == TopOfBook(100, 7, None, 0)
    assert resting(desk, 2).cum_qty == 3


def test_a_partly_filled_maker_keeps_its_place(desk: Desk) -> None:
    first = desk.rest(SELL, 100, 10)
    second = desk.rest(SELL, 100, 10)
    events = desk.limit(BUY, 100, 4, "t")
    assert states(events)[-1] == (first, ExecType.TRADE, OrdStatus.PARTIALLY_FILLED, 4, 6)
    assert desk.book.levels(SELL) == [(100, [first, second])]
    assert desk.book.top() == TopOfBook(None, 0, 100, 16)


def test_price_then_time_priority(desk: Desk) -> None:
    late_good = desk.rest(SELL, 101, 1)
    early = desk.rest(SELL, 102, 1)
    late = desk.rest(SELL, 102, 1)
    best = desk.rest(SELL, 100, 1)
    assert desk.book.levels(SELL) == [(100, [best]), (101, [late_good]), (102, [early, late])]
    events = desk.limit(BUY, 102, 4, "t")
    assert trades(events) == [
        (best, 5, 100, 1),
        (late_good, 5, 101, 1),
        (early, 5, 102, 1),
        (late, 5, 102, 1),
    ]


def test_bids_are_best_highest_first(desk: Desk) -> None:
    low = desk.rest(BUY, 99, 1)
    high = desk.rest(BUY, 101, 2)
    assert desk.book.levels(BUY) == [(101, [high]), (99, [low])]
    events = desk.limit(SELL, 99, 3, "t")
    assert trades(events) == [(high, 3, 101, 2), (low, 3, 99, 1)]


def test_a_limit_order_stops_at_its_price(desk: Desk) -> None:
    desk.rest(SELL, 100, 1)
    far = desk.rest(SELL, 105, 1)
    events = desk.limit(BUY, 104, 3, "t")
    assert trades(events) == [(1, 3, 100, 1)]
    assert desk.book.levels(SELL) == [(105, [far])]
    assert desk.book.levels(BUY) == [(104, [3])]


def test_depth_aggregates_levels(desk: Desk) -> None:
    for price, qty in [(100, 1), (100, 2), (99, 4), (98, 8), (97, 16)]:
        desk.rest(BUY, price, qty)
    desk.rest(SELL, 102, 3)
    assert desk.book.depth(2) == Depth(
        [PriceLevel(100, 3, 2), PriceLevel(99, 4, 1)], [PriceLevel(102, 3, 1)]
    )
    assert len(desk.book.depth(10).bids) == 4
    assert desk.book.depth(0) == Depth([], [])


def test_a_market_order_fills_what_it_can_and_cancels_the_rest(desk: Desk) -> None:
    desk.rest(SELL, 100, 2)
    desk.rest(SELL, 110, 3)
    events = desk.market(BUY, 9, "t")
    assert trades(events) == [(1, 3, 100, 2), (2, 3, 110, 3)]
    assert states(events)[-1] == (3, ExecType.CANCELED, OrdStatus.CANCELED, 5, 0)
    cancelled = reports(events)[-1]
    assert (cancelled.text, cancelled.ord_type, cancelled.price) == (
        Reason.IMMEDIATE_OR_CANCEL,
        OrdType.MARKET,
        0,
    )
    assert len(desk.book) == 0


def test_a_market_order_on_an_empty_side_is_cancelled_unfilled(desk: Desk) -> None:
    desk.rest(BUY, 100, 2)
    events = desk.market(BUY, 5)
    assert states(events) == [
        (2, ExecType.NEW, OrdStatus.NEW, 0, 5),
        (2, ExecType.CANCELED, OrdStatus.CANCELED, 0, 0),
    ]
    assert desk.book.levels(BUY) == [(100, [1])]


def test_a_filled_market_order_ends_filled(desk: Desk) -> None:
    desk.rest(BUY, 100, 5)
    events = desk.market(SELL, 5, "t")
    assert states(events)[-2:] == [
        (2, ExecType.TRADE, OrdStatus.FILLED, 5, 0),
        (1, ExecType.TRADE, OrdStatus.FILLED, 5, 0),
    ]


def test_cancel_removes_the_order(desk: Desk) -> None:
    first = desk.rest(BUY, 100, 5)
    second = desk.rest(BUY, 100, 1)
    [report] = desk.book.cancel(order_id=first, cl_ord_id="x1", account="a")
    assert isinstance(report, ExecutionReport)
    assert (report.exec_type, report.ord_status, report.leaves_qty, report.cum_qty) == (
        ExecType.CANCELED,
        OrdStatus.CANCELED,
        0,
        0,
    )
    assert (report.cl_ord_id, report.orig_cl_ord_id, report.text) == ("x1", "c1", "requested")
    assert desk.book.levels(BUY) == [(100, [second])]
    assert desk.book.top() == TopOfBook(100, 1, None, 0)
    desk.book.cancel(order_id=second, cl_ord_id="x2", account="a")
    assert desk.book.levels(BUY) == [] and desk.book.top() == TopOfBook(None, 0, None, 0)


def test_cancelling_a_partly_filled_order(desk: Desk) -> None:
    maker = desk.rest(SELL, 100, 5)
    desk.limit(BUY, 100, 2, "t")
    [report] = desk.book.cancel(order_id=maker, cl_ord_id="x", account="a")
    assert states([report]) == [(maker, ExecType.CANCELED, OrdStatus.CANCELED, 2, 0)]


@pytest.mark.parametrize("case", ["never", "done", "other account"])
def test_cancel_of_an_order_not_live_for_this_account_is_refused(desk: Desk, case: str) -> None:
    order_id = desk.rest(SELL, 100, 5)
    account = "a"
    if case == "never":
        order_id = 99
    elif case == "done":
        desk.limit(BUY, 100, 5, "t")
    else:
        account = "b"
    [reject] = desk.book.cancel(order_id=order_id, cl_ord_id="x", account=account)
    assert reject == OrderCancelReject(
        order_id=order_id,
        cl_ord_id="x",
        orig_cl_ord_id="",
        account=account,
        symbol="XYZ",
        ord_status=OrdStatus.REJECTED,
        cxl_rej_response_to=CxlRejResponseTo.CANCEL,
        cxl_rej_reason=Reason.UNKNOWN_ORDER,
    )
    assert desk.book.order(1) is None if case == "done" else desk.book.order(1) is not None


def test_replace_down_in_qty_keeps_priority(desk: Desk) -> None:
    first = desk.rest(BUY, 100, 5)
    second = desk.rest(BUY, 100, 5)
    [report] = desk.book.replace(
        order_id=first, cl_ord_id="r1", account="a", price=100, order_qty=3
    )
    assert isinstance(report, ExecutionReport)
    assert (report.exec_type, report.ord_status, report.order_qty, report.leaves_qty) == (
        ExecType.REPLACED,
        OrdStatus.NEW,
        3,
        3,
    )
    assert (report.order_id, report.cl_ord_id, report.orig_cl_ord_id) == (first, "r1", "c1")
    assert desk.book.levels(BUY) == [(100, [first, second])]
    assert desk.book.top() == TopOfBook(100, 8, None, 0)


@pytest.mark.parametrize(("price", "qty"), [(100, 6), (101, 5), (99, 5), (101, 3)])
def test_replace_up_in_qty_or_to_another_price_loses_priority(
    desk: Desk, price: int, qty: int
) -> None:
    first = desk.rest(BUY, 100, 5)
    desk.rest(BUY, 99, 5)
    desk.rest(BUY, 101, 5)
    desk.book.replace(order_id=first, cl_ord_id="r", account="a", price=price, order_qty=qty)
    [ids] = [ids for level_price, ids in desk.book.levels(BUY) if level_price == price]
    assert ids[-1] == first
    assert sum(level.qty for level in desk.book.depth(9).bids) == 10 + qty


def test_a_replace_that_crosses_trades(desk: Desk) -> None:
    bid = desk.rest(BUY, 100, 5)
    ask = desk.rest(SELL, 102, 3, "m")
    events = desk.book.replace(order_id=bid, cl_ord_id="r", account="a", price=102, order_qty=5)
    assert trades(events) == [(ask, bid, 102, 3)]
    assert states(events)[:2] == [
        (bid, ExecType.REPLACED, OrdStatus.NEW, 0, 5),
        (bid, ExecType.TRADE, OrdStatus.PARTIALLY_FILLED, 3, 2),
    ]
    assert desk.book.levels(BUY) == [(102, [bid])] and desk.book.levels(SELL) == []


def test_replace_of_a_partly_filled_order_counts_the_filled_part(desk: Desk) -> None:
    bid = desk.rest(BUY, 100, 10)
    desk.limit(SELL, 100, 4, "t")
    [report] = desk.book.replace(order_id=bid, cl_ord_id="r", account="a", price=100, order_qty=6)
    assert states([report]) == [(bid, ExecType.REPLACED, OrdStatus.PARTIALLY_FILLED, 4, 2)]
    [reject] = desk.book.replace(order_id=bid, cl_ord_id="r2", account="a", price=100, order_qty=4)
    assert isinstance(reject, OrderCancelReject)
    assert (reject.cxl_rej_reason, reject.ord_status, reject.orig_cl_ord_id) == (
        Reason.QTY_NOT_ABOVE_FILLED,
        OrdStatus.PARTIALLY_FILLED,
        "r",
    )
    assert resting(desk, bid).leaves_qty == 2


@pytest.mark.parametrize(
    ("order_id", "account", "price", "qty", "reason"),
    [
        (9, "a", 100, 5, Reason.UNKNOWN_ORDER),
        (1, "b", 100, 5, Reason.UNKNOWN_ORDER),
        (1, "a", 0, 5, Reason.BAD_PRICE),
        (1, "a", MAX_INT64 + 1, 5, Reason.BAD_PRICE),
        (1, "a", 100, 0, Reason.BAD_QTY),
        (1, "a", 100, -3, Reason.BAD_QTY),
    ],
)
def test_bad_replaces_are_refused(
    desk: Desk, order_id: int, account: str, price: int, qty: int, reason: Reason
) -> None:
    desk.rest(BUY, 100, 5)
    [reject] = desk.book.replace(
        order_id=order_id, cl_ord_id="r", account=account, price=price, order_qty=qty
    )
    assert isinstance(reject, OrderCancelReject)
    assert reject.cxl_rej_reason is reason
    assert reject.cxl_rej_response_to is CxlRejResponseTo.REPLACE
    assert resting(desk, 1).order_qty == 5


@pytest.mark.parametrize(
    ("ord_type", "price", "qty", "reason"),
    [
        (OrdType.LIMIT, 100, 0, Reason.BAD_QTY),
        (OrdType.LIMIT, 100, -1, Reason.BAD_QTY),
        (OrdType.LIMIT, 100, MAX_INT64 + 1, Reason.BAD_QTY),
        (OrdType.LIMIT, 0, 5, Reason.BAD_PRICE),
        (OrdType.LIMIT, -100, 5, Reason.BAD_PRICE),
        (OrdType.MARKET, 100, 5, Reason.BAD_PRICE),
    ],
)
def test_bad_new_orders_are_rejected(
    desk: Desk, ord_type: OrdType, price: int, qty: int, reason: Reason
) -> None:
    desk.rest(SELL, 100, 5, "m")
    [report] = desk.book.new_order(
        cl_ord_id="c", account="a", side=BUY, ord_type=ord_type, price=price, order_qty=qty
    )
    assert isinstance(report, ExecutionReport)
    assert (report.exec_type, report.ord_status, report.order_id, report.text) == (
        ExecType.REJECTED,
        OrdStatus.REJECTED,
        0,
        reason,
    )
    assert desk.book.levels(SELL) == [(100, [1])]
    assert desk.ids.order_id == 1  # a rejected order gets no order id


def test_self_trade_cancels_the_resting_order_and_matching_goes_on(desk: Desk) -> None:
    mine = desk.rest(SELL, 100, 5, "a")
    theirs = desk.rest(SELL, 100, 5, "b")
    events = desk.limit(BUY, 100, 3, "a")
    assert states(events) == [
        (3, ExecType.NEW, OrdStatus.NEW, 0, 3),
        (mine, ExecType.CANCELED, OrdStatus.CANCELED, 0, 0),
        (3, ExecType.TRADE, OrdStatus.FILLED, 3, 0),
        (theirs, ExecType.TRADE, OrdStatus.PARTIALLY_FILLED, 3, 2),
    ]
    assert reports(events)[1].text == Reason.SELF_TRADE
    assert trades(events) == [(theirs, 3, 100, 3)]
    assert desk.book.levels(SELL) == [(100, [theirs])]


def test_self_trade_prevention_empties_a_level(desk: Desk) -> None:
    desk.rest(SELL, 100, 5, "a")
    events = desk.limit(BUY, 101, 3, "a")
    assert desk.book.levels(SELL) == []
    assert desk.book.levels(BUY) == [(101, [2])]
    assert trades(events) == []


def test_ids_are_shared_and_increase_across_books() -> None:
    ids = Ids()
    one, two = Book("A", ids), Book("B", ids)
    [a], [b] = (
        book.new_order(
            cl_ord_id="c", account="a", side=BUY, ord_type=OrdType.LIMIT, price=1, order_qty=1
        )
        for book in (one, two)
    )
    assert isinstance(a, ExecutionReport) and isinstance(b, ExecutionReport)
    assert (a.order_id, a.exec_id, b.order_id, b.exec_id) == (1, 1, 2, 2)
    assert ids == Ids(order_id=2, exec_id=2, trd_match_id=0)


def test_sweep_is_what_a_market_order_would_fill(desk: Desk) -> None:
    desk.rest(SELL, 100, 2, "m")
    desk.rest(SELL, 101, 2, "t")  # the taker's own: skipped
    desk.rest(SELL, 102, 5, "m")
    assert desk.book.sweep(BUY, 4, "t") == (4, 2 * 100 + 2 * 102)
    assert desk.book.sweep(BUY, 20, "t") == (7, 2 * 100 + 5 * 102)
    assert desk.book.sweep(SELL, 3, "t") == (0, 0)
    events = desk.market(BUY, 4, "t")
    assert sum(q * p for _, _, p, q in trades(events)) == 2 * 100 + 2 * 102


def test_snapshot_restores_levels_queues_and_fills(desk: Desk) -> None:
    desk.rest(BUY, 100, 5)
    desk.rest(BUY, 100, 3, "b")
    desk.rest(BUY, 99, 2)
    desk.rest(SELL, 103, 4, "b")
    desk.limit(SELL, 100, 2, "c")  # partly fills order 1
    data = desk.book.snapshot()
    ids = msgspec.structs.replace(desk.ids)  # the venue snapshots the ids with the books
    restored = Book.restore(data, ids)
    assert restored.snapshot() == data
    assert restored.levels(BUY) == desk.book.levels(BUY) == [(100, [1, 2]), (99, [3])]
    assert restored.levels(SELL) == [(103, [4])]
    assert restored.depth(5) == desk.book.depth(5)
    assert restored.order(1) == desk.book.order(1)
    assert resting(desk, 1).cum_qty == 2
    after = Desk()
    after.book, after.ids, after.n = restored, ids, desk.n
    assert after.limit(SELL, 99, 10, "c") == desk.limit(SELL, 99, 10, "c")
