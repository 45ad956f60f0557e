"""`tickwire nodes --cluster URL`: the live nodes of a cluster, as its directory has them
(docs/scaling.md, "Discovery")."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "nodes",
        help="list the live nodes of a cluster",
        description="List the live nodes of the cluster on a Redis: id, address, pid, "
        "load and whether each is draining.",
    )
    p.add_argument("--cluster", required=True, metavar="URL", help="redis://HOST:PORT/DB")
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p.set_defaults(func=nodes)


def nodes(args: argparse.Namespace) -> int:
    import msgspec

    from server.cluster import ClusterError, read_nodes

    try:
        found = asyncio.run(read_nodes(args.cluster))
    except ValueError as exc:
        print(f"tickwire nodes: bad cluster URL: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"tickwire nodes: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(msgspec.to_builtins(found)))
        return 0
    if not found:
        print("no live nodes")
        return 0
    now = time.time_ns() // 1_000_000
    rows = [("NODE", "ADDRESS", "PID", "CONNS", "SESSIONS", "UP", "STATE")]
    for info in found:
        rows.append(
            (
                info.id,
                f"{info.host}:{info.port}",
                str(info.pid),
                str(info.connections),
                str(info.sessions),
                f"{max(0, now - info.started_ms) // 1000}s",
                "draining" if info.draining else "serving",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0
