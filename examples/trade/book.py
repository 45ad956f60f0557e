"""The order book of one symbol: price-time priority, pure and deterministic (docs/trade.md).

No I/O, no clock, no randomness: the same operations on the same state give the same
events and the same state, so the journal can rebuild a book by replaying the commands it
stored, and a snapshot plus the commands after it gives the book the replay would.

Structure, chosen for the operations a venue does per message:

- each side is a `SortedDict` from price key to `Level`, the key being the price for asks
  and minus the price for bids, so the best level of either side is the first item
  (O(1)) and walking the key order walks the side in priority order; adding or removing
  a level is O(log n) in the number of levels;
- a `Level` is an `OrderedDict` of the orders resting at one price, in arrival order,
  plus their total quantity: the head is O(1), and a cancel by order id is O(1) (the
  C-implemented linked list of OrderedDict, where a plain dict would scan past the
  deleted slots at its front to find the head);
- `_orders` maps every resting order's id to its `Order`, so cancel and replace find an
  order without searching.

Every operation returns the events it caused, in the order they happened: FIX 4.4
ExecutionReports (one per order affected, the taker's before the maker's on a fill), the
`Trade` of each match, and an `OrderCancelReject` for a cancel or replace refused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple

import msgspec
from sortedcontainers import SortedDict

#: Prices (in ticks) and quantities travel as int64: anything outside 1..MAX is refused.
MAX_INT64 = 2**63 - 1


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrdType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class ExecType(StrEnum):
    NEW = "new"
    TRADE = "trade"
    CANCELED = "canceled"
    REPLACED = "replaced"
    REJECTED = "rejected"


class OrdStatus(StrEnum):
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"


class CxlRejResponseTo(StrEnum):
    CANCEL = "cancel"
    REPLACE = "replace"


class Reason(StrEnum):
    """Why an order was cancelled or a request refused (the `text` of a report)."""

    # Cancelled.
    REQUESTED = "requested"  # an OrderCancelRequest
    IMMEDIATE_OR_CANCEL = "immediate_or_cancel"  # what a market order could not fill
    SELF_TRADE = "self_trade"  # resting order met by an order of the same account
    # Refused.
    BAD_QTY = "bad_qty"
    BAD_PRICE = "bad_price"
    QTY_NOT_ABOVE_FILLED = "qty_not_above_filled"  # a replace to order_qty <= cum_qty
    UNKNOWN_ORDER = "unknown_order"
    UNKNOWN_SYMBOL = "unknown_symbol"
    UNKNOWN_ACCOUNT = "unknown_account"
    INSUFFICIENT_CASH = "insufficient_cash"
    INSUFFICIENT_POSITION = "insufficient_position"


class ExecutionReport(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What happened to one order, with everything a FIX 4.4 ExecutionReport (35=8) says.

    `price` is the order's limit price, 0 for a market order; `order_id` is 0 for an order
    rejected before it was given one. `orig_cl_ord_id` is set on Replaced and on a
    requested Canceled: the cl_ord_id the request replaced. `trd_match_id` ties the two
    reports of one match to its `Trade`.
    """

    exec_id: int
    exec_type: ExecType
    ord_status: OrdStatus
    order_id: int
    cl_ord_id: str
    account: str
    symbol: str
    side: Side
    ord_type: OrdType
    price: int
    order_qty: int
    last_qty: int = 0
    last_px: int = 0
    leaves_qty: int
    cum_qty: int
    orig_cl_ord_id: str = ""
    trd_match_id: int = 0
    text: str = ""


