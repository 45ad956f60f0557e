"""The venue against a naive reference model, on random streams of orders (Hypothesis).

The model keeps each symbol's resting orders in one list and, for every incoming order,
sorts the crossing ones by price then arrival and walks them; holds are summed from the
resting orders each time. Nothing of it is shared with examples/trade, so agreeing after
every step (fills in order, refusals, the resting orders of every level in time order,
cash and positions) checks the book's levels, queues, priority rules and bookkeeping.
The invariants are checked on the venue alone: the book never crossed, cum_qty +
leaves_qty == order_qty for live orders, fills conserve quantity, cash and positions
conserved, nothing spent beyond what an account had; and a snapshot restores the same
venue, and replaying the commands rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from examples.trade.book import (
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

SYMBOLS = ["AAA", "BBB", "CCC"]
ACCOUNTS = ["a", "b", "c"]
CASH = 6_000
POSITION = 60
prices = st.integers(97, 103)
qtys = st.integers(1, 30)
sides = st.sampled_from([Side.BUY, Side.SELL])
accounts = st.sampled_from(ACCOUNTS)

Fill = tuple[int, int, int, int]  # maker order id, taker order id, price, qty


@dataclass
class RefOrder:
    order_id: int
    account: str
    side: Side
    price: int
    order_qty: int
    cum_qty: int
    seq: int

    @property
    def leaves(self) -> int:
        return self.order_qty - self.cum_qty


@dataclass
class Outcome:
    fills: list[Fill] = field(default_factory=list)
    refused: Reason | None = None


class Reference:
    """The venue's rules, written the slow and obvious way."""

    def __init__(self, symbols: list[str]) -> None:
        self.resting: dict[str, list[RefOrder]] = {s: [] for s in symbols}
        self.cash = dict.fromkeys(ACCOUNTS, CASH)
        self.position = {(a, s): POSITION for a in ACCOUNTS for s in symbols}
        self.last_order_id = 0
        self.seq = 0

    def free_cash(self, account: str) -> int:
        held = sum(
            o.price * o.leaves
            for orders in self.resting.values()
            for o in orders
            if o.account == account and o.side is Side.BUY
        )
        return self.cash[account] - held

    def free_qty(self, account: str, symbol: str) -> int:
        held = sum(
            o.leaves for o in self.resting[symbol] if o.account == account and o.side is Side.SELL
        )
        return self.position[account, symbol] - held

    def crossing(self, symbol: str, side: Side, limit: int | None) -> list[RefOrder]:
        def crosses(o: RefOrder) -> bool:
            if o.side is side:
                return False
            if limit is None:
                return True
            return o.price <= limit if side is Side.BUY else o.price >= limit

        found = [o for o in self.resting[symbol] if crosses(o)]
        sign = 1 if side is Side.BUY else -1
        return sorted(found, key=lambda o: (sign * o.price, o.seq))

    def match(self, symbol: str, taker: RefOrder, limit: int | None) -> list[Fill]:
        fills: list[Fill] = []
        for maker in self.crossing(symbol, taker.side, limit):
            if not taker.leaves:
                break
            self.resting[symbol].remove(maker)
            if maker.account == taker.account:
                continue  # self-trade prevention: the resting order goes
            qty = min(taker.leaves, maker.leaves)
            taker.cum_qty += qty
            maker.cum_qty += qty
            buyer, seller = (taker, maker) if taker.side is Side.BUY else (maker, taker)
            self.cash[buyer.account] -= qty * maker.price
            self.cash[seller.account] += qty * maker.price
            self.position[buyer.account, symbol] += qty
            self.position[seller.account, symbol] -= qty
            fills.append((maker.order_id, taker.order_id, maker.price, qty))
            if maker.leaves:
                self.resting[symbol].append(maker)
        return fills

    def new(self, account: str, symbol: str, side: Side, price: int, qty: int) -> Outcome:
        market = price == 0
        if side is Side.SELL:
            enough = qty <= self.free_qty(account, symbol)
        elif not market:
            enough = price * qty <= self.free_cash(account)
        else:
            left, cost = qty, 0
            for o in self.crossing(symbol, side, None):
                if o.account != account and left:
                    take = min(left, o.leaves)
                    left -= take
                    cost += take * o.price
            enough = cost <= self.free_cash(account)
        if not enough:
            return Outcome(
                refused=Reason.INSUFFICIENT_POSITION
                if side is Side.SELL
                else Reason.INSUFFICIENT_CASH
            )
        self.last_order_id += 1
        self.seq += 1
        taker = RefOrder(self.last_order_id, account, side, price, qty, 0, self.seq)
        fills = self.match(symbol, taker, None if market else price)
        if taker.leaves and not market:
            self.resting[symbol].append(taker)
        return Outcome(fills)

    def find(self, account: str, symbol: str, order_id: int) -> RefOrder | None:
        for o in self.resting[symbol]:
            if o.order_id == order_id and o.account == account:
                return o
        return None

    def cancel(self, account: str, symbol: str, order_id: int) -> Outcome:
        order = self.find(account, symbol, order_id)
        if order is None:
            return Outcome(refused=Reason.UNKNOWN_ORDER)
        self.resting[symbol].remove(order)
        return Outcome()

    def replace(
        self, account: str, symbol: str, order_id: int, price: int, order_qty: int
    ) -> Outcome:
        order = self.find(account, symbol, order_id)
        if order is None:
            return Outcome(refused=Reason.UNKNOWN_ORDER)
        if order_qty <= order.cum_qty:
            return Outcome(refused=Reason.QTY_NOT_ABOVE_FILLED)
        leaves = order_qty - order.cum_qty
        if order.side is Side.BUY:
            grows = price * leaves - order.price * order.leaves
            if grows > self.free_cash(account):
                return Outcome(refused=Reason.INSUFFICIENT_CASH)
        elif leaves - order.leaves > self.free_qty(account, symbol):
            return Outcome(refused=Reason.INSUFFICIENT_POSITION)
        if price == order.price and leaves <= order.leaves:
            order.order_qty = order_qty
            return Outcome()
        self.resting[symbol].remove(order)
        order.price, order.order_qty = price, order_qty
        self.seq += 1
        order.seq = self.seq
        fills = self.match(symbol, order, price)
        if order.leaves:
            self.resting[symbol].append(order)
        return Outcome(fills)

    def levels(self, symbol: str, side: Side) -> list[tuple[int, list[int]]]:
        by_price: dict[int, list[RefOrder]] = {}
        for o in self.resting[symbol]:
            if o.side is side:
                by_price.setdefault(o.price, []).append(o)
        best_first = sorted(by_price, reverse=side is Side.BUY)
        return [
            (p, [o.order_id for o in sorted(by_price[p], key=lambda o: o.seq)]) for p in best_first
        ]


