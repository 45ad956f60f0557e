"""The Batch contract (``store.batch()``): every test here runs on both backends, so a
batch means the same thing on memory (one call after another) and on Redis (one
MULTI/EXEC transaction): the single calls' results, their checks and their errors, in
order, and a failing operation that does not stop the others."""

from __future__ import annotations

from typing import Any

import pytest

from server.store import Store, StoreTypeError
from server.store.base import BatchResult
from tests.store.conftest import eventually


async def _absent(store: Store, key: str) -> bool:
    return not await store.exists(key)


async def test_results_are_the_single_calls_results(store: Store) -> None:
    await store.set("gone", b"x")
    batch = store.batch()
    batch.set("k", b"v")
    batch.set("k2", b"v2", ttl=10)
    batch.hset("h", {"a": b"1", "b": b"2"})
    batch.hset("h", {"b": b"3", "c": b"4"})
    batch.hset("h", {})
    batch.expire("h", 10)
    batch.expire("missing", 10)
    batch.expire("k2", None)
    batch.expire("missing", None)
    batch.sadd("s", b"a", b"b")
    batch.sadd("s", b"b")
    batch.sadd("s")
    batch.srem("s", b"a", b"x")
    batch.srem("s")
    batch.delete("gone", "missing")
    batch.delete()
    expected: list[BatchResult] = [True, True, 2, 1, 0, True, False, True, False]
    expected += [2, 0, 0, 1, 0, 1, 0]
    assert await batch.run() == expected
    assert await store.get("k") == b"v"
    assert await store.get("k2") == b"v2"
    assert await store.ttl("k2") is None  # expire(None) removed the expiry
    assert await store.hgetall("h") == {"a": b"1", "b": b"3", "c": b"4"}
    left = await store.ttl("h")
    assert left is not None and 0 < left <= 10
    assert await store.smembers("s") == {b"b"}
    assert not await store.exists("gone")


async def test_operations_run_in_the_order_queued(store: Store) -> None:
    batch = store.batch()
    batch.set("k", b"plain")
    batch.delete("k")
    batch.hset("k", {"f": b"v"})  # a hash now: the string went first
    batch.expire("k", 30)
    batch.srem("s", b"m")
    batch.sadd("s", b"m")
    assert await batch.run() == [True, 1, 1, True, 0, 1]
    assert await store.hgetall("k") == {"f": b"v"}
    assert await store.ttl("k") is not None
    assert await store.smembers("s") == {b"m"}


async def test_set_replaces_the_expiry_and_hset_sadd_keep_it(store: Store) -> None:
    await store.set("k", b"v", ttl=30)
    await store.hset("h", {"f": b"v"})
    await store.expire("h", 30)
    batch = store.batch()
    batch.set("k", b"w")  # no ttl: none any more, as with set()
    batch.hset("h", {"g": b"v"})
    assert await batch.run() == [True, 1]
    assert await store.ttl("k") is None
    assert await store.ttl("h") is not None


async def test_ttls_expire_and_tiny_ones_round_up(store: Store) -> None:
    await store.set("e", b"v")
    batch = store.batch()
    batch.set("k", b"v", ttl=0.0004)  # Redis: PX 1, never PX 0 (an error)
    batch.set("t", b"v", ttl=0.2)
    batch.expire("e", 0.2)
    assert await batch.run() == [True, True, True]
    await eventually(lambda: _absent(store, "t"), what="t expired")
    await eventually(lambda: _absent(store, "e"), what="e expired")
    assert not await store.exists("k")


async def test_a_failing_operation_does_not_stop_the_others(store: Store) -> None:
    await store.set("str", b"keep")
    await store.sadd("set", b"m")
    batch = store.batch()
    batch.set("a", b"1")
    batch.hset("str", {"f": b"v"})  # wrong kind: fails
    batch.sadd("b", b"m")
    batch.srem("str", b"m")  # wrong kind again: the first error is the one raised
    batch.expire("a", 30)
    batch.delete("set")
    with pytest.raises(StoreTypeError, match="hset on key 'str'"):
        await batch.run()
    # Every other operation ran, the failed ones left their key alone, nothing undone.
    assert await store.get("a") == b"1"
    assert await store.ttl("a") is not None
    assert await store.smembers("b") == {b"m"}
    assert await store.get("str") == b"keep"
    assert not await store.exists("set")


