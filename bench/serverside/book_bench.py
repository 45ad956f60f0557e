"""Orders/s of the trade example's matching, for docs/trade.md: a mixed stream of new,
aggressive, market, cancel and replace requests on one symbol whose book holds `depth`
resting orders, through `Book` alone and through `Venue` (with the accounts' pre-trade
check, holds and settlement).

    .venv/bin/python -m bench.serverside.book_bench [--orders 200000] [--depth 10000] [--repeat 3]

The stream is made first, by running it on a book built the same way (so cancels and
replaces name orders that are live when they arrive), then timed on a fresh book: the
book is deterministic, so the second run sees the same ids and the same states. One
process, one core, no I/O; each target runs `repeat` times on a fresh book and the
fastest run is shown (a slower one measures the neighbours on a shared machine too).
Nothing asserts a time: tests/examples/trade/test_book_bench.py only checks that it runs.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from examples.trade.book import (
    Book,
    Event,
    ExecutionReport,
    Ids,
    OrdStatus,
    OrdType,
    Side,
)
from examples.trade.venue import Venue

SYMBOL = "XYZ"
MID = 100_000
#: The resting orders sit this many ticks either side of MID, on both sides.
SPREAD_TICKS = 500
ACCOUNTS = 100
#: (kind, share of the stream).
MIX: tuple[tuple[str, float], ...] = (
    ("passive", 0.40),  # a limit order that rests inside the book
    ("cancel", 0.30),
    ("replace", 0.15),  # half keep priority (qty down), half move price
    ("aggressive", 0.10),  # a limit order that crosses the spread
    ("market", 0.05),
)

#: (method, keyword arguments): what is sent to the Book or the Venue.
Command = tuple[str, dict[str, Any]]


class Tracker:
    """The live orders of the book, from its events, for picking cancel targets."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.where: dict[int, int] = {}

    def see(self, events: list[Event]) -> None:
        for e in events:
            if not isinstance(e, ExecutionReport):
                continue
            if e.ord_status in (OrdStatus.FILLED, OrdStatus.CANCELED):
                self._drop(e.order_id)
            elif e.order_id not in self.where and e.ord_type is OrdType.LIMIT and e.leaves_qty:
                self.where[e.order_id] = len(self.ids)
                self.ids.append(e.order_id)

    def _drop(self, order_id: int) -> None:
        at = self.where.pop(order_id, None)
        if at is None:
            return
        last = self.ids.pop()
        if last != order_id:
            self.ids[at] = last
            self.where[last] = at


def seed_commands(depth: int, rng: random.Random) -> list[Command]:
    """`depth` resting orders, half bids below MID and half asks above it."""
    commands: list[Command] = []
    for n in range(depth):
        side = Side.BUY if n % 2 else Side.SELL
        offset = rng.randint(1, SPREAD_TICKS)
        price = MID - offset if side is Side.BUY else MID + offset
        commands.append(_new(f"s{n}", rng, side, OrdType.LIMIT, price, rng.randint(1, 100)))
    return commands


def _new(
    cl_ord_id: str, rng: random.Random, side: Side, ord_type: OrdType, price: int, qty: int
) -> Command:
    return (
        "new_order",
        {
            "cl_ord_id": cl_ord_id,
            "account": f"acct{rng.randrange(ACCOUNTS)}",
            "side": side,
            "ord_type": ord_type,
            "price": price,
            "order_qty": qty,
        },
    )