def outcome_of(events: list[Event]) -> Outcome:
    fills = [
        (e.maker_order_id, e.taker_order_id, e.price, e.qty) for e in events if isinstance(e, Trade)
    ]
    first = events[0]
    refused: Reason | None = None
    if isinstance(first, OrderCancelReject):
        refused = first.cxl_rej_reason
    elif isinstance(first, ExecutionReport) and first.exec_type is ExecType.REJECTED:
        refused = Reason(first.text)
    return Outcome(fills, refused)


class VenueVsReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.symbols: list[str] = []
        self.venue = Venue([])
        self.ref = Reference([])
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.events: list[list[Event]] = []

    @initialize(n=st.integers(1, 3))
    def open_venue(self, n: int) -> None:
        self.symbols = SYMBOLS[:n]
        self.venue = Venue(self.symbols)
        for account in ACCOUNTS:
            self.venue.accounts.open(
                account, cash=CASH, positions=dict.fromkeys(self.symbols, POSITION)
            )
        self.ref = Reference(self.symbols)

    def send(self, method: str, **kwargs: Any) -> list[Event]:
        events: list[Event] = getattr(self.venue, method)(**kwargs)
        self.commands.append((method, kwargs))
        self.events.append(events)
        self.check_events(events)
        return events

    def symbol(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.symbols))

    def target(self, data: st.DataObject) -> tuple[str, str, int]:
        """Account, symbol and order id of a request about an order: mostly a live order
        of its owner, else anything (an order done, of another account, or never made)."""
        live = [
            (order.account, symbol, order.order_id)
            for symbol, book in self.venue.books.items()
            for order in book.orders()
        ]
        if data.draw(st.sampled_from([True, True, True, True, False])):
            return data.draw(st.sampled_from(live))
        issued = self.venue.ids.order_id
        return data.draw(accounts), self.symbol(data), data.draw(st.integers(0, issued + 2))

    @rule(data=st.data(), account=accounts, side=sides, price=prices, qty=qtys)
    def new_limit(
        self, data: st.DataObject, account: str, side: Side, price: int, qty: int
    ) -> None:
        symbol = self.symbol(data)
        events = self.send(
            "new_order",
            account=account,
            cl_ord_id=f"n{len(self.commands)}",
            symbol=symbol,
            side=side,
            ord_type=OrdType.LIMIT,
            price=price,
            order_qty=qty,
        )
        assert outcome_of(events) == self.ref.new(account, symbol, side, price, qty)

    @rule(data=st.data(), account=accounts, side=sides, qty=st.integers(1, 60))
    def new_market(self, data: st.DataObject, account: str, side: Side, qty: int) -> None:
        symbol = self.symbol(data)
        events = self.send(
            "new_order",
            account=account,
            cl_ord_id=f"m{len(self.commands)}",
            symbol=symbol,
            side=side,
            ord_type=OrdType.MARKET,
            price=0,
            order_qty=qty,
        )
        assert outcome_of(events) == self.ref.new(account, symbol, side, 0, qty)
        first = events[0]
        assert isinstance(first, ExecutionReport)
        mine = [
            e for e in events if isinstance(e, ExecutionReport) and e.order_id == first.order_id
        ]
        assert mine[-1].ord_status in (OrdStatus.FILLED, OrdStatus.CANCELED, OrdStatus.REJECTED)
        assert mine[-1].leaves_qty == 0  # a market order never rests

    @precondition(lambda self: any(self.venue.books.values()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        account, symbol, order_id = self.target(data)
        events = self.send(
            "cancel",
            account=account,
            cl_ord_id=f"x{len(self.commands)}",
            symbol=symbol,
            order_id=order_id,
        )
        assert outcome_of(events) == self.ref.cancel(account, symbol, order_id)

    @precondition(lambda self: any(self.venue.books.values()))
    @rule(data=st.data(), price=prices, qty=st.integers(1, 40))
    def replace(self, data: st.DataObject, price: int, qty: int) -> None:
        account, symbol, order_id = self.target(data)
        events = self.send(
            "replace",
            account=account,
            cl_ord_id=f"r{len(self.commands)}",
            symbol=symbol,
            order_id=order_id,
            price=price,
            order_qty=qty,
        )
        assert outcome_of(events) == self.ref.replace(account, symbol, order_id, price, qty)

    @precondition(lambda self: bool(self.symbols))
    @rule()
    def snapshot_and_restore(self) -> None:
        data = self.venue.snapshot()
        self.venue = Venue.restore(data)
        assert self.venue.snapshot() == data

    # -- what every step must leave true -------------------------------------------------

    def check_events(self, events: list[Event]) -> None:
        """Each fill moves the same quantity and value on both sides; reports add up."""
        reports = [e for e in events if isinstance(e, ExecutionReport)]
        for report in reports:
            if report.ord_status in (OrdStatus.NEW, OrdStatus.PARTIALLY_FILLED):
                assert report.cum_qty + report.leaves_qty == report.order_qty
            if report.ord_status is OrdStatus.FILLED:
                assert (report.leaves_qty, report.cum_qty) == (0, report.order_qty)
        for trade in (e for e in events if isinstance(e, Trade)):
            pair = [r for r in reports if r.trd_match_id == trade.trd_match_id]
            assert [r.order_id for r in pair] == [trade.taker_order_id, trade.maker_order_id]
            assert {r.side for r in pair} == {Side.BUY, Side.SELL}
            assert all((r.last_qty, r.last_px) == (trade.qty, trade.price) for r in pair)
        taker_fills: dict[int, int] = {}
        for trade in (e for e in events if isinstance(e, Trade)):
            taker_fills[trade.taker_order_id] = taker_fills.get(trade.taker_order_id, 0) + trade.qty
        for order_id, qty in taker_fills.items():
            mine = [r for r in reports if r.order_id == order_id and r.exec_type is ExecType.TRADE]
            assert sum(r.last_qty for r in mine) == qty
        exec_ids = [r.exec_id for r in reports]
        assert exec_ids == sorted(set(exec_ids))

    @invariant()
    def books_agree_with_the_reference(self) -> None:
        for symbol in self.symbols:
            book = self.venue.books[symbol]
            for side in Side:
                assert book.levels(side) == self.ref.levels(symbol, side)

    @invariant()
    def books_are_never_crossed(self) -> None:
        for book in self.venue.books.values():
            top = book.top()
            if top.bid_px is not None and top.ask_px is not None:
                assert top.bid_px < top.ask_px

    @invariant()
    def live_orders_add_up(self) -> None:
        for book in self.venue.books.values():
            for order in book.orders():
                assert order.leaves_qty > 0
                assert order.cum_qty + order.leaves_qty == order.order_qty
            leaves = {order.order_id: order.leaves_qty for order in book.orders()}
            depth = book.depth(100)
            for side, levels in ((Side.BUY, depth.bids), (Side.SELL, depth.asks)):
                by_level = book.levels(side)
                assert [(lv.price, lv.orders) for lv in levels] == [
                    (price, len(ids)) for price, ids in by_level
                ]
                for level, (_, ids) in zip(levels, by_level, strict=True):
                    assert level.qty == sum(leaves[i] for i in ids)

    @invariant()
    def cash_and_positions_are_conserved(self) -> None:
        accounts = self.venue.accounts
        assert sum(accounts.account(a).cash for a in ACCOUNTS) == CASH * len(ACCOUNTS)
        for symbol in self.symbols:
            total = sum(accounts.account(a).positions.get(symbol, 0) for a in ACCOUNTS)
            assert total == POSITION * len(ACCOUNTS)
        for a in ACCOUNTS:
            assert accounts.account(a).cash == self.ref.cash[a]
            assert accounts.available_cash(a) == self.ref.free_cash(a) >= 0
            for symbol in self.symbols:
                assert accounts.account(a).positions[symbol] == self.ref.position[a, symbol]
                assert accounts.available_qty(a, symbol) == self.ref.free_qty(a, symbol) >= 0

    @invariant()
    def a_snapshot_round_trips(self) -> None:
        data = self.venue.snapshot()
        assert Venue.restore(data).snapshot() == data

    def teardown(self) -> None:
        """Replaying the same commands on a fresh venue gives the same events and state."""
        if not self.symbols:
            return
        again = Venue(self.symbols)
        for account in ACCOUNTS:
            again.accounts.open(account, cash=CASH, positions=dict.fromkeys(self.symbols, POSITION))
        for (method, kwargs), events in zip(self.commands, self.events, strict=True):
            assert getattr(again, method)(**kwargs) == events
        assert again.snapshot() == self.venue.snapshot()


VenueVsReference.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_venue_against_the_reference = VenueVsReference.TestCase
