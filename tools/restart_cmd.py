"""`tickwire restart --pid-file F`: zero-downtime restart of a running server (SIGHUP), and
wait until its successor has taken over, so scripts and supervisors know how it went."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "restart", help="restart a running server without dropping its listening socket"
    )
    p.add_argument("--pid-file", required=True, help="the server's --pid-file")
    p.add_argument(
        "--timeout",
        type=float,
        default=40.0,
        help="seconds to wait for the successor to take over (default: %(default)s)",
    )
    p.set_defaults(func=restart)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_workers(path: Path) -> set[int]:
    """The worker pids a `--processes` parent lists beside its pid file (none: not one)."""
    try:
        return {int(pid) for pid in path.read_text().split()}
    except (OSError, ValueError):
        return set()


def restart(args: argparse.Namespace) -> int:
    path = Path(args.pid_file)
    old = read_pid(path)
    if old is None:
        print(f"tickwire restart: no pid in {path}", file=sys.stderr)
        return 2
    workers_file = Path(f"{path}.workers")
    old_workers = read_workers(workers_file)
    try:
        os.kill(old, signal.SIGHUP)
    except ProcessLookupError:
        print(f"tickwire restart: no process {old} (stale {path}?)", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    if old_workers:
        # A --processes parent keeps its pid and replaces its workers one at a time.
        while time.monotonic() < deadline:
            now = read_workers(workers_file)
            if len(now) == len(old_workers) and not now & old_workers:
                print(f"restarted workers: {sorted(old_workers)} -> {sorted(now)}")
                return 0
            time.sleep(0.05)
        print(
            f"tickwire restart: the workers of {old} were not all replaced within "
            f"{args.timeout:g} s (its log says why)",
            file=sys.stderr,
        )
        return 1
    while time.monotonic() < deadline:
        new = read_pid(path)
        if new is not None and new != old:
            print(f"restarted: {old} -> {new}")
            return 0
        time.sleep(0.05)
    print(
        f"tickwire restart: no successor took over within {args.timeout:g} s; "
        f"{old} keeps serving (its log says why)",
        file=sys.stderr,
    )
    return 1