@pytest.mark.parametrize(
    ("queue", "error"),
    [
        (lambda b: b.set("k", "str"), TypeError),
        (lambda b: b.set("k", b"v", ttl=0), ValueError),
        (lambda b: b.set("k", b"v", ttl=float("nan")), ValueError),
        (lambda b: b.set("k", b"v", ttl="10"), TypeError),
        (lambda b: b.expire("k", -1), ValueError),
        (lambda b: b.expire("k", float("inf")), ValueError),
        (lambda b: b.hset("k", {"f": "str"}), TypeError),
        (lambda b: b.hset("k", {1: b"v"}), TypeError),
        (lambda b: b.sadd("k", "str"), TypeError),
        (lambda b: b.srem("k", b"ok", 1), TypeError),
    ],
)
async def test_arguments_are_checked_when_queued(
    store: Store, queue: Any, error: type[Exception]
) -> None:
    batch = store.batch()
    batch.set("before", b"v")
    with pytest.raises(error):
        queue(batch)
    batch.set("after", b"v")
    assert await batch.run() == [True, True]  # the refused operation is not in it
    assert not await store.exists("k")


async def test_bytes_like_values_are_taken_as_bytes(store: Store) -> None:
    batch = store.batch()
    batch.set("k", bytearray(b"\x00\xff"))  # type: ignore[arg-type]
    batch.hset("h", {"f": memoryview(b"mv")})  # type: ignore[dict-item]
    assert await batch.run() == [True, 1]
    assert await store.get("k") == b"\x00\xff"
    assert await store.hget("h", "f") == b"mv"


async def test_an_empty_batch_returns_nothing(store: Store) -> None:
    assert await store.batch().run() == []
    batch = store.batch()
    batch.hset("h", {})
    batch.delete()
    batch.sadd("s")
    assert await batch.run() == [0, 0, 0]


async def test_a_batch_runs_once(store: Store) -> None:
    batch = store.batch()
    batch.sadd("s", b"m")
    assert await batch.run() == [1]
    with pytest.raises(RuntimeError, match="has run already"):
        await batch.run()
    with pytest.raises(RuntimeError, match="has run already"):
        batch.sadd("s", b"n")
    assert await store.smembers("s") == {b"m"}


async def test_nothing_runs_before_run(store: Store) -> None:
    batch = store.batch()
    batch.set("k", b"v")
    batch.sadd("s", b"m")
    assert not await store.exists("k")
    assert not await store.exists("s")
    del batch  # an abandoned batch writes nothing and holds nothing
    assert await store.set("k", b"w") is True


async def test_a_namespaced_batch_prefixes_every_key(store: Store) -> None:
    view = store.namespaced("app:x:").namespaced("y:")
    await store.set("app:x:y:old", b"v")
    batch = view.batch()
    batch.set("k", b"v", ttl=30)
    batch.hset("h", {"f": b"v"})
    batch.expire("h", 30)
    batch.sadd("s", b"a", b"b")
    batch.srem("s", b"a")
    batch.delete("old", "missing")
    assert await batch.run() == [True, 1, True, 2, 1, 1]
    assert sorted(await store.scan_prefix("")) == ["app:x:y:h", "app:x:y:k", "app:x:y:s"]
    assert await store.get("app:x:y:k") == b"v"
    assert await view.smembers("s") == {b"b"}
    await store.set("app:x:y:str", b"v")
    failing = view.batch()
    failing.sadd("str", b"m")
    with pytest.raises(StoreTypeError, match="sadd on key 'app:x:y:str'"):
        await failing.run()
