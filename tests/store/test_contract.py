"""The Store contract: every test here runs on both backends (the `store` fixture), so
memory and Redis cannot drift apart in what callers see."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.store import Store, StoreError, StoreTypeError
from tests.store.conftest import eventually

# -- strings -----------------------------------------------------------------------------


async def test_get_set_roundtrip(store: Store) -> None:
    assert await store.get("missing") is None
    assert await store.set("k", b"v1") is True
    assert await store.get("k") == b"v1"
    assert await store.set("k", b"") is True
    assert await store.get("k") == b""
    buffer: Any = bytearray(b"\x00\xff")  # bytes-like values are taken as bytes
    assert await store.set("k", buffer) is True
    assert await store.get("k") == b"\x00\xff"


async def test_keys_are_unicode(store: Store) -> None:
    await store.set("ключ:é:🎮", b"v")
    assert await store.get("ключ:é:🎮") == b"v"
    assert await store.scan_prefix("ключ:") == ["ключ:é:🎮"]


async def test_set_nx_only_when_absent(store: Store) -> None:
    assert await store.set("k", b"first", nx=True) is True
    assert await store.set("k", b"second", nx=True) is False
    assert await store.get("k") == b"first"
    await store.hset("h", {"f": b"v"})
    assert await store.set("h", b"x", nx=True) is False
    assert await store.hget("h", "f") == b"v"


async def test_set_nx_on_an_expired_key_writes(store: Store) -> None:
    await store.set("k", b"old", ttl=0.2)
    await eventually(lambda: _absent(store, "k"), what="k expired")
    assert await store.set("k", b"new", nx=True) is True
    assert await store.get("k") == b"new"


async def test_concurrent_set_nx_has_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.set("lock", b"%d" % i, nx=True) for i in range(40)))
    assert sum(results) == 1
    assert await store.get("lock") == b"%d" % results.index(True)


async def test_set_replaces_any_kind(store: Store) -> None:
    await store.hset("k", {"f": b"v"})
    assert await store.set("k", b"plain") is True
    assert await store.get("k") == b"plain"
    await store.sadd("s", b"m")
    await store.set("s", b"plain")
    assert await store.get("s") == b"plain"


async def test_incr(store: Store) -> None:
    assert await store.incr("n") == 1
    assert await store.incr("n") == 2
    assert await store.incr("n", 10) == 12
    assert await store.incr("n", -20) == -8
    assert await store.get("n") == b"-8"
    await store.set("m", b"41")
    assert await store.incr("m") == 42


@pytest.mark.parametrize("value", [b"abc", b"1.5", b" 1", b"", b"99999999999999999999"])
async def test_incr_on_a_non_integer_is_a_type_error(store: Store, value: bytes) -> None:
    await store.set("n", value)
    with pytest.raises(StoreTypeError):
        await store.incr("n")
    assert await store.get("n") == value


async def test_incr_overflow_is_refused(store: Store) -> None:
    await store.set("n", b"%d" % (2**63 - 1))
    with pytest.raises(StoreError) as info:
        await store.incr("n")
    assert not isinstance(info.value, StoreTypeError)
    assert await store.get("n") == b"%d" % (2**63 - 1)


async def test_delete_counts_existing_keys(store: Store) -> None:
    await store.set("a", b"1")
    await store.hset("b", {"f": b"v"})
    await store.sadd("c", b"m")
    assert await store.delete() == 0
    assert await store.delete("a", "b", "c", "nope") == 3
    assert await store.delete("a") == 0
    for key in "abc":
        assert not await store.exists(key)


async def test_exists(store: Store) -> None:
    assert await store.exists("k") is False
    await store.set("k", b"")
    assert await store.exists("k") is True
    await store.sadd("s", b"x")
    assert await store.exists("s") is True


# -- ttl ---------------------------------------------------------------------------------


async def _absent(store: Store, key: str) -> bool:
    return not await store.exists(key)


async def test_ttl_reports_seconds_left(store: Store) -> None:
    await store.set("k", b"v", ttl=30)
    left = await store.ttl("k")
    assert left is not None
    assert 29 < left <= 30


async def test_ttl_is_none_without_key_or_expiry(store: Store) -> None:
    assert await store.ttl("missing") is None
    await store.set("k", b"v")
    assert await store.ttl("k") is None


async def test_key_expires(store: Store) -> None:
    await store.set("k", b"v", ttl=0.2)
    await store.hset("h", {"f": b"v"})
    await store.expire("h", 0.2)
    await store.sadd("s", b"m")
    await store.expire("s", 0.2)
    await eventually(lambda: _absent(store, "k"), what="string expired")
    await eventually(lambda: _absent(store, "h"), what="hash expired")
    await eventually(lambda: _absent(store, "s"), what="set expired")
    assert await store.get("k") is None
    assert await store.hgetall("h") == {}
    assert await store.smembers("s") == set()
    assert await store.ttl("k") is None


async def test_expired_keys_never_come_back(store: Store) -> None:
    """Reads after expiry see nothing, whichever read comes first."""
    for name in ("get", "hget", "smembers", "ttl", "exists"):
        await store.set(f"s-{name}", b"v", ttl=0.15)
    await eventually(lambda: _absent(store, "s-exists"), what="expiry")
    assert await store.get("s-get") is None
    assert await store.ttl("s-ttl") is None
    assert "s-smembers" not in await store.scan_prefix("s-")
    assert await store.scan_prefix("s-") == []


async def test_set_without_ttl_clears_the_expiry(store: Store) -> None:
    await store.set("k", b"v", ttl=30)
    await store.set("k", b"w")
    assert await store.ttl("k") is None


async def test_expire(store: Store) -> None:
    assert await store.expire("missing", 10) is False
    assert await store.expire("missing", None) is False
    assert not await store.exists("missing")
    await store.set("k", b"v")
    assert await store.expire("k", 30) is True
    left = await store.ttl("k")
    assert left is not None and 29 < left <= 30
    assert await store.expire("k", None) is True
    assert await store.ttl("k") is None
    assert await store.expire("k", None) is True  # already without expiry: still exists
    assert await store.get("k") == b"v"


async def test_writes_that_keep_the_expiry(store: Store) -> None:
    await store.set("n", b"1", ttl=30)
    await store.incr("n")
    await store.hset("h", {"a": b"1"})
    await store.expire("h", 30)
    await store.hset("h", {"b": b"2"})
    await store.hdel("h", "a")
    await store.sadd("s", b"1")
    await store.expire("s", 30)
    await store.sadd("s", b"2")
    await store.srem("s", b"1")
    for key in ("n", "h", "s"):
        left = await store.ttl(key)
        assert left is not None and 29 < left <= 30, key


async def test_sub_millisecond_ttl_still_expires(store: Store) -> None:
    await store.set("k", b"v", ttl=0.0001)
    await eventually(lambda: _absent(store, "k"), what="expiry")


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
async def test_bad_ttl_is_refused(store: Store, ttl: float) -> None:
    with pytest.raises(ValueError):
        await store.set("k", b"v", ttl=ttl)
    with pytest.raises(ValueError):
        await store.compare_and_set("k", None, b"v", ttl=ttl)
    await store.set("k", b"v")
    with pytest.raises(ValueError):
        await store.expire("k", ttl)
    assert await store.ttl("k") is None


async def test_values_must_be_bytes(store: Store) -> None:
    bad: Any = "text"
    with pytest.raises(TypeError):
        await store.set("k", bad)
    with pytest.raises(TypeError):
        await store.hset("h", {"f": bad})
    with pytest.raises(TypeError):
        await store.sadd("s", bad)
    with pytest.raises(TypeError):
        await store.compare_and_set("k", None, bad)
    assert await store.scan_prefix("") == []


# -- compare and set ---------------------------------------------------------------------


async def test_compare_and_set(store: Store) -> None:
    assert await store.compare_and_set("k", b"x", b"y") is False  # absent, expected a value
    assert not await store.exists("k")
    assert await store.compare_and_set("k", None, b"v1") is True  # create if absent
    assert await store.compare_and_set("k", None, b"v2") is False
    assert await store.compare_and_set("k", b"nope", b"v2") is False
    assert await store.get("k") == b"v1"
    assert await store.compare_and_set("k", b"v1", b"v2") is True
    assert await store.get("k") == b"v2"
    assert await store.compare_and_set("k", b"v2", b"v2") is True  # same value is fine
    assert await store.compare_and_set("e", None, b"") is True
    assert await store.compare_and_set("e", b"", b"x") is True  # empty value is a value
    assert await store.get("e") == b"x"


async def test_compare_and_set_expiry(store: Store) -> None:
    assert await store.compare_and_set("k", None, b"v", ttl=30) is True
    left = await store.ttl("k")
    assert left is not None and 29 < left <= 30
    assert await store.compare_and_set("k", b"v", b"w") is True
    assert await store.ttl("k") is None  # written like set(): no ttl, no expiry
    assert await store.compare_and_set("k", b"w", b"z", ttl=0.2) is True
    await eventually(lambda: _absent(store, "k"), what="expiry")
    assert await store.compare_and_set("k", None, b"again") is True


async def test_concurrent_compare_and_set_has_one_winner_per_round(store: Store) -> None:
    expected: bytes | None = None
    for round_ in range(8):
        candidates = [b"%d-%d" % (round_, i) for i in range(40)]
        results = await asyncio.gather(
            *(store.compare_and_set("k", expected, value) for value in candidates)
        )
        assert sum(results) == 1, f"round {round_}: {sum(results)} winners"
        expected = candidates[results.index(True)]
        assert await store.get("k") == expected


async def test_compare_and_set_counter_loses_no_update(store: Store) -> None:
    """Read, compute, CAS, retry: the pattern sessions use. 10 workers x 10 increments."""

    async def worker() -> int:
        retries = 0
        for _ in range(10):
            while True:
                current = await store.get("counter")
                following = b"%d" % (int(current or b"0") + 1)
                if await store.compare_and_set("counter", current, following):
                    break
                retries += 1
                await asyncio.sleep(0)
        return retries

    await asyncio.gather(*(worker() for _ in range(10)))
    assert await store.get("counter") == b"100"


# -- hashes ------------------------------------------------------------------------------


async def test_hash_operations(store: Store) -> None:
    assert await store.hgetall("h") == {}
    assert await store.hget("h", "a") is None
    assert await store.hset("h", {}) == 0
    assert not await store.exists("h")
    assert await store.hset("h", {"a": b"1", "b": b"2"}) == 2
    assert await store.hset("h", {"b": b"3", "c": b""}) == 1
    assert await store.hget("h", "b") == b"3"
    assert await store.hget("h", "zz") is None
    assert await store.hgetall("h") == {"a": b"1", "b": b"3", "c": b""}
    assert await store.hdel("h") == 0
    assert await store.hdel("h", "a", "zz") == 1
    assert await store.hgetall("h") == {"b": b"3", "c": b""}
    assert await store.hdel("missing", "a") == 0


async def test_hgetall_is_a_copy(store: Store) -> None:
    await store.hset("h", {"a": b"1"})
    got = await store.hgetall("h")
    got["b"] = b"2"
    assert await store.hgetall("h") == {"a": b"1"}


async def test_removing_the_last_field_removes_the_hash(store: Store) -> None:
    await store.hset("h", {"a": b"1", "b": b"2"})
    assert await store.hdel("h", "a", "b") == 2
    assert not await store.exists("h")
    assert await store.scan_prefix("h") == []


# -- sets --------------------------------------------------------------------------------


async def test_set_operations(store: Store) -> None:
    assert await store.smembers("s") == set()
    assert await store.sismember("s", b"a") is False
    assert await store.sadd("s") == 0
    assert await store.sadd("s", b"a", b"b", b"a") == 2
    assert await store.sadd("s", b"b", b"c") == 1
    assert await store.smembers("s") == {b"a", b"b", b"c"}
    assert await store.sismember("s", b"b") is True
    assert await store.sismember("s", b"z") is False
    assert await store.srem("s") == 0
    assert await store.srem("s", b"a", b"z") == 1
    assert await store.smembers("s") == {b"b", b"c"}
    assert await store.srem("missing", b"a") == 0


async def test_removing_the_last_member_removes_the_set(store: Store) -> None:
    await store.sadd("s", b"a")
    got = await store.smembers("s")
    got.add(b"mutating the copy")
    assert await store.srem("s", b"a") == 1
    assert not await store.exists("s")


# -- type errors -------------------------------------------------------------------------

Op = Callable[[Store, str], Awaitable[object]]

STRING_OPS: dict[str, Op] = {
    "get": lambda s, k: s.get(k),
    "incr": lambda s, k: s.incr(k),
    "compare_and_set": lambda s, k: s.compare_and_set(k, b"x", b"y"),
    "compare_and_set-absent": lambda s, k: s.compare_and_set(k, None, b"y"),
}
HASH_OPS: dict[str, Op] = {
    "hset": lambda s, k: s.hset(k, {"f": b"v"}),
    "hget": lambda s, k: s.hget(k, "f"),
    "hgetall": lambda s, k: s.hgetall(k),
    "hdel": lambda s, k: s.hdel(k, "f"),
}
SET_OPS: dict[str, Op] = {
    "sadd": lambda s, k: s.sadd(k, b"m"),
    "srem": lambda s, k: s.srem(k, b"m"),
    "smembers": lambda s, k: s.smembers(k),
    "sismember": lambda s, k: s.sismember(k, b"m"),
}
HOLDERS: dict[str, Callable[[Store, str], Awaitable[object]]] = {
    "string": lambda s, k: s.set(k, b"v"),
    "hash": lambda s, k: s.hset(k, {"other": b"v"}),
    "set": lambda s, k: s.sadd(k, b"other"),
}
WRONG = [
    (holder, op_name)
    for holder, ops in [
        ("hash", STRING_OPS),
        ("set", STRING_OPS),
        ("string", HASH_OPS),
        ("set", HASH_OPS),
        ("string", SET_OPS),
        ("hash", SET_OPS),
    ]
    for op_name in ops
]
ALL_OPS = {**STRING_OPS, **HASH_OPS, **SET_OPS}


@pytest.mark.parametrize(("holder", "op_name"), WRONG)
async def test_wrong_kind_is_a_store_type_error(store: Store, holder: str, op_name: str) -> None:
    await HOLDERS[holder](store, "k")
    with pytest.raises(StoreTypeError):
        await ALL_OPS[op_name](store, "k")
    assert await store.exists("k")  # and the key is left as it was


# -- scan --------------------------------------------------------------------------------


async def test_scan_prefix(store: Store) -> None:
    for i in range(30):
        await store.set(f"user:{i}", b"v")
    await store.hset("user:h", {"f": b"v"})
    await store.set("other:1", b"v")
    await store.set("use", b"v")
    found = await store.scan_prefix("user:")
    assert sorted(found) == sorted([f"user:{i}" for i in range(30)] + ["user:h"])
    assert len(await store.scan_prefix("")) == 33
    assert await store.scan_prefix("nothing") == []


async def test_scan_prefix_is_bounded(store: Store) -> None:
    for i in range(250):
        await store.set(f"k:{i}", b"v")
    found = await store.scan_prefix("k:", limit=10)
    assert len(found) == 10
    assert len(set(found)) == 10
    assert all(k.startswith("k:") for k in found)
    with pytest.raises(ValueError):
        await store.scan_prefix("k:", limit=0)


async def test_scan_prefix_takes_glob_characters_literally(store: Store) -> None:
    for key in ("a*b:1", "axb:1", "a?b:1", "a[x]:1", "ax]:1", "a\\b:1", "ab:1"):
        await store.set(key, b"v")
    assert await store.scan_prefix("a*b:") == ["a*b:1"]
    assert await store.scan_prefix("a?b:") == ["a?b:1"]
    assert await store.scan_prefix("a[x]") == ["a[x]:1"]
    assert await store.scan_prefix("a\\b") == ["a\\b:1"]


# -- namespaces --------------------------------------------------------------------------


async def test_namespaces_are_isolated(store: Store) -> None:
    game = store.namespaced("app:game:")
    trade = store.namespaced("app:trade:")
    await game.set("k", b"game")
    await trade.set("k", b"trade")
    await store.set("k", b"root")
    assert await game.get("k") == b"game"
    assert await trade.get("k") == b"trade"
    assert await store.get("k") == b"root"
    assert await store.get("app:game:k") == b"game"

    await game.hset("h", {"f": b"1"})
    await game.sadd("s", b"m")
    assert await trade.hgetall("h") == {}
    assert await trade.smembers("s") == set()
    assert await trade.exists("h") is False
    assert await trade.delete("k", "h", "s") == 1
    assert await game.get("k") == b"game"
    assert sorted(await game.scan_prefix("")) == ["h", "k", "s"]
    assert await trade.scan_prefix("") == []


async def test_namespaced_view_forwards_every_operation(store: Store) -> None:
    view = store.namespaced("ns:")
    assert await view.set("k", b"v", ttl=30) is True
    assert await view.set("k", b"x", nx=True) is False
    left = await view.ttl("k")
    assert left is not None and 29 < left <= 30
    assert await view.expire("k", None) is True
    assert await view.ttl("k") is None
    assert await view.compare_and_set("k", b"v", b"w") is True
    assert await view.compare_and_set("new", None, b"1", ttl=30) is True
    assert await view.incr("n", 5) == 5
    assert await view.hset("h", {"a": b"1"}) == 1
    assert await view.hget("h", "a") == b"1"
    assert await view.hdel("h", "a") == 1
    assert await view.sadd("s", b"a") == 1
    assert await view.sismember("s", b"a") is True
    assert await view.srem("s", b"a") == 1
    assert await view.exists("k") is True
    assert sorted(await store.scan_prefix("ns:")) == ["ns:k", "ns:n", "ns:new"]
    assert await view.delete("k", "n", "new") == 3
    await view.set("x", b"1")
    with pytest.raises(StoreTypeError):
        await view.hget("x", "f")


async def test_nested_namespaces_concatenate(store: Store) -> None:
    inner = store.namespaced("a:").namespaced("b:")
    await inner.set("k", b"v")
    assert await store.get("a:b:k") == b"v"
    assert await store.namespaced("a:").get("b:k") == b"v"
    assert await inner.scan_prefix("") == ["k"]


async def test_closing_a_view_leaves_the_store_open(store: Store) -> None:
    view = store.namespaced("v:")
    await view.set("k", b"v")
    await view.close()
    assert await store.get("v:k") == b"v"
    assert await view.get("k") == b"v"


async def test_namespace_prefix_must_be_a_non_empty_str(store: Store) -> None:
    with pytest.raises(ValueError):
        store.namespaced("")
    with pytest.raises(ValueError):
        store.namespaced("a:").namespaced("")
