"""The venue's order flow, with the journal's fsync on and off side by side in one run.

    .venv/bin/python -m bench.serverside.trade_flow --pairs 10 --duration 5

One process: a `Server` serving examples.trade (its journal in a fresh temp directory)
and `--pairs` pairs of SDK traders on uvloop. In each pair one trader sends limit sells
and the other limit buys at the same price, each in a closed loop (the next order when
the previous one is acknowledged), so every order is filled by the other side's. For
each order the bench times the acknowledgement (order to ack: the reply) and its fill
(order to fill: the ExecutionReport pushed when it traded, as maker or taker). The run
is made with the journal's fsync on, then off, then with no journal at all, with the
same load; the journal's orders per batch (one write, and one fsync when on) say what
group commit saved.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import uvloop
from hdrh.histogram import HdrHistogram

from client_sdk import AsyncClient, Push
from examples.trade import make_app
from examples.trade import trade_pb2 as pb
from protocol.registry import system_registry
from server import Server, ServerConfig
from server.auth import MemoryUsers


class Trader:
    def __init__(self, client: AsyncClient, side: pb.Side, sent: dict[str, int]) -> None:
        self.client = client
        self.side = side
        self.sent = sent
        self.fills = HdrHistogram(1, 60_000_000, 2)
        client.on_push(pb.ExecutionReport, self._report)

    def _report(self, push: Push) -> None:
        report = push.message
        assert isinstance(report, pb.ExecutionReport)
        started = self.sent.pop(report.cl_ord_id, None)
        if started is not None and report.exec_type == pb.EXEC_TRADE:
            self.fills.record_value(max(1, (time.perf_counter_ns() - started) // 1000))

    async def run(self, name: str, until: float, acks: HdrHistogram) -> int:
        count = 0
        while time.perf_counter() < until:
            cl = f"{name}-{count}"
            started = time.perf_counter_ns()
            self.sent[cl] = started
            ack = await self.client.request(
                pb.NewOrderSingle(
                    cl_ord_id=cl,
                    symbol="XYZ",
                    side=self.side,
                    ord_type=pb.LIMIT,
                    price=10_000,
                    order_qty=1,
                )
            )
            acks.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
            assert isinstance(ack, pb.ExecutionReport) and ack.exec_type == pb.EXEC_NEW, ack
            if ack.ord_status == pb.FILLED:
                self.sent.pop(cl, None)  # filled as taker: its fill comes as a push too
            count += 1
        return count


async def run(pairs: int, duration: float, mode: str) -> dict[str, float]:
    users = {f"t{i}": "pw" for i in range(2 * pairs)}
    with tempfile.TemporaryDirectory() as where:
        app = make_app(Path(where), fsync=mode == "on", journal=mode != "none")
        server = Server(
            app,
            config=ServerConfig(host="127.0.0.1", port=0, handler_timeout=60),
            authenticator=MemoryUsers(users),
        )
        await server.start()
        traders: list[Trader] = []
        try:
            for i, name in enumerate(users):
                client = await AsyncClient.connect(*server.address, registry=system_registry([pb]))
                await client.login(name, "pw")
                sent: dict[str, int] = {}
                traders.append(Trader(client, pb.SELL if i % 2 == 0 else pb.BUY, sent))
            acks = HdrHistogram(1, 60_000_000, 2)
            journal = app.state.desk.journal
            first = journal.stats if journal is not None else None
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(t.run(f"t{i}", started + duration, acks) for i, t in enumerate(traders))
            )
            elapsed = time.perf_counter() - started
            await asyncio.sleep(0.2)  # the last fills
            fills = HdrHistogram(1, 60_000_000, 2)
            for trader in traders:
                fills.add(trader.fills)
            appends = batches = 0
            fsync_ms = 0.0
            if journal is not None and first is not None:
                last = journal.stats
                appends = last.appends - first.appends
                # Batches: one write each, and with fsync on one fsync each.
                batches = last.writes - first.writes
                fsync_ms = last.fsync_mean_seconds * 1000
            return {
                "orders_s": sum(counts) / elapsed,
                "ack_p50": acks.get_value_at_percentile(50),
                "ack_p99": acks.get_value_at_percentile(99),
                "fill_p50": fills.get_value_at_percentile(50),
                "fill_p99": fills.get_value_at_percentile(99),
                "fills": fills.get_total_count(),
                "per_batch": appends / batches if batches else 0.0,
                "fsync_ms": fsync_ms,
            }
        finally:
            for trader in traders:
                await trader.client.close()
            await server.stop(timeout=2.0)


LABELS = {"on": "fsync", "off": "no fsync", "none": "none"}


async def main(pairs: int, duration: float) -> None:
    print(f"{pairs} pairs of traders, {duration:g} s each, one process on uvloop")
    print(
        f"{'journal':>8} {'orders/s':>9} {'ack p50':>8} {'ack p99':>8} "
        f"{'fill p50':>9} {'fill p99':>9} {'fills':>7} {'orders/batch':>13} {'fsync ms':>9}"
    )
    for mode in ("on", "off", "none"):
        r = await run(pairs, duration, mode)
        print(
            f"{LABELS[mode]:>8} {r['orders_s']:>9.0f} {r['ack_p50']:>6.0f}us "
            f"{r['ack_p99']:>6.0f}us {r['fill_p50']:>7.0f}us {r['fill_p99']:>7.0f}us "
            f"{r['fills']:>7.0f} {r['per_batch']:>13.1f} {r['fsync_ms']:>9.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    uvloop.run(main(args.pairs, args.duration))  # as `tickwire serve` runs
