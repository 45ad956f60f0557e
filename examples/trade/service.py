"""The example trading venue: accounts, limit and market orders matched per symbol,
cancel and replace, execution reports to both sides, market data, and a journal
(docs/trade.md).

    TRADE_JOURNAL_DIR=var/trade tickwire serve --app examples.trade:app \\
        --set users_file=examples/demo-users.txt

Built on the framework's pieces, each a choice a real venue could make differently:

- **Acknowledged means journaled.** Each order, cancel and replace is applied to the
  venue (examples/trade/venue.py: pure, deterministic) and appended to the journal
  (server/journal) in the same step, and its reply and the fills it made go out only
  once the journal has synced it (group commit: many orders share one fsync). kill -9
  then loses nothing acknowledged; a restart loads the snapshot and replays the commands
  after it, so order ids and exec ids continue (examples/trade/commands.py). Set
  TRADE_JOURNAL_FSYNC=0 to write without syncing (a bench's comparison, not a venue);
  TRADE_ORDER_RATE (1000/s) is each user's limit on orders, cancels and replaces.
- **A resent order is never placed twice.** NewOrderSingle is idempotent by cl_ord_id
  (``idempotent=``: the first acknowledgement, byte for byte, for a resend within the
  store's TTL), and the journaled venue remembers each account's cl_ord_ids too, so a
  resend after a restart is answered with the order's status (EXEC_ORDER_STATUS).
- **Ack first, then fills** (``reply_first``): a taker reads its order's acknowledgement
  before the fills it made, as FIX practice has it.
- **Market data** per symbol: trades as reliable pushes (TradeCaptureReport), the top of
  the book and its best levels as latest-value pushes (a slow reader gets the newest
  book, never a backlog).
- **Accounts** are the users, opened with DEMO_CASH and DEMO_QTY of each symbol at the
  first start (examples/demo-users.txt: alice, bob, carol) or at a user's first order
  (a demo venue: anyone who can log in trades). The venue runs on one node: a
  cluster would own each symbol on one node (``owner=``) with a journal per symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from examples.trade import trade_pb2 as pb
from examples.trade.book import (
    CxlRejResponseTo,
    Event,
    ExecType,
    ExecutionReport,
    OrderCancelReject,
    OrdStatus,
    OrdType,
    Side,
    Trade,
)
from examples.trade.commands import (
    Cancel,
    Command,
    Ledger,
    NewOrder,
    Open,
    Replace,
    decode_command,
    encode_command,
)
from examples.trade.venue import Venue
from protocol.errors import ErrorCode
from server import App, Context, HandlerError, Server
from server.journal import Journal, JournalError, JournalLocked

log = logging.getLogger("tickwire.trade")

SYMBOLS = ("XYZ", "ABC")
DEMO_ACCOUNTS = ("alice", "bob", "carol")
DEMO_CASH = 10**12
DEMO_QTY = 10**7
#: Commands between two snapshots of the venue: replay at start stays under this many,
#: and the loop stops for a snapshot's encoding (about 40 ms at 50,000 remembered
#: orders) this rarely.
SNAPSHOT_EVERY = 50_000
#: Seconds a starting venue waits for a journal another process holds (its predecessor
#: in a zero-downtime restart, closing it as it drains).
JOURNAL_WAIT = 60.0
#: Levels a side in a depth snapshot, at most.
MAX_DEPTH = 20

_SIDE = {Side.BUY: pb.BUY, Side.SELL: pb.SELL}
_SIDE_IN = {pb.BUY: Side.BUY, pb.SELL: Side.SELL}
_ORD_TYPE = {OrdType.LIMIT: pb.LIMIT, OrdType.MARKET: pb.MARKET}
_ORD_TYPE_IN = {pb.LIMIT: OrdType.LIMIT, pb.MARKET: OrdType.MARKET}
_EXEC_TYPE = {
    ExecType.NEW: pb.EXEC_NEW,
    ExecType.TRADE: pb.EXEC_TRADE,
    ExecType.CANCELED: pb.EXEC_CANCELED,
    ExecType.REPLACED: pb.EXEC_REPLACED,
    ExecType.REJECTED: pb.EXEC_REJECTED,
}
_ORD_STATUS = {
    OrdStatus.NEW: pb.NEW,
    OrdStatus.PARTIALLY_FILLED: pb.PARTIALLY_FILLED,
    OrdStatus.FILLED: pb.FILLED,
    OrdStatus.CANCELED: pb.CANCELED,
    OrdStatus.REJECTED: pb.REJECTED,
}
_RESPONSE_TO = {
    CxlRejResponseTo.CANCEL: pb.ORDER_CANCEL_REQUEST,
    CxlRejResponseTo.REPLACE: pb.ORDER_CANCEL_REPLACE_REQUEST,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def report_pb(
    report: ExecutionReport, transact_time: int, exec_type: Any = None
) -> pb.ExecutionReport:
    return pb.ExecutionReport(
        order_id=report.order_id,
        cl_ord_id=report.cl_ord_id,
        orig_cl_ord_id=report.orig_cl_ord_id,
        exec_id=report.exec_id,
        exec_type=_EXEC_TYPE[report.exec_type] if exec_type is None else exec_type,
        ord_status=_ORD_STATUS[report.ord_status],
        symbol=report.symbol,
        side=_SIDE[report.side],
        ord_type=_ORD_TYPE[report.ord_type],
        price=report.price,
        order_qty=report.order_qty,
        last_qty=report.last_qty,
        last_px=report.last_px,
        leaves_qty=report.leaves_qty,
        cum_qty=report.cum_qty,
        trd_match_id=report.trd_match_id,
        text=report.text,
        transact_time=transact_time,
    )


def reject_pb(reject: OrderCancelReject) -> pb.OrderCancelReject:
    return pb.OrderCancelReject(
        order_id=reject.order_id,
        cl_ord_id=reject.cl_ord_id,
        orig_cl_ord_id=reject.orig_cl_ord_id,
        ord_status=_ORD_STATUS[reject.ord_status],
        cxl_rej_response_to=_RESPONSE_TO[reject.cxl_rej_response_to],
        text=str(reject.cxl_rej_reason),
    )


def trades_room(symbol: str) -> str:
    return f"md:{symbol}"


def depth_room(symbol: str, depth: int) -> str:
    return f"md:{symbol}:{depth}"


class Desk:
    """The venue as the server runs it: the ledger, its journal, its market data."""

    def __init__(self, directory: Path | None, *, fsync: bool = True) -> None:
        #: None: no journal at all (the bench's baseline: nothing survives a restart).
        self.directory = directory
        self.fsync = fsync
        self.ledger = Ledger(Venue(SYMBOLS))
        self.journal: Journal | None = None
        #: Depths subscribed per symbol (a snapshot is pushed for each after a change).
        self.depths: dict[str, set[int]] = {symbol: set() for symbol in SYMBOLS}
        self.halted = ""
        #: Taking commands: its journal is open (or it has none).
        self.ready = False
        self._snapshotting: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the journal and rebuild the venue: the snapshot, then the commands after
        it; open the demo accounts at the first start. A journal another process holds
        (the one this process succeeds in a zero-downtime restart, which closes it as it
        drains) is opened as soon as it is free, for up to JOURNAL_WAIT seconds; orders
        meanwhile are answered OVERLOADED with a retry time."""
        if self.directory is None:
            await self._ready()
            return
        try:
            journal = await Journal.open(self.directory, fsync=self.fsync)
        except JournalLocked:
            log.warning(
                "journal %s is held by another process: opening it once free", self.directory
            )
            self._opening = asyncio.get_running_loop().create_task(self._open_when_free())
            return
        await self._rebuild(journal)

    async def _open_when_free(self) -> None:
        assert self.directory is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOURNAL_WAIT
        while True:
            await asyncio.sleep(0.05)
            try:
                journal = await Journal.open(self.directory, fsync=self.fsync)
            except JournalLocked:
                if loop.time() < deadline:
                    continue
                self.halted = f"the venue halted: its journal stayed locked {JOURNAL_WAIT:g} s"
                log.error("%s", self.halted)
                return
            await self._rebuild(journal)
            return

    async def _rebuild(self, journal: Journal) -> None:
        replay = journal.replay()
        if replay.snapshot is not None:
            self.ledger = Ledger.restore(replay.snapshot)
        replayed = 0
        for _, body in replay.records:
            self.ledger.apply(decode_command(body))
            replayed += 1
        self.journal = journal
        log.info(
            "venue rebuilt: snapshot at %d, %d commands replayed, next order id %d",
            replay.snapshot_seq,
            replayed,
            self.ledger.venue.ids.order_id + 1,
        )
        await self._ready()

    async def _ready(self) -> None:
        """Take commands from now on, first opening the demo accounts the venue lacks."""
        self.ready = True
        for name in DEMO_ACCOUNTS:
            await self.ensure_account(name)

    async def ensure_account(self, name: str) -> None:
        """Open `name`'s demo account unless it exists (checked and opened in one step:
        two first orders at once open it once)."""
        try:
            self.ledger.venue.accounts.account(name)
        except KeyError:
            await self.run(Open(name, DEMO_CASH, dict.fromkeys(SYMBOLS, DEMO_QTY)))

    async def close(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self._snapshotting is not None:
            await self._snapshotting
        if self.journal is not None:
            await self.journal.snapshot(self.ledger.snapshot())
            await self.journal.close()
            self.journal = None

    async def run(self, command: Command) -> list[Event]:
        """Apply `command` and journal it in one step (so the journal's order is the
        venue's), then wait until it is durable. HandlerError once the journal failed:
        the venue stops taking commands rather than acknowledge what it cannot keep."""
        journal = self.journal
        if not self.ready or self.halted:
            raise HandlerError(
                ErrorCode.OVERLOADED,
                self.halted or "the venue is opening its journal: retry after 100 ms",
            )
        events = self.ledger.apply(command)
        if journal is None:
            return events
        try:
            seq = await journal.append(encode_command(command))
        except JournalError as exc:
            self.halted = f"the venue halted: its journal failed ({exc})"
            log.error("%s", self.halted)
            raise HandlerError(ErrorCode.INTERNAL, self.halted) from None
        if seq - journal.snapshot_seq >= SNAPSHOT_EVERY and self._snapshotting is None:
            # Every command is journaled in the step that applies it, so the venue now is
            # exactly the journal up to its last seq: that is what the snapshot covers.
            # Written in the background: the reply does not wait for it.
            covered = journal.last_seq
            state = self.ledger.snapshot()
            self._snapshotting = asyncio.get_running_loop().create_task(
                self._snapshot(journal, state, covered)
            )
        return events

    async def _snapshot(self, journal: Journal, state: bytes, covered: int) -> None:
        try:
            await journal.snapshot(state, covered)
        except (JournalError, ValueError) as exc:
            log.error("venue snapshot at %d not taken: %s", covered, exc)
        finally:
            self._snapshotting = None

    def publish(
        self, server: Server, events: list[Event], replied: ExecutionReport
    ) -> pb.ExecutionReport:
        """Push each report to its account (all but `replied`, the reply, returned), each
        trade to the symbol's subscribers, and the books that changed; all stamped with
        one transact_time."""
        stamp = now_ms()
        changed: set[str] = set()
        for event in events:
            if isinstance(event, ExecutionReport):
                changed.add(event.symbol)
                if event is not replied:
                    server.push(event.account, report_pb(event, stamp))
            elif isinstance(event, Trade):
                server.room(trades_room(event.symbol)).broadcast(
                    pb.TradeCaptureReport(
                        trd_match_id=event.trd_match_id,
                        symbol=event.symbol,
                        last_px=event.price,
                        last_qty=event.qty,
                        aggressor_side=_SIDE[event.aggressor_side],
                        transact_time=stamp,
                    )
                )
        for symbol in changed:
            for depth in self.depths.get(symbol, ()):
                server.room(depth_room(symbol, depth)).broadcast(self.book_pb(symbol, depth))
        return report_pb(replied, stamp)

    def book_pb(
        self, symbol: str, depth: int, md_req_id: str = ""
    ) -> pb.MarketDataSnapshotFullRefresh:
        book = self.ledger.venue.books[symbol].depth(depth)
        entries = [
            pb.MDEntry(md_entry_type=pb.BID, md_entry_px=p.price, md_entry_size=p.qty)
            for p in book.bids
        ]
        entries += [
            pb.MDEntry(md_entry_type=pb.OFFER, md_entry_px=p.price, md_entry_size=p.qty)
            for p in book.asks
        ]
        return pb.MarketDataSnapshotFullRefresh(
            md_req_id=md_req_id, symbol=symbol, market_depth=depth, md_entries=entries
        )


def _account(ctx: Context) -> str:
    assert ctx.session is not None
    return ctx.session.user_id


def _symbol(symbol: str) -> str:
    if symbol not in SYMBOLS:
        raise HandlerError(ErrorCode.DECODE_ERROR, f"unknown symbol {symbol[:32]!r}")
    return symbol


def make_app(
    directory: Path | str | None = None, *, fsync: bool | None = None, journal: bool = True
) -> App:
    """The venue's app, journaling into `directory` (default: TRADE_JOURNAL_DIR, else
    var/trade-journal); `journal=False` keeps nothing (a bench's baseline)."""
    where = Path(directory or os.environ.get("TRADE_JOURNAL_DIR", "var/trade-journal"))
    synced = os.environ.get("TRADE_JOURNAL_FSYNC", "1") != "0" if fsync is None else fsync
    rate = os.environ.get("TRADE_ORDER_RATE", "1000/s")
    app = App("trade", reply_first=True)
    app.add_module(pb)
    app.latest_value(pb.MarketDataSnapshotFullRefresh, key=lambda m: (m.symbol, m.market_depth))
    app.state.desk = Desk(where if journal else None, fsync=synced)

    @app.on_start
    async def open_desk(server: Server) -> None:
        await app.state.desk.open()

    @app.on_stop
    async def close_desk(server: Server) -> None:
        await app.state.desk.close()

    @app.handler(pb.NewOrderSingle, idempotent=lambda m: m.cl_ord_id, rate=rate)
    async def new_order(ctx: Context, msg: pb.NewOrderSingle) -> pb.ExecutionReport:
        desk: Desk = app.state.desk
        account = _account(ctx)
        seen = desk.ledger.seen(account, msg.cl_ord_id)
        if seen is not None:
            # Placed before (a resend the store no longer remembers: a restart).
            return report_pb(seen, now_ms(), pb.EXEC_ORDER_STATUS)
        side = _SIDE_IN.get(msg.side)
        ord_type = _ORD_TYPE_IN.get(msg.ord_type)
        if side is None or ord_type is None:
            raise HandlerError(ErrorCode.DECODE_ERROR, "side and ord_type must be set")
        command = NewOrder(
            account, msg.cl_ord_id, _symbol(msg.symbol), side, ord_type, msg.price, msg.order_qty
        )
        await desk.ensure_account(account)
        events = await desk.run(command)
        ack = next(e for e in events if isinstance(e, ExecutionReport) and e.account == account)
        return desk.publish(ctx.server, events, ack)

    @app.handler(pb.OrderCancelRequest, idempotent=lambda m: m.cl_ord_id, rate=rate)
    async def cancel(ctx: Context, msg: pb.OrderCancelRequest) -> Any:
        desk: Desk = app.state.desk
        command = Cancel(_account(ctx), msg.cl_ord_id, _symbol(msg.symbol), msg.order_id)
        return _answer(ctx, desk, await desk.run(command))

    @app.handler(pb.OrderCancelReplaceRequest, idempotent=lambda m: m.cl_ord_id, rate=rate)
    async def replace(ctx: Context, msg: pb.OrderCancelReplaceRequest) -> Any:
        desk: Desk = app.state.desk
        command = Replace(
            _account(ctx),
            msg.cl_ord_id,
            _symbol(msg.symbol),
            msg.order_id,
            msg.price,
            msg.order_qty,
        )
        return _answer(ctx, desk, await desk.run(command))

    @app.handler(pb.MarketDataRequest, rate="50/s", burst=100)
    def market_data(ctx: Context, msg: pb.MarketDataRequest) -> pb.MarketDataSnapshotFullRefresh:
        desk: Desk = app.state.desk
        symbol = _symbol(msg.symbol)
        depth = max(1, min(MAX_DEPTH, msg.market_depth or 1))
        session = ctx.session
        assert session is not None
        kind = msg.subscription_request_type
        if kind == pb.SUBSCRIBE:
            ctx.server.room(trades_room(symbol)).join(session)
            ctx.server.room(depth_room(symbol, depth)).join(session)
            desk.depths[symbol].add(depth)
        elif kind == pb.UNSUBSCRIBE:
            ctx.server.room(trades_room(symbol)).leave(session)
            ctx.server.room(depth_room(symbol, depth)).leave(session)
        return desk.book_pb(symbol, depth, msg.md_req_id)

    @app.handler(pb.RequestForPositions)
    def positions(ctx: Context, msg: pb.RequestForPositions) -> pb.PositionReport:
        desk: Desk = app.state.desk
        name = _account(ctx)
        try:
            account = desk.ledger.venue.accounts.account(name)
        except KeyError:
            raise HandlerError(ErrorCode.DECODE_ERROR, f"no account {name!r}") from None
        return pb.PositionReport(
            account=name,
            cash=account.cash,
            cash_held=account.held_cash,
            positions=[
                pb.Position(symbol=s, qty=q, qty_held=account.held_qty.get(s, 0))
                for s, q in sorted(account.positions.items())
            ],
        )

    return app


def _answer(ctx: Context, desk: Desk, events: list[Event]) -> Any:
    """A cancel's or replace's reply: its report, or the reject."""
    first = events[0]
    if isinstance(first, OrderCancelReject):
        return reject_pb(first)
    assert isinstance(first, ExecutionReport)
    return desk.publish(ctx.server, events, first)


app = make_app()
