"""The trading venue (examples/trade/service.py) served to real SDK clients: orders
acknowledged before their fills, reports to both sides, market data, cancel and
replace, a resend never placed twice, and kill -9 after an acknowledgement losing
nothing (a real `tickwire serve` process and its journal)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient, Overloaded, Push, Reconnect
from examples.trade import service
from examples.trade import trade_pb2 as pb
from examples.trade.service import DEMO_CASH, make_app
from protocol.frame import Flags, Frame
from protocol.registry import system_registry
from server.auth import MemoryUsers
from tests.conftest import wait_for
from tests.integration.test_restart import stop_successor, wait_pid_change
from tests.serveproc import server_log, spawn_serve

USERS = MemoryUsers({"alice": "a", "bob": "b", "carol": "c"})
ROOT = Path(__file__).resolve().parents[3]


class Trader:
    """A client and, in arrival order, the frames of the venue's messages it read."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.seen: list[tuple[str, Any]] = []
        self.decoded = system_registry([pb])
        client.on_frame(self._frame)
        self.pushes: list[Any] = []
        for kind in (pb.ExecutionReport, pb.TradeCaptureReport, pb.MarketDataSnapshotFullRefresh):
            client.on_push(kind, self._push)

    def _frame(self, frame: Frame) -> None:
        if frame.flags & Flags.PUSH and frame.msg_id == 2049:
            self.seen.append(("push", self.decoded.decode(frame.msg_id, frame.payload)))

    async def acked(self, message: pb.NewOrderSingle) -> Any:
        """Send an order, noting its reply in `seen` the moment it arrives."""
        frame = await self.client.roundtrip(
            2048,
            message.SerializeToString(),
            on_reply=lambda reply: self.seen.append(("reply", reply)),
        )
        return self.decoded.decode(frame.msg_id, frame.payload)

    def _push(self, push: Push) -> None:
        self.pushes.append(push.message)

    def reports(self) -> list[Any]:
        return [m for m in self.pushes if isinstance(m, pb.ExecutionReport)]


@pytest.fixture
async def traders() -> Any:
    made: list[Trader] = []

    async def connect(address: tuple[str, int], user: str, password: str) -> Trader:
        client = await AsyncClient.connect(*address, registry=system_registry([pb]))
        await client.login(user, password)
        trader = Trader(client)
        made.append(trader)
        return trader

    yield connect
    for trader in made:
        await trader.client.close()


def order(cl: str, side: int, price: int, qty: int, symbol: str = "XYZ") -> pb.NewOrderSingle:
    return pb.NewOrderSingle(
        cl_ord_id=cl, symbol=symbol, side=side, ord_type=pb.LIMIT, price=price, order_qty=qty
    )


async def test_a_match_acks_first_then_fills_both_sides_and_market_data(
    start_server: Any, traders: Any, tmp_path: Path
) -> None:
    server = await start_server(make_app(tmp_path), authenticator=USERS)
    alice = await traders(server.address, "alice", "a")
    bob = await traders(server.address, "bob", "b")
    carol = await traders(server.address, "carol", "c")
    snapshot = await carol.client.request(
        pb.MarketDataRequest(symbol="XYZ", subscription_request_type=pb.SUBSCRIBE, market_depth=5)
    )
    assert list(snapshot.md_entries) == []  # type: ignore[attr-defined]

    rest = await alice.client.request(order("a1", pb.SELL, 10_050, 100))
    assert rest.exec_type == pb.EXEC_NEW and rest.order_id  # type: ignore[attr-defined]
    ack = await bob.acked(order("b1", pb.BUY, 10_100, 40))
    assert ack.exec_type == pb.EXEC_NEW and ack.cl_ord_id == "b1"  # type: ignore[attr-defined]
    await wait_for(lambda: len(bob.reports()) == 1 and len(alice.reports()) == 1)
    [fill] = bob.reports()
    assert (fill.exec_type, fill.last_px, fill.last_qty, fill.leaves_qty, fill.ord_status) == (
        pb.EXEC_TRADE,
        10_050,
        40,
        0,
        pb.FILLED,
    )
    maker = alice.reports()[0]
    assert (maker.order_id, maker.cum_qty, maker.leaves_qty) == (rest.order_id, 40, 60)  # type: ignore[attr-defined]
    # The taker read its acknowledgement before the fill (reply_first).
    assert [kind for kind, m in bob.seen] == ["reply", "push"]

    await wait_for(lambda: any(isinstance(m, pb.TradeCaptureReport) for m in carol.pushes))
    [trade] = [m for m in carol.pushes if isinstance(m, pb.TradeCaptureReport)]
    assert (trade.last_px, trade.last_qty, trade.aggressor_side) == (10_050, 40, pb.BUY)
    await wait_for(
        lambda: any(
            isinstance(m, pb.MarketDataSnapshotFullRefresh)
            and [(e.md_entry_px, e.md_entry_size) for e in m.md_entries] == [(10_050, 60)]
            for m in carol.pushes
        )
    )
    account = await bob.client.request(pb.RequestForPositions())
    assert account.cash == DEMO_CASH - 40 * 10_050  # type: ignore[attr-defined]


