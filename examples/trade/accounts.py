"""Cash and positions per account, the pre-trade check, and the holds open orders put on
them (docs/trade.md#accounts). Pure and deterministic, like the book.

An account may only sell what it holds (no shorting) and only buy what its cash covers:
every open order holds what it could still need, a buy `price * leaves_qty` of cash, a
sell `leaves_qty` of the symbol, and a new order must fit in what is not held. Holds are
not kept by hand but recomputed from each ExecutionReport of the order (its price and
leaves_qty), so accept, fill, replace and cancel all move them the same way; a fill then
settles both counterparties at the trade price: the buyer pays exactly what the seller
receives, and the position moves the other way.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from examples.trade.book import Event, ExecType, ExecutionReport, OrdStatus, Reason, Side

_LIVE = (OrdStatus.NEW, OrdStatus.PARTIALLY_FILLED)


class Account(msgspec.Struct, kw_only=True):
    cash: int = 0
    positions: dict[str, int] = msgspec.field(default_factory=dict)
    #: What open buys hold of `cash`.
    held_cash: int = 0
    #: What open sells hold of each position.
    held_qty: dict[str, int] = msgspec.field(default_factory=dict)


class Hold(msgspec.Struct, array_like=True):
    """What one open order holds: cash for a buy, quantity of `symbol` for a sell."""

    account: str
    symbol: str
    side: Side
    amount: int


class AccountsState(msgspec.Struct, kw_only=True):
    accounts: dict[str, Account]
    holds: dict[int, Hold]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(AccountsState)


class Accounts:
    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._holds: dict[int, Hold] = {}

    # -- funding --------------------------------------------------------------------------

    def open(self, name: str, *, cash: int = 0, positions: dict[str, int] | None = None) -> None:
        if name in self._accounts:
            raise ValueError(f"account {name!r} exists")
        if cash < 0 or any(qty < 0 for qty in (positions or {}).values()):
            raise ValueError("cash and positions start at 0 or more")
        self._accounts[name] = Account(cash=cash, positions=dict(positions or {}))

    def deposit(self, name: str, *, cash: int = 0, symbol: str = "", qty: int = 0) -> None:
        """Add cash and/or a quantity of a symbol (a negative amount withdraws, down to
        what no open order holds)."""
        account = self._accounts[name]
        if cash < -self.available_cash(name) or (
            symbol and qty < -self.available_qty(name, symbol)
        ):
            raise ValueError("a withdrawal beyond what is available")
        account.cash += cash
        if symbol:
            account.positions[symbol] = account.positions.get(symbol, 0) + qty

    # -- reading --------------------------------------------------------------------------

    def account(self, name: str) -> Account:
        """The account; read it, never change it from outside."""
        return self._accounts[name]

    def available_cash(self, name: str) -> int:
        account = self._accounts[name]
        return account.cash - account.held_cash

    def available_qty(self, name: str, symbol: str) -> int:
        account = self._accounts[name]
        return account.positions.get(symbol, 0) - account.held_qty.get(symbol, 0)

    def held(self, order_id: int) -> int:
        """What the open order holds (0 for an order that holds nothing or is done)."""
        hold = self._holds.get(order_id)
        return 0 if hold is None else hold.amount

    # -- the pre-trade check --------------------------------------------------------------

    def check(self, name: str, symbol: str, side: Side, amount: int) -> Reason | None:
        """Why `name` may not commit `amount` more (cash for a buy, quantity of `symbol`
        for a sell), or None."""
        if name not in self._accounts:
            return Reason.UNKNOWN_ACCOUNT
        if side is Side.BUY:
            return Reason.INSUFFICIENT_CASH if amount > self.available_cash(name) else None
        if amount > self.available_qty(name, symbol):
            return Reason.INSUFFICIENT_POSITION
        return None

    # -- what the book did ----------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Settle the fills and move the holds of the ExecutionReports among `events`."""
        for event in events:
            if isinstance(event, ExecutionReport) and event.exec_type is not ExecType.REJECTED:
                self._apply(event)

    def _apply(self, report: ExecutionReport) -> None:
        account = self._accounts[report.account]
        symbol, buy = report.symbol, report.side is Side.BUY
        if report.exec_type is ExecType.TRADE:
            value = report.last_px * report.last_qty
            position = account.positions.get(symbol, 0)
            if buy:
                account.cash -= value
                account.positions[symbol] = position + report.last_qty
            else:
                account.cash += value
                account.positions[symbol] = position - report.last_qty
        amount = 0
        if report.ord_status in _LIVE:
            amount = report.price * report.leaves_qty if buy else report.leaves_qty
        old = self._holds.get(report.order_id)
        delta = amount - (0 if old is None else old.amount)
        if buy:
            account.held_cash += delta
        else:
            held = account.held_qty.get(symbol, 0) + delta
            if held:
                account.held_qty[symbol] = held
            else:
                account.held_qty.pop(symbol, None)
        if amount:
            self._holds[report.order_id] = Hold(report.account, symbol, report.side, amount)
        elif old is not None:
            del self._holds[report.order_id]

    # -- snapshot -------------------------------------------------------------------------

    def state(self) -> AccountsState:
        return AccountsState(
            accounts={
                name: msgspec.convert(msgspec.to_builtins(a), Account)
                for name, a in self._accounts.items()
            },
            holds=dict(self._holds),
        )

    @classmethod
    def from_state(cls, state: AccountsState) -> Accounts:
        accounts = cls()
        accounts._accounts = dict(state.accounts)
        accounts._holds = dict(state.holds)
        return accounts

    def snapshot(self) -> bytes:
        return _ENCODER.encode(self.state())

    @classmethod
    def restore(cls, data: bytes) -> Accounts:
        return cls.from_state(_DECODER.decode(data))
