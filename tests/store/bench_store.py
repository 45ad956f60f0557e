"""Store figures for docs/store.md: restore time of a snapshot of N sessions, and
operations per second of both backends.

    .venv/bin/python -m tests.store.bench_store [--sessions 100000] [--ops 50000]

Prints a table and, with --json, one JSON object. Starts its own redis-server on a free
port (skipping the Redis rows when there is none). Nothing here asserts a time: figures
depend on the machine, so they are reported, and tests/store/test_bench_smoke.py only
checks that the script still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from server.store import MemoryStore, RedisStore, Store
from tests.store.redisproc import redis_binary, start_redis


async def fill_sessions(store: Store, sessions: int) -> None:
    """What the session layer will hold per session: a 5-field hash and a token key
    with a TTL."""
    for i in range(sessions):
        await store.hset(
            f"session:{i}",
            {
                "user": b"%d" % i,
                "node": b"node-1",
                "conn": b"%d" % (i * 7),
                "created": b"1700000000.123",
                "data": b'{"room":"lobby"}',
            },
        )
        await store.set(f"token:{i:032x}", b"session:%d" % i, ttl=3600)


async def bench_restore(sessions: int, rounds: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store.snap"
        store = MemoryStore(path, snapshot_interval=0)
        await store.start()
        await fill_sessions(store, sessions)
        start = time.perf_counter()
        store._snapshot_bytes()
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        await store.close()  # encode again + write + fsync
        close_s = time.perf_counter() - start
        size = path.stat().st_size

        restores = []
        for _ in range(rounds):
            start = time.perf_counter()
            restored = await MemoryStore.open(path, snapshot_interval=0)
            restores.append(time.perf_counter() - start)
            assert len(restored) == 2 * sessions, len(restored)
            assert restored.restore_error is None
            restored._started = False  # leave the file as it is
            await restored.close()
    return {
        "sessions": sessions,
        "keys": 2 * sessions,
        "snapshot_bytes": size,
        "encode_s": encode_s,
        "snapshot_on_close_s": close_s,
        "restore_s_median": statistics.median(restores),
        "restore_s_max": max(restores),
    }


async def _rate(op: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> float:
    """Operations per second of `op(i)` for i in range(n), `concurrency` in flight."""
    if concurrency == 1:
        start = time.perf_counter()
        for i in range(n):
            await op(i)
        return n / (time.perf_counter() - start)

    async def worker(first: int) -> None:
        for i in range(first, n, concurrency):
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return n / (time.perf_counter() - start)


async def bench_ops(store: Store, n: int, concurrency: int = 1) -> dict[str, float]:
    keys = [f"bench:{i % 1000}" for i in range(n)]
    value = b"x" * 64
    out = {
        "set": await _rate(lambda i: store.set(keys[i], value), n, concurrency),
        "set_ttl": await _rate(lambda i: store.set(keys[i], value, ttl=60), n, concurrency),
        "get": await _rate(lambda i: store.get(keys[i]), n, concurrency),
        "incr": await _rate(lambda i: store.incr("bench:n"), n, concurrency),
        "hset": await _rate(
            lambda i: store.hset(keys[i] + ":h", {"a": value, "b": value}), n, concurrency
        ),
        "hgetall": await _rate(lambda i: store.hgetall(keys[i] + ":h"), n, concurrency),
    }
    await store.set("bench:cas", b"0")
    out["compare_and_set"] = await _rate(
        lambda i: store.compare_and_set("bench:cas", b"%d" % i, b"%d" % (i + 1)), n, concurrency
    )
    return out


async def run(sessions: int, ops: int) -> dict[str, Any]:
    result: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    result["restore"] = await bench_restore(sessions)
    memory = MemoryStore()
    result["memory"] = await bench_ops(memory, ops)
    capped = MemoryStore(max_keys=100_000)
    result["memory_lru"] = await bench_ops(capped, ops)
    binary = redis_binary()
    if binary is None:
        result["redis"] = "skipped: no redis-server on PATH"
        return result
    server = start_redis(binary)
    try:
        store = await RedisStore.connect(server.url)
        try:
            result["redis"] = await bench_ops(store, max(ops // 10, 100))
            result["redis_64_in_flight"] = await bench_ops(store, ops, concurrency=64)
        finally:
            await store.close()
    finally:
        server.stop()
    return result


def _print(result: dict[str, Any]) -> None:
    r = result["restore"]
    print(f"python {result['python']}, {result['cpus']} CPUs, uvloop")
    print(
        f"snapshot of {r['sessions']:,} sessions ({r['keys']:,} keys): "
        f"{r['snapshot_bytes'] / 1e6:.1f} MB, encode {r['encode_s'] * 1000:.0f} ms, "
        f"encode+write+fsync {r['snapshot_on_close_s'] * 1000:.0f} ms"
    )
    print(
        f"restore: median {r['restore_s_median'] * 1000:.0f} ms, "
        f"max {r['restore_s_max'] * 1000:.0f} ms"
    )
    columns = [c for c in ("memory", "memory_lru", "redis", "redis_64_in_flight") if c in result]
    ops = list(result["memory"])
    print(f"\n{'ops/s':<16}" + "".join(f"{c:>20}" for c in columns))
    for op in ops:
        row = f"{op:<16}"
        for c in columns:
            cell = result[c]
            row += f"{cell[op]:>20,.0f}" if isinstance(cell, dict) else f"{'-':>20}"
        print(row)
    for c in columns:
        if isinstance(result[c], str):
            print(f"{c}: {result[c]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.sessions, args.ops))
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        _print(result)


if __name__ == "__main__":
    main()