async def test_cancel_replace_and_a_resend_placed_once(
    start_server: Any, traders: Any, tmp_path: Path
) -> None:
    server = await start_server(make_app(tmp_path), authenticator=USERS)
    alice = await traders(server.address, "alice", "a")
    first = await alice.client.request(order("a1", pb.BUY, 9_000, 10))
    again = await alice.client.request(order("a1", pb.BUY, 9_000, 10))
    assert again == first  # the first acknowledgement, byte for byte
    book = await alice.client.request(pb.MarketDataRequest(symbol="XYZ", market_depth=1))
    assert [(e.md_entry_px, e.md_entry_size) for e in book.md_entries] == [(9_000, 10)]  # type: ignore[attr-defined]

    replaced = await alice.client.request(
        pb.OrderCancelReplaceRequest(
            order_id=first.order_id,
            cl_ord_id="a2",
            symbol="XYZ",
            price=9_100,
            order_qty=5,  # type: ignore[attr-defined]
        )
    )
    assert replaced.exec_type == pb.EXEC_REPLACED and replaced.price == 9_100  # type: ignore[attr-defined]
    cancelled = await alice.client.request(
        pb.OrderCancelRequest(order_id=first.order_id, cl_ord_id="a3", symbol="XYZ")  # type: ignore[attr-defined]
    )
    assert cancelled.ord_status == pb.CANCELED  # type: ignore[attr-defined]
    refused = await alice.client.request(
        pb.OrderCancelRequest(order_id=first.order_id, cl_ord_id="a4", symbol="XYZ")  # type: ignore[attr-defined]
    )
    assert isinstance(refused, pb.OrderCancelReject) and refused.text == "unknown_order"
    poor = await alice.client.request(order("a5", pb.BUY, 10**9, 10**4))
    assert poor.exec_type == pb.EXEC_REJECTED and poor.text == "insufficient_cash"  # type: ignore[attr-defined]


