"""Which live node owns a key: rendezvous (highest random weight) hashing.

Each node scores ``blake2b(node id + key)`` and the highest score owns the key. When a
node leaves, only its keys move (each to its own next-highest node, so they spread over
the survivors); when one joins, it takes about 1/N of the keys from every node. Pure:
the same ids and key give the same owner in every process on every machine (no
``hash()``, which is salted per process).
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b


def score(node_id: str, key: str) -> int:
    digest = blake2b(f"{node_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, nodes: Iterable[str]) -> str | None:
    """The node of `nodes` that owns `key`; None when there are none."""
    best: str | None = None
    best_score = -1
    for node in nodes:
        value = score(node, key)
        if value > best_score or (value == best_score and best is not None and node < best):
            best, best_score = node, value
    return best
