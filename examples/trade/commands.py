"""The venue's commands: what the journal holds, and what a restart replays.

Every request that changes the venue is a `Command`, applied by `Ledger.apply`, which is
pure and deterministic: the same commands on the same state give the same events and the
same ids. So the journal records commands, not events, and a restart that loads the
latest snapshot and applies the commands after it has the venue it lost, order ids
and exec ids included (docs/trade.md, "Durability").

The ledger also remembers each account's client order ids (`cl_ord_id`), with the
order's latest report: a NewOrderSingle that reuses one is answered with that report
(EXEC_ORDER_STATUS) and places nothing, after any restart, since the memory comes back
with the commands. It keeps the last `MAX_REMEMBERED` of them, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from examples.trade.book import (
    Event,
    ExecType,
    ExecutionReport,
    OrdType,
    Side,
)
from examples.trade.venue import Venue

#: Client order ids remembered, across all accounts: each costs a report in every
#: snapshot (about 230 bytes), so this bounds a snapshot's size and the time to make it.
MAX_REMEMBERED = 100_000


class NewOrder(msgspec.Struct, tag="new", array_like=True):
    account: str
    cl_ord_id: str
    symbol: str
    side: Side
    ord_type: OrdType
    price: int
    order_qty: int


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    account: str
    cl_ord_id: str
    symbol: str
    order_id: int


class Replace(msgspec.Struct, tag="replace", array_like=True):
    account: str
    cl_ord_id: str
    symbol: str
    order_id: int
    price: int
    order_qty: int


class Open(msgspec.Struct, tag="open", array_like=True):
    """An account opened with its starting cash and positions."""

    account: str
    cash: int
    positions: dict[str, int]


Command = NewOrder | Cancel | Replace | Open

encode_command = msgspec.msgpack.Encoder().encode
decode_command = msgspec.msgpack.Decoder(Command).decode


class Remembered(msgspec.Struct, array_like=True):
    account: str
    cl_ord_id: str
    report: ExecutionReport


class LedgerState(msgspec.Struct, array_like=True):
    venue: bytes
    remembered: list[Remembered]
    applied: int


_encode_state = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(LedgerState).decode


class Ledger:
    """The venue with its memory of client order ids."""

    def __init__(self, venue: Venue) -> None:
        self.venue = venue
        #: (account, cl_ord_id) -> the order's latest report, oldest first.
        self.remembered: OrderedDict[tuple[str, str], ExecutionReport] = OrderedDict()
        #: order id -> its (account, cl_ord_id), to keep the remembered report current.
        self._orders: dict[int, tuple[str, str]] = {}
        #: Commands applied since the venue was created (replays included).
        self.applied = 0

    def seen(self, account: str, cl_ord_id: str) -> ExecutionReport | None:
        """The latest report of the order `account` placed as `cl_ord_id`, if any."""
        return self.remembered.get((account, cl_ord_id))

    def apply(self, command: Command) -> list[Event]:
        """Run `command` on the venue; the events it made."""
        venue = self.venue
        self.applied += 1
        if isinstance(command, NewOrder):
            events = venue.new_order(
                account=command.account,
                cl_ord_id=command.cl_ord_id,
                symbol=command.symbol,
                side=command.side,
                ord_type=command.ord_type,
                price=command.price,
                order_qty=command.order_qty,
            )
        elif isinstance(command, Cancel):
            events = venue.cancel(
                account=command.account,
                cl_ord_id=command.cl_ord_id,
                symbol=command.symbol,
                order_id=command.order_id,
            )
        elif isinstance(command, Replace):
            events = venue.replace(
                account=command.account,
                cl_ord_id=command.cl_ord_id,
                symbol=command.symbol,
                order_id=command.order_id,
                price=command.price,
                order_qty=command.order_qty,
            )
        else:
            venue.accounts.open(command.account, cash=command.cash, positions=command.positions)
            return []
        self._remember(events)
        return events

    def _remember(self, events: list[Event]) -> None:
        for event in events:
            if not isinstance(event, ExecutionReport):
                continue
            key = (event.account, event.cl_ord_id)
            if event.exec_type is ExecType.NEW or event.exec_type is ExecType.REJECTED:
                if key in self.remembered:
                    continue  # a reused id answered from memory never gets here
                self.remembered[key] = event
                if event.order_id:
                    self._orders[event.order_id] = key
                while len(self.remembered) > MAX_REMEMBERED:
                    _, old = self.remembered.popitem(last=False)
                    self._orders.pop(old.order_id, None)
                continue
            if event.exec_type is ExecType.REPLACED:
                # The order goes on under the replace's cl_ord_id.
                old_key = self._orders.get(event.order_id)
                self._orders[event.order_id] = key
                self.remembered[key] = event
                if old_key is not None and old_key in self.remembered:
                    self.remembered[old_key] = event
                continue
            owner = self._orders.get(event.order_id)
            if owner is not None and owner in self.remembered:
                self.remembered[owner] = event

    def snapshot(self) -> bytes:
        return _encode_state(
            LedgerState(
                self.venue.snapshot(),
                [Remembered(a, c, r) for (a, c), r in self.remembered.items()],
                self.applied,
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> Ledger:
        state = _decode_state(data)
        ledger = cls(Venue.restore(state.venue))
        for item in state.remembered:
            key = (item.account, item.cl_ord_id)
            ledger.remembered[key] = item.report
            if item.report.order_id:
                ledger._orders[item.report.order_id] = key
        ledger.applied = state.applied
        return ledger