async def test_kill_9_after_an_ack_loses_nothing_and_ids_continue(
    traders: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADE_JOURNAL_DIR", str(tmp_path / "journal"))
    args = ("--app", "examples.trade:app", "--set", f"users_file={ROOT}/examples/demo-users.txt")
    proc, address = await spawn_serve(*args)
    try:
        alice = await traders(address, "alice", "demo-alice")
        acked = await alice.client.request(order("k1", pb.BUY, 9_500, 7))
        assert acked.exec_type == pb.EXEC_NEW  # type: ignore[attr-defined]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        await server_log(proc)

    proc, address = await spawn_serve(*args)
    try:
        again = await traders(address, "alice", "demo-alice")
        book = await again.client.request(pb.MarketDataRequest(symbol="XYZ", market_depth=1))
        assert [(e.md_entry_px, e.md_entry_size) for e in book.md_entries] == [(9_500, 7)]  # type: ignore[attr-defined]
        # The resend after the restart: answered with the order's status, not placed again.
        status = await again.client.request(order("k1", pb.BUY, 9_500, 7))
        assert status.exec_type == pb.EXEC_ORDER_STATUS  # type: ignore[attr-defined]
        assert status.order_id == acked.order_id  # type: ignore[attr-defined]
        fresh = await again.client.request(order("k2", pb.BUY, 9_400, 1))
        assert fresh.order_id == acked.order_id + 1  # type: ignore[attr-defined]
        assert fresh.exec_id > acked.exec_id  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        log = await server_log(proc)
    assert "1 commands replayed" in log or "commands replayed" in log


async def test_snapshots_taken_under_load_replay_to_the_same_venue(
    start_server: Any, traders: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots taken every few commands while orders keep coming (written in the
    background) cover exactly the commands journaled before them: the venue rebuilt from
    the last one and the commands after it is the one that ran."""
    monkeypatch.setattr(service, "SNAPSHOT_EVERY", 7)
    app = make_app(tmp_path)
    server = await start_server(app, authenticator=USERS, duplicate_login="allow")
    sellers = [await traders(server.address, "alice", "a") for _ in range(3)]
    buyers = [await traders(server.address, "bob", "b") for _ in range(3)]

    async def trade(trader: Trader, side: int, name: str) -> None:
        for i in range(15):
            await trader.client.request(order(f"{name}{i}", side, 10_000 + i % 3, 2))

    await asyncio.gather(
        *(trade(t, pb.SELL, f"s{n}-") for n, t in enumerate(sellers)),
        *(trade(t, pb.BUY, f"b{n}-") for n, t in enumerate(buyers)),
    )
    desk = app.state.desk
    if desk._snapshotting is not None:
        await desk._snapshotting
    assert desk.journal.snapshot_seq > 0  # snapshots were taken along the way
    expected = desk.ledger.snapshot()
    await desk.journal.close()  # as a crash would leave it: no snapshot at the end
    desk.journal = None

    again = service.Desk(tmp_path)
    await again.open()
    try:
        assert again.ledger.snapshot() == expected
    finally:
        assert again.journal is not None
        await again.journal.close()


async def test_a_zero_downtime_restart_hands_the_journal_to_the_successor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP: the successor finds the journal held by the old process, serves anyway
    (orders answered OVERLOADED with a retry time) and opens it as soon as the old one
    closes it while draining; the order placed before is there, ids go on."""
    monkeypatch.setenv("TRADE_JOURNAL_DIR", str(tmp_path / "journal"))
    pid_file = tmp_path / "venue.pid"
    users = f"users_file={ROOT}/examples/demo-users.txt"
    snapshot = f"store_snapshot_path={tmp_path / 'store.snap'}"  # sessions come along
    proc, address = await spawn_serve(
        "--app", "examples.trade:app", "--pid-file", str(pid_file), "--set", users,
        "--set", snapshot,
    )  # fmt: skip
    client = await AsyncClient.connect(
        *address, registry=system_registry([pb]), reconnect=Reconnect(initial=0.05)
    )
    try:
        await client.login("alice", "demo-alice")
        first = await client.request(order("r1", pb.BUY, 9_700, 3))
        proc.send_signal(signal.SIGHUP)
        await wait_pid_change(pid_file, proc.pid, timeout=30)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await wait_for(lambda: client.reconnects >= 1 and client.connected, timeout=10)
        for _ in range(100):  # until the successor has the journal
            try:
                after = await client.request(order("r2", pb.BUY, 9_600, 1))
                break
            except Overloaded as exc:
                assert "opening its journal" in str(exc)
                await asyncio.sleep(exc.retry_after or 0.1)
        assert after.order_id == first.order_id + 1  # type: ignore[attr-defined]
        book = await client.request(pb.MarketDataRequest(symbol="XYZ", market_depth=2))
        levels = [(e.md_entry_px, e.md_entry_size) for e in book.md_entries]  # type: ignore[attr-defined]
        assert levels == [(9_700, 3), (9_600, 1)]
    finally:
        await client.close()
        await stop_successor(pid_file, proc.pid)
        log = await server_log(proc)  # the successor writes to the same stderr
    assert "opening it once free" in log and "commands replayed" in log