class Trade(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One match, for market data (no accounts): at the maker's price."""

    trd_match_id: int
    symbol: str
    price: int
    qty: int
    maker_order_id: int
    taker_order_id: int
    aggressor_side: Side


class OrderCancelReject(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A cancel or replace refused (FIX 35=9); the order, if there is one, is unchanged.

    `ord_status` is the order's status, REJECTED when the venue knows no such order of
    this account (FIX's convention for an unknown order).
    """

    order_id: int
    cl_ord_id: str
    orig_cl_ord_id: str
    account: str
    symbol: str
    ord_status: OrdStatus
    cxl_rej_response_to: CxlRejResponseTo
    cxl_rej_reason: Reason


Event = ExecutionReport | Trade | OrderCancelReject


class Ids(msgspec.Struct, kw_only=True):
    """The last order id, exec id and match id handed out, shared by every book of a venue
    so that ids are unique across symbols; injected so that a snapshot or the journal can
    carry them on (ids start at 1; 0 means none)."""

    order_id: int = 0
    exec_id: int = 0
    trd_match_id: int = 0

    def next_order_id(self) -> int:
        self.order_id += 1
        return self.order_id

    def next_exec_id(self) -> int:
        self.exec_id += 1
        return self.exec_id

    def next_trd_match_id(self) -> int:
        self.trd_match_id += 1
        return self.trd_match_id


class Order(msgspec.Struct, kw_only=True, gc=False):
    """A resting order. The book owns it: read it, never change it from outside."""

    order_id: int
    cl_ord_id: str
    account: str
    side: Side
    price: int
    order_qty: int
    cum_qty: int = 0
    leaves_qty: int


class Level:
    """The orders resting at one price, oldest first, and their total leaves_qty."""

    __slots__ = ("orders", "qty")

    def __init__(self) -> None:
        self.orders: OrderedDict[int, Order] = OrderedDict()
        self.qty = 0


class PriceLevel(NamedTuple):
    price: int
    qty: int
    orders: int


class TopOfBook(NamedTuple):
    """The best bid and ask with the quantity at each; None and 0 for an empty side."""

    bid_px: int | None
    bid_qty: int
    ask_px: int | None
    ask_qty: int


class Depth(NamedTuple):
    bids: list[PriceLevel]
    asks: list[PriceLevel]


class BookState(msgspec.Struct, kw_only=True):
    """A book's content: its resting orders, bids then asks, each side in priority order,
    so that adding them in this order rebuilds the same levels and queues."""

    symbol: str
    orders: list[Order]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(BookState)


def valid_qty(qty: int) -> bool:
    return 0 < qty <= MAX_INT64


def valid_price(price: int) -> bool:
    return 0 < price <= MAX_INT64


def check_order(ord_type: OrdType, price: int, qty: int) -> Reason | None:
    """Why the book would refuse this order (a market order carries price 0), or None."""
    if not valid_qty(qty):
        return Reason.BAD_QTY
    if ord_type is OrdType.LIMIT and not valid_price(price):
        return Reason.BAD_PRICE
    if ord_type is OrdType.MARKET and price != 0:
        return Reason.BAD_PRICE
    return None


def rejected_order(
    ids: Ids,
    *,
    symbol: str,
    cl_ord_id: str,
    account: str,
    side: Side,
    ord_type: OrdType,
    price: int,
    order_qty: int,
    reason: Reason,
) -> ExecutionReport:
    """The report of a new order refused before it reached a book (no order id)."""
    return ExecutionReport(
        exec_id=ids.next_exec_id(),
        exec_type=ExecType.REJECTED,
        ord_status=OrdStatus.REJECTED,
        order_id=0,
        cl_ord_id=cl_ord_id,
        account=account,
        symbol=symbol,
        side=side,
        ord_type=ord_type,
        price=price,
        order_qty=order_qty,
        leaves_qty=0,
        cum_qty=0,
        text=reason,
    )


class Book:
    """The resting orders of one symbol and the matching of incoming ones against them.

    Matching: an incoming order trades with the best opposite level while the prices
    cross, oldest order first, at the resting (maker) order's price. Self-trades are
    prevented by cancelling the resting order (reason SELF_TRADE) and going on matching.
    """

    def __init__(self, symbol: str, ids: Ids) -> None:
        self.symbol = symbol
        self._ids = ids
        self._bids: SortedDict[int, Level] = SortedDict()  # key: -price
        self._asks: SortedDict[int, Level] = SortedDict()  # key: price
        self._orders: dict[int, Order] = {}

    # -- requests -------------------------------------------------------------------------

    def new_order(
        self,
        *,
        cl_ord_id: str,
        account: str,
        side: Side,
        ord_type: OrdType,
        price: int,
        order_qty: int,
    ) -> list[Event]:
        """A NewOrderSingle. A limit order rests what it does not fill; a market order
        (price 0) never rests: what it cannot fill is cancelled (IMMEDIATE_OR_CANCEL)."""
        reason = check_order(ord_type, price, order_qty)
        if reason is not None:
            return [
                rejected_order(
                    self._ids,
                    symbol=self.symbol,
                    cl_ord_id=cl_ord_id,
                    account=account,
                    side=side,
                    ord_type=ord_type,
                    price=price,
                    order_qty=order_qty,
                    reason=reason,
                )
            ]
        order = Order(
            order_id=self._ids.next_order_id(),
            cl_ord_id=cl_ord_id,
            account=account,
            side=side,
            price=price,
            order_qty=order_qty,
            leaves_qty=order_qty,
        )
        events: list[Event] = [self._report(order, ExecType.NEW, OrdStatus.NEW, ord_type)]
        limit = price if ord_type is OrdType.LIMIT else None
        self._match(order, limit, ord_type, events)
        if order.leaves_qty:
            if ord_type is OrdType.LIMIT:
                self._rest(order)
            else:
                order.leaves_qty = 0
                events.append(
                    self._report(
                        order,
                        ExecType.CANCELED,
                        OrdStatus.CANCELED,
                        ord_type,
                        text=Reason.IMMEDIATE_OR_CANCEL,
                    )
                )
        return events

    def cancel(self, *, order_id: int, cl_ord_id: str, account: str) -> list[Event]:
        """An OrderCancelRequest for a resting order of this account."""
        order = self._orders.get(order_id)
        if order is None or order.account != account:
            return [
                self._cancel_reject(
                    order_id, cl_ord_id, account, CxlRejResponseTo.CANCEL, Reason.UNKNOWN_ORDER
                )
            ]
        self._unrest(order)
        orig, order.cl_ord_id = order.cl_ord_id, cl_ord_id
        order.leaves_qty = 0
        return [
            self._report(
                order,
                ExecType.CANCELED,
                OrdStatus.CANCELED,
                OrdType.LIMIT,
                orig_cl_ord_id=orig,
                text=Reason.REQUESTED,
            )
        ]

    def replace(
        self, *, order_id: int, cl_ord_id: str, account: str, price: int, order_qty: int
    ) -> list[Event]:
        """An OrderCancelReplaceRequest: a new limit price and a new order_qty (the total,
        filled part included, as in FIX). The order keeps its place in the queue only when
        the price is unchanged and the quantity left does not grow; otherwise it goes to
        the back of its (new) level, and matches first if the new price crosses."""
        reason = self.check_replace(
            order_id=order_id, account=account, price=price, order_qty=order_qty
        )
        if reason is not None:
            return [
                self._cancel_reject(order_id, cl_ord_id, account, CxlRejResponseTo.REPLACE, reason)
            ]
        order = self._orders[order_id]
        orig = order.cl_ord_id
        leaves = order_qty - order.cum_qty
        if price == order.price and leaves <= order.leaves_qty:
            level = self._levels(order.side)[self._key(order.side, price)]
            level.qty += leaves - order.leaves_qty
            order.cl_ord_id, order.order_qty, order.leaves_qty = cl_ord_id, order_qty, leaves
            return [self._replaced(order, orig)]
        self._unrest(order)
        order.cl_ord_id, order.price, order.order_qty = cl_ord_id, price, order_qty
        order.leaves_qty = leaves
        events: list[Event] = [self._replaced(order, orig)]
        self._match(order, price, OrdType.LIMIT, events)
        if order.leaves_qty:
            self._rest(order)
        return events

    def check_replace(
        self, *, order_id: int, account: str, price: int, order_qty: int
    ) -> Reason | None:
        """Why `replace` would refuse these arguments, or None."""
        order = self._orders.get(order_id)
        if order is None or order.account != account:
            return Reason.UNKNOWN_ORDER
        if not valid_price(price):
            return Reason.BAD_PRICE
        if not valid_qty(order_qty):
            return Reason.BAD_QTY
        if order_qty <= order.cum_qty:
            return Reason.QTY_NOT_ABOVE_FILLED
        return None

    def cancel_reject(
        self,
        *,
        order_id: int,
        cl_ord_id: str,
        account: str,
        response_to: CxlRejResponseTo,
        reason: Reason,
    ) -> OrderCancelReject:
        """The refusal of a cancel or replace, for a check made outside the book."""
        return self._cancel_reject(order_id, cl_ord_id, account, response_to, reason)

    # -- reading --------------------------------------------------------------------------

    def top(self) -> TopOfBook:
        bid_px: int | None = None
        ask_px: int | None = None
        bid_qty = ask_qty = 0
        if self._bids:
            key, level = self._bids.peekitem(0)
            bid_px, bid_qty = -key, level.qty
        if self._asks:
            key, level = self._asks.peekitem(0)
            ask_px, ask_qty = key, level.qty
        return TopOfBook(bid_px, bid_qty, ask_px, ask_qty)

    def depth(self, n: int) -> Depth:
        """The best `n` levels of each side, best first, quantities aggregated."""
        return Depth(
            [
                PriceLevel(-key, level.qty, len(level.orders))
                for key, level in self._first(self._bids, n)
            ],
            [
                PriceLevel(key, level.qty, len(level.orders))
                for key, level in self._first(self._asks, n)
            ],
        )

    def levels(self, side: Side) -> list[tuple[int, list[int]]]:
        """Every level of a side, best first: its price and its order ids in time order."""
        sign = -1 if side is Side.BUY else 1
        return [(sign * key, list(level.orders)) for key, level in self._levels(side).items()]

    def order(self, order_id: int) -> Order | None:
        return self._orders.get(order_id)

    def orders(self) -> Iterator[Order]:
        """The resting orders, bids then asks, each side in priority order."""
        for levels in (self._bids, self._asks):
            for level in levels.values():
                yield from level.orders.values()

    def __len__(self) -> int:
        return len(self._orders)

    def sweep(self, side: Side, qty: int, account: str) -> tuple[int, int]:
        """What a market order of `account` for `qty` on `side` would fill now: the
        quantity and its total price (sum of price * qty), the account's own resting
        orders skipped as self-trade prevention would."""
        filled = cost = 0
        levels = self._asks if side is Side.BUY else self._bids
        for key, level in levels.items():
            price = key if side is Side.BUY else -key
            for maker in level.orders.values():
                if maker.account == account:
                    continue
                take = min(qty - filled, maker.leaves_qty)
                filled += take
                cost += take * price
                if filled == qty:
                    return filled, cost
        return filled, cost

    # -- snapshot -------------------------------------------------------------------------

    def state(self) -> BookState:
        return BookState(
            symbol=self.symbol, orders=[msgspec.structs.replace(o) for o in self.orders()]
        )

    @classmethod
    def from_state(cls, state: BookState, ids: Ids) -> Book:
        book = cls(state.symbol, ids)
        for order in state.orders:
            book._rest(msgspec.structs.replace(order))
        return book

    def snapshot(self) -> bytes:
        """The resting orders as msgpack (the ids are the venue's: see `Ids`)."""
        return _ENCODER.encode(self.state())

    @classmethod
    def restore(cls, data: bytes, ids: Ids) -> Book:
        return cls.from_state(_DECODER.decode(data), ids)

    # -- inside ---------------------------------------------------------------------------

    def _levels(self, side: Side) -> SortedDict[int, Level]:
        return self._bids if side is Side.BUY else self._asks

    @staticmethod
    def _key(side: Side, price: int) -> int:
        return -price if side is Side.BUY else price

    @staticmethod
    def _first(levels: SortedDict[int, Level], n: int) -> Iterator[tuple[int, Level]]:
        for i, item in enumerate(levels.items()):
            if i >= n:
                return
            yield item

    def _rest(self, order: Order) -> None:
        levels = self._levels(order.side)
        key = self._key(order.side, order.price)
        level = levels.get(key)
        if level is None:
            level = levels[key] = Level()
        level.orders[order.order_id] = order
        level.qty += order.leaves_qty
        self._orders[order.order_id] = order

    def _unrest(self, order: Order) -> None:
        levels = self._levels(order.side)
        key = self._key(order.side, order.price)
        level = levels[key]
        del level.orders[order.order_id]
        level.qty -= order.leaves_qty
        if not level.orders:
            del levels[key]
        del self._orders[order.order_id]

    def _match(
        self, taker: Order, limit: int | None, ord_type: OrdType, events: list[Event]
    ) -> None:
        buy = taker.side is Side.BUY
        levels = self._asks if buy else self._bids
        ids = self._ids
        while taker.leaves_qty and levels:
            key, level = levels.peekitem(0)
            price = key if buy else -key
            if limit is not None and (price > limit if buy else price < limit):
                return
            orders = level.orders
            while taker.leaves_qty and orders:
                maker = orders[next(iter(orders))]
                if maker.account == taker.account:
                    orders.popitem(last=False)
                    level.qty -= maker.leaves_qty
                    del self._orders[maker.order_id]
                    maker.leaves_qty = 0
                    events.append(
                        self._report(
                            maker,
                            ExecType.CANCELED,
                            OrdStatus.CANCELED,
                            OrdType.LIMIT,
                            text=Reason.SELF_TRADE,
                        )
                    )
                    continue
                qty = min(taker.leaves_qty, maker.leaves_qty)
                taker.leaves_qty -= qty
                taker.cum_qty += qty
                maker.leaves_qty -= qty
                maker.cum_qty += qty
                level.qty -= qty
                match_id = ids.next_trd_match_id()
                events.append(
                    Trade(
                        trd_match_id=match_id,
                        symbol=self.symbol,
                        price=price,
                        qty=qty,
                        maker_order_id=maker.order_id,
                        taker_order_id=taker.order_id,
                        aggressor_side=taker.side,
                    )
                )
                events.append(self._fill(taker, ord_type, qty, price, match_id))
                events.append(self._fill(maker, OrdType.LIMIT, qty, price, match_id))
                if not maker.leaves_qty:
                    orders.popitem(last=False)
                    del self._orders[maker.order_id]
            if not orders:
                del levels[key]

    def _fill(
        self, order: Order, ord_type: OrdType, qty: int, price: int, match_id: int
    ) -> ExecutionReport:
        status = OrdStatus.PARTIALLY_FILLED if order.leaves_qty else OrdStatus.FILLED
        return self._report(
            order, ExecType.TRADE, status, ord_type, last_qty=qty, last_px=price, match_id=match_id
        )

    def _replaced(self, order: Order, orig: str) -> ExecutionReport:
        status = OrdStatus.PARTIALLY_FILLED if order.cum_qty else OrdStatus.NEW
        return self._report(order, ExecType.REPLACED, status, OrdType.LIMIT, orig_cl_ord_id=orig)

    def _report(
        self,
        order: Order,
        exec_type: ExecType,
        ord_status: OrdStatus,
        ord_type: OrdType,
        *,
        last_qty: int = 0,
        last_px: int = 0,
        match_id: int = 0,
        orig_cl_ord_id: str = "",
        text: str = "",
    ) -> ExecutionReport:
        return ExecutionReport(
            exec_id=self._ids.next_exec_id(),
            exec_type=exec_type,
            ord_status=ord_status,
            order_id=order.order_id,
            cl_ord_id=order.cl_ord_id,
            account=order.account,
            symbol=self.symbol,
            side=order.side,
            ord_type=ord_type,
            price=order.price,
            order_qty=order.order_qty,
            last_qty=last_qty,
            last_px=last_px,
            leaves_qty=order.leaves_qty,
            cum_qty=order.cum_qty,
            orig_cl_ord_id=orig_cl_ord_id,
            trd_match_id=match_id,
            text=text,
        )

    def _cancel_reject(
        self,
        order_id: int,
        cl_ord_id: str,
        account: str,
        response_to: CxlRejResponseTo,
        reason: Reason,
    ) -> OrderCancelReject:
        order = self._orders.get(order_id)
        if order is None or order.account != account:
            orig, status = "", OrdStatus.REJECTED
        else:
            orig = order.cl_ord_id
            status = OrdStatus.PARTIALLY_FILLED if order.cum_qty else OrdStatus.NEW
        return OrderCancelReject(
            order_id=order_id,
            cl_ord_id=cl_ord_id,
            orig_cl_ord_id=orig,
            account=account,
            symbol=self.symbol,
            ord_status=status,
            cxl_rej_response_to=response_to,
            cxl_rej_reason=reason,
        )
