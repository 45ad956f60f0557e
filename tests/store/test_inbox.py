"""The offline inbox (server/inbox.py) on both store backends: one body per put, per-user
order, the cap, the age limit, and takes that race never delivering an item twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from server.inbox import BODY_PREFIX, Inbox, body_key, inbox_key
from server.store import MemoryStore, Store, open_store
from tests.store.conftest import eventually


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        opened: Store = await MemoryStore.open(sweep_interval=0.05)
    else:
        opened = await open_store("redis", redis_url=request.getfixturevalue("redis_url"))
    yield opened
    await opened.close()


@pytest.fixture
async def memory_store() -> AsyncIterator[Store]:
    opened = await MemoryStore.open(sweep_interval=0.05)
    yield opened
    await opened.close()


async def test_put_then_take_in_order(store: Store) -> None:
    inbox = Inbox(store)
    for i in range(120):
        await inbox.put(["alice", "bob"] if i % 3 else ["alice"], 7, b"m%d" % i)
    assert await inbox.count("alice") == 120
    assert await inbox.count("bob") == 80
    assert await inbox.take("alice") == [(7, b"m%d" % i) for i in range(120)]
    assert await inbox.take("bob") == [(7, b"m%d" % i) for i in range(120) if i % 3]


async def test_take_empties_the_inbox(store: Store) -> None:
    inbox = Inbox(store)
    await inbox.put(["alice"], 1, b"one")
    await inbox.put(["alice"], 2, b"two")
    assert await inbox.take("alice") == [(1, b"one"), (2, b"two")]
    assert await inbox.take("alice") == []
    assert await inbox.count("alice") == 0
    assert not await store.exists(inbox_key("alice"))
    assert await inbox.take("nobody") == []
    await inbox.put(["alice"], 3, b"three")  # a new item after a take is delivered
    assert await inbox.take("alice") == [(3, b"three")]


async def test_values_roundtrip(store: Store) -> None:
    inbox = Inbox(store)
    await inbox.put(["u"], 0, b"")
    await inbox.put(["u"], 2**64 - 1, bytes(range(256)))
    await inbox.put(["u"], 65535, b"\x00buf")
    assert await inbox.take("u") == [(0, b""), (2**64 - 1, bytes(range(256))), (65535, b"\x00buf")]


async def test_broadcast_stores_one_body(store: Store) -> None:
    inbox = Inbox(store)
    users = [f"user{i}" for i in range(500)]
    body_id = await inbox.put(users, 9, b"hello everyone")
    assert await store.scan_prefix(BODY_PREFIX) == [body_key(body_id)]
    assert await inbox.body_count() == 1
    assert await inbox.count("user0") == await inbox.count("user499") == 1
    assert await inbox.take("user250") == [(9, b"hello everyone")]
    assert await inbox.take("user250") == []
    assert await inbox.take("user499") == [(9, b"hello everyone")]


async def test_broadcast_to_10000_stores_one_body(memory_store: Store) -> None:
    inbox = Inbox(memory_store)
    users = [f"user{i}" for i in range(10_000)]
    await inbox.put(users, 9, b"x" * 200)
    await inbox.put(users[:5000], 10, b"second")
    assert await inbox.body_count() == 2
    assert len(await memory_store.scan_prefix("tw:inbox:u:", limit=20_000)) == 10_000
    assert await inbox.take("user4999") == [(9, b"x" * 200), (10, b"second")]
    assert await inbox.take("user9999") == [(9, b"x" * 200)]


async def test_duplicate_recipients_get_one_reference(store: Store) -> None:
    inbox = Inbox(store)
    await inbox.put(["a", "a", "b", "a"], 1, b"p")
    assert await inbox.take("a") == [(1, b"p")]
    assert await inbox.take("b") == [(1, b"p")]


async def test_put_to_nobody_writes_nothing(store: Store) -> None:
    inbox = Inbox(store)
    await inbox.put([], 1, b"p")
    assert await inbox.body_count() == 0


async def test_cap_drops_the_oldest(store: Store) -> None:
    # A cap below 8 trims at every put, so storage itself is exact here.
    inbox = Inbox(store, max_per_user=5)
    for i in range(20):
        await inbox.put(["alice"], 1, b"%d" % i)
        assert len(await store.hgetall(inbox_key("alice"))) == min(i + 1, 5)
    assert await inbox.count("alice") == 5
    assert await inbox.take("alice") == [(1, b"%d" % i) for i in range(15, 20)]


async def test_cap_with_probabilistic_trims(store: Store) -> None:
    inbox = Inbox(store, max_per_user=40, rng=random.Random(1))
    for i in range(400):
        await inbox.put(["alice"], 1, b"%d" % i)
    held = len(await store.hgetall(inbox_key("alice")))
    # slack is 10; with a seeded rng the trims happened, and storage stays near the cap.
    assert inbox.trims > 0
    assert 40 <= held <= 40 + 8 * inbox.slack
    assert await inbox.count("alice") == 40
    assert await inbox.take("alice") == [(1, b"%d" % i) for i in range(360, 400)]


async def test_age_limit_drops_expired_items(store: Store) -> None:
    inbox = Inbox(store, ttl=0.3)
    await inbox.put(["alice"], 1, b"old")
    await eventually(lambda: _count_is(inbox, "alice", 0), what="the reference passed its deadline")
    await inbox.put(["alice"], 2, b"new")  # a young item among dead ones is still delivered
    assert await inbox.take("alice") == [(2, b"new")]
    await inbox.put(["bob"], 3, b"gone")
    await eventually(lambda: _absent(store, inbox_key("bob")), what="bob's inbox expired")
    assert await inbox.take("bob") == []
    await eventually(lambda: _no_bodies(inbox), what="the bodies expired")


async def test_a_missing_body_is_skipped(store: Store) -> None:
    inbox = Inbox(store)
    first = await inbox.put(["alice"], 1, b"first")
    await inbox.put(["alice"], 2, b"second")
    third = await inbox.put(["alice"], 3, b"third")
    # Bodies can go before their references: a shorter expiry here, LRU eviction in a
    # capped memory store.
    await store.expire(body_key(third), 0.1)
    await eventually(lambda: _absent(store, body_key(third)), what="the body expired")
    await store.delete(body_key(first))
    assert await inbox.count("alice") == 3  # the references do not know
    assert await inbox.take("alice") == [(2, b"second")]
    assert await inbox.take("alice") == []


async def test_concurrent_takes_deliver_each_item_once(store: Store) -> None:
    inbox = Inbox(store)
    for round_ in range(5):
        for i in range(60):
            await inbox.put(["alice"], 1, b"%d.%d" % (round_, i))
        results = await asyncio.gather(*(inbox.take("alice") for _ in range(6)))
        delivered = [item for result in results for item in result]
        assert sorted(delivered) == sorted((1, b"%d.%d" % (round_, i)) for i in range(60))
        for result in results:  # each take's share is still in order
            assert result == sorted(result, key=lambda item: int(item[1].split(b".")[1]))
        assert await inbox.take("alice") == []


async def test_takes_racing_puts_lose_and_duplicate_nothing(store: Store) -> None:
    inbox = Inbox(store)
    delivered: list[tuple[int, bytes]] = []

    async def taker() -> None:
        for _ in range(30):
            delivered.extend(await inbox.take("alice"))
            await asyncio.sleep(0)

    async def putter(n: int) -> None:
        for i in range(30):
            await inbox.put(["alice", "bob"], n, b"%d" % i)

    await asyncio.gather(taker(), taker(), putter(1), putter(2))
    delivered.extend(await inbox.take("alice"))
    expected = [(n, b"%d" % i) for n in (1, 2) for i in range(30)]
    assert sorted(delivered) == sorted(expected)
    assert sorted(await inbox.take("bob")) == sorted(expected)


async def test_namespaced_store_and_arguments(memory_store: Store) -> None:
    inbox = Inbox(memory_store.namespaced("node:"))
    await inbox.put(["u"], 1, b"p")
    assert await memory_store.scan_prefix("node:tw:") != []
    assert await inbox.take("u") == [(1, b"p")]
    with pytest.raises(ValueError):
        Inbox(memory_store, max_per_user=0)
    with pytest.raises(ValueError):
        Inbox(memory_store, ttl=0)
    with pytest.raises(ValueError):
        await inbox.put(["u"], -1, b"p")
    with pytest.raises(TypeError):
        await inbox.put(["u"], 1, "text")  # type: ignore[arg-type]


async def _count_is(inbox: Inbox, user: str, n: int) -> bool:
    return await inbox.count(user) == n


async def _absent(store: Store, key: str) -> bool:
    return not await store.exists(key)


async def _no_bodies(inbox: Inbox) -> bool:
    return await inbox.body_count() == 0
