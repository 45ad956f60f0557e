"""The venue: one `Book` per symbol behind the accounts' pre-trade check, sharing one
`Ids` (docs/trade.md). What the server's handlers will call, and what the journal will
replay: every request is a method here, and the events it returns are all it did.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from examples.trade.accounts import Accounts, AccountsState
from examples.trade.book import (
    Book,
    BookState,
    CxlRejResponseTo,
    Event,
    Ids,
    OrderCancelReject,
    OrdStatus,
    OrdType,
    Reason,
    Side,
    check_order,
    rejected_order,
)


class VenueState(msgspec.Struct, kw_only=True):
    ids: Ids
    books: list[BookState]
    accounts: AccountsState


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(VenueState)


class Venue:
    def __init__(
        self, symbols: Iterable[str], *, ids: Ids | None = None, accounts: Accounts | None = None
    ) -> None:
        self.ids = ids if ids is not None else Ids()
        self.accounts = accounts if accounts is not None else Accounts()
        self.books = {symbol: Book(symbol, self.ids) for symbol in symbols}

    def new_order(
        self,
        *,
        account: str,
        cl_ord_id: str,
        symbol: str,
        side: Side,
        ord_type: OrdType,
        price: int,
        order_qty: int,
    ) -> list[Event]:
        """A NewOrderSingle, refused unless the book would take it and the account covers
        it: a limit buy `price * order_qty` of cash, a market buy what it would pay
        sweeping the book now, a sell `order_qty` of the symbol."""
        book = self.books.get(symbol)
        reason = Reason.UNKNOWN_SYMBOL if book is None else check_order(ord_type, price, order_qty)
        if reason is None and book is not None:
            if side is Side.SELL:
                amount = order_qty
            elif ord_type is OrdType.LIMIT:
                amount = price * order_qty
            else:
                amount = book.sweep(side, order_qty, account)[1]
            reason = self.accounts.check(account, symbol, side, amount)
        if reason is not None:
            return [
                rejected_order(
                    self.ids,
                    symbol=symbol,
                    cl_ord_id=cl_ord_id,
                    account=account,
                    side=side,
                    ord_type=ord_type,
                    price=price,
                    order_qty=order_qty,
                    reason=reason,
                )
            ]
        assert book is not None
        events = book.new_order(
            cl_ord_id=cl_ord_id,
            account=account,
            side=side,
            ord_type=ord_type,
            price=price,
            order_qty=order_qty,
        )
        self.accounts.apply(events)
        return events

    def cancel(self, *, account: str, cl_ord_id: str, symbol: str, order_id: int) -> list[Event]:
        """An OrderCancelRequest: only the account that placed an order may cancel it."""
        book = self.books.get(symbol)
        if book is None:
            return [_unknown(order_id, cl_ord_id, account, symbol, CxlRejResponseTo.CANCEL)]
        events = book.cancel(order_id=order_id, cl_ord_id=cl_ord_id, account=account)
        self.accounts.apply(events)
        return events

    def replace(
        self,
        *,
        account: str,
        cl_ord_id: str,
        symbol: str,
        order_id: int,
        price: int,
        order_qty: int,
    ) -> list[Event]:
        """An OrderCancelReplaceRequest, refused if what the order would hold afterwards
        grows by more than the account has free."""
        book = self.books.get(symbol)
        if book is None:
            return [_unknown(order_id, cl_ord_id, account, symbol, CxlRejResponseTo.REPLACE)]
        reason = book.check_replace(
            order_id=order_id, account=account, price=price, order_qty=order_qty
        )
        order = book.order(order_id)
        if reason is None and order is not None:
            leaves = order_qty - order.cum_qty
            need = price * leaves if order.side is Side.BUY else leaves
            grows = need - self.accounts.held(order_id)
            if grows > 0:
                reason = self.accounts.check(account, symbol, order.side, grows)
        if reason is not None:
            return [
                book.cancel_reject(
                    order_id=order_id,
                    cl_ord_id=cl_ord_id,
                    account=account,
                    response_to=CxlRejResponseTo.REPLACE,
                    reason=reason,
                )
            ]
        events = book.replace(
            order_id=order_id,
            cl_ord_id=cl_ord_id,
            account=account,
            price=price,
            order_qty=order_qty,
        )
        self.accounts.apply(events)
        return events

    def snapshot(self) -> bytes:
        """Ids, books and accounts as msgpack: `restore` gives a venue that answers every
        later request as this one would."""
        return _ENCODER.encode(
            VenueState(
                ids=msgspec.structs.replace(self.ids),
                books=[book.state() for book in self.books.values()],
                accounts=self.accounts.state(),
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> Venue:
        state = _DECODER.decode(data)
        venue = cls((), ids=state.ids, accounts=Accounts.from_state(state.accounts))
        venue.books = {b.symbol: Book.from_state(b, venue.ids) for b in state.books}
        return venue


def _unknown(
    order_id: int, cl_ord_id: str, account: str, symbol: str, response_to: CxlRejResponseTo
) -> OrderCancelReject:
    return OrderCancelReject(
        order_id=order_id,
        cl_ord_id=cl_ord_id,
        orig_cl_ord_id="",
        account=account,
        symbol=symbol,
        ord_status=OrdStatus.REJECTED,
        cxl_rej_response_to=response_to,
        cxl_rej_reason=Reason.UNKNOWN_ORDER,
    )