def make_stream(depth: int, orders: int, seed: int) -> tuple[list[Command], list[Command]]:
    """The seeding commands and the mixed stream after them."""
    rng = random.Random(seed)
    book = Book(SYMBOL, Ids())
    tracker = Tracker()
    seeding = seed_commands(depth, rng)
    for method, kwargs in seeding:
        tracker.see(getattr(book, method)(**kwargs))
    kinds = [kind for kind, _ in MIX]
    weights = [share for _, share in MIX]
    stream: list[Command] = []
    for n in range(orders):
        kind = rng.choices(kinds, weights)[0]
        if kind in ("cancel", "replace") and not tracker.ids:
            kind = "passive"
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        sign = 1 if side is Side.BUY else -1
        command: Command
        if kind == "passive":
            price = MID - sign * rng.randint(1, SPREAD_TICKS)
            command = _new(f"o{n}", rng, side, OrdType.LIMIT, price, rng.randint(1, 100))
        elif kind == "aggressive":
            price = MID + sign * rng.randint(1, 20)
            command = _new(f"o{n}", rng, side, OrdType.LIMIT, price, rng.randint(1, 300))
        elif kind == "market":
            command = _new(f"o{n}", rng, side, OrdType.MARKET, 0, rng.randint(1, 300))
        else:
            order_id = tracker.ids[rng.randrange(len(tracker.ids))]
            order = book.order(order_id)
            assert order is not None
            price, cum = order.price, order.cum_qty
            base = {"order_id": order_id, "cl_ord_id": f"o{n}", "account": order.account}
            if kind == "cancel":
                command = ("cancel", base)
            elif rng.random() < 0.5:
                qty = max(cum + 1, order.order_qty - rng.randint(1, 5))
                command = ("replace", {**base, "price": price, "order_qty": qty})
            else:
                moved = price + rng.choice((-2, -1, 1, 2))
                command = ("replace", {**base, "price": moved, "order_qty": order.order_qty})
        stream.append(command)
        method, kwargs = command
        tracker.see(getattr(book, method)(**kwargs))
    return seeding, stream


def _venue() -> Venue:
    venue = Venue([SYMBOL])
    for n in range(ACCOUNTS):
        venue.accounts.open(f"acct{n}", cash=10**15, positions={SYMBOL: 10**9})
    return venue


def _for_venue(command: Command) -> Command:
    method, kwargs = command
    return method, {**kwargs, "symbol": SYMBOL}


def time_stream(
    target: Book | Venue, seeding: list[Command], stream: list[Command]
) -> dict[str, float]:
    for method, kwargs in seeding:
        getattr(target, method)(**kwargs)
    resting = len(target) if isinstance(target, Book) else len(target.books[SYMBOL])
    calls: list[tuple[Callable[..., list[Event]], dict[str, Any]]] = [
        (getattr(target, method), kwargs) for method, kwargs in stream
    ]
    events = 0
    gc.collect()
    started = time.perf_counter()
    for call, kwargs in calls:
        events += len(call(**kwargs))
    took = time.perf_counter() - started
    return {
        "resting_before": resting,
        "seconds": took,
        "orders_per_s": len(stream) / took,
        "us_per_order": took / len(stream) * 1e6,
        "events_per_order": events / len(stream),
    }


def run(
    orders: int = 200_000, depth: int = 10_000, seed: int = 1, repeat: int = 3
) -> dict[str, Any]:
    seeding, stream = make_stream(depth, orders, seed)
    kinds: dict[str, int] = {}
    for method, kwargs in stream:
        kind = method if method != "new_order" else str(kwargs["ord_type"])
        kinds[kind] = kinds.get(kind, 0) + 1
    rows: dict[str, dict[str, float]] = {}
    for _ in range(repeat):
        book = Book(SYMBOL, Ids())
        book_row = time_stream(book, seeding, stream)
        book_row["resting_after"] = len(book)
        venue = _venue()
        venue_row = time_stream(
            venue, [_for_venue(c) for c in seeding], [_for_venue(c) for c in stream]
        )
        venue_row["resting_after"] = len(venue.books[SYMBOL])
        for label, row in (("book", book_row), ("venue", venue_row)):
            if label not in rows or row["seconds"] < rows[label]["seconds"]:
                rows[label] = row
    return {
        "orders": orders,
        "depth": depth,
        "seed": seed,
        "python": sys.version.split()[0],
        "repeat": repeat,
        "requests": kinds,
        "book": rows["book"],
        "venue": rows["venue"],
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['orders']} requests on one symbol, {result['depth']} resting orders "
        f"to start, Python {result['python']}, best of {result['repeat']}: {result['requests']}"
    )
    for label in ("book", "venue"):
        row = result[label]
        print(
            f"{label:>5}: {row['orders_per_s']:>9,.0f} orders/s  "
            f"{row['us_per_order']:6.2f} µs/order  {row['events_per_order']:.2f} events/order"
            f"  resting {row['resting_before']} -> {row['resting_after']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--orders", type=int, default=200_000, help="requests timed")
    parser.add_argument("--depth", type=int, default=10_000, help="resting orders to start")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is shown")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.orders, args.depth, args.seed, args.repeat)
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        _print(result)


if __name__ == "__main__":
    main()
