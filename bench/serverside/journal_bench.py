"""What a durable append costs, for docs/journal.md: appends/s and append latency of
server/journal at several concurrencies, with group commit, with one fsync per append,
and without fsync, beside the bare cost of an fdatasync on the same disk.

    .venv/bin/python -m bench.serverside.journal_bench [--seconds 3] [--size 100] [--dir D]

Each row runs `concurrency` tasks that append `size`-byte records back to back for
`seconds` on a fresh journal on uvloop. Prints a table and, with --json, one JSON object.
Nothing asserts a time: tests/journal/test_bench_smoke.py only checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import msgspec
import uvloop

from server.journal import Journal

CONCURRENCIES = (1, 16, 256)
#: (label, fsync, sync) of each mode measured.
MODES: tuple[tuple[str, bool, Literal["batch", "always"]], ...] = (
    ("group commit", True, "batch"),
    ("fsync each", True, "always"),
    ("no fsync", False, "batch"),
)


def percentile(ordered: list[int], fraction: float) -> int:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def bare_fdatasync(directory: Path, count: int) -> dict[str, float]:
    """write() of 128 bytes then fdatasync(), `count` times: the floor an append can't
    go under when it is synced alone."""
    path = directory / "bare"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    took = []
    try:
        for _ in range(count):
            started = time.perf_counter_ns()
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            took.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return {
        "syncs": count,
        "p50_us": percentile(took, 0.50) / 1e3,
        "p99_us": percentile(took, 0.99) / 1e3,
        "per_s": count / (sum(took) / 1e9),
    }


async def measure(
    directory: Path,
    concurrency: int,
    fsync: bool,
    sync: Literal["batch", "always"],
    seconds: float,
    size: int,
) -> dict[str, Any]:
    body = b"o" * size
    latencies: list[int] = []
    journal = await Journal.open(directory, fsync=fsync, sync=sync)
    stop = time.perf_counter() + seconds

    async def client() -> None:
        append = journal.append
        clock = time.perf_counter_ns
        while time.perf_counter() < stop:
            started = clock()
            await append(body)
            latencies.append(clock() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    stats = journal.stats
    await journal.close()
    latencies.sort()
    return {
        "concurrency": concurrency,
        "appends": len(latencies),
        "appends_per_s": len(latencies) / elapsed,
        "p50_us": percentile(latencies, 0.50) / 1e3,
        "p99_us": percentile(latencies, 0.99) / 1e3,
        "fsyncs": stats.fsyncs,
        "appends_per_fsync": stats.appends_per_fsync,
        "fsync_mean_us": stats.fsync_mean_seconds * 1e6,
        "fsync_share": stats.fsync_seconds / elapsed,
        "mib_per_s": stats.bytes / elapsed / (1 << 20),
    }


async def run(
    seconds: float = 3.0,
    size: int = 100,
    directory: str | None = None,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    bare_syncs: int = 500,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=directory) as folder:
        root = Path(folder)
        result: dict[str, Any] = {
            "seconds": seconds,
            "size": size,
            "directory": folder,
            "bare_fdatasync": bare_fdatasync(root, bare_syncs),
            "modes": {},
        }
        for index, (label, fsync, sync) in enumerate(MODES):
            rows = []
            for concurrency in concurrencies:
                where = root / f"{index}-{concurrency}"
                rows.append(await measure(where, concurrency, fsync, sync, seconds, size))
            result["modes"][label] = rows
    return result


def _print(result: dict[str, Any]) -> None:
    bare = result["bare_fdatasync"]
    print(
        f"bare write+fdatasync of 128 B in {result['directory']}: p50 {bare['p50_us']:.0f} µs, "
        f"p99 {bare['p99_us']:.0f} µs, {bare['per_s']:.0f}/s"
    )
    print(f"{result['size']}-byte records, {result['seconds']:g} s per row")
    head = (
        f"{'mode':<13}{'conc':>5}{'appends/s':>11}{'p50 µs':>9}{'p99 µs':>9}"
        f"{'per fsync':>10}{'fsync µs':>9}{'in fsync':>9}"
    )
    print(head)
    for label, rows in result["modes"].items():
        for row in rows:
            print(
                f"{label:<13}{row['concurrency']:>5}{row['appends_per_s']:>11.0f}"
                f"{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}{row['appends_per_fsync']:>10.1f}"
                f"{row['fsync_mean_us']:>9.0f}{row['fsync_share']:>9.0%}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=3.0, help="per row")
    parser.add_argument("--size", type=int, default=100, help="record body bytes")
    parser.add_argument("--dir", default=None, help="where the journals go (a temp folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.seconds, args.size, args.dir))
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        _print(result)


if __name__ == "__main__":
    main()
