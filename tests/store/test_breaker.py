"""The circuit breaker in front of the store, against a real redis-server that the test
kills and starts again on the same port: it opens after the configured failures, fails
fast while open, logs one warning per outage, and closes again by itself."""

from __future__ import annotations

import logging

import pytest

from protocol.errors import ErrorCode
from server.errors import HandlerError
from server.store import (
    BreakerState,
    BreakerStore,
    MemoryStore,
    RedisStore,
    StoreDown,
    StoreTypeError,
    StoreUnavailable,
)
from tests.store.conftest import eventually
from tests.store.redisproc import RedisProcess


async def breaker_on(server: RedisProcess, **options: float) -> BreakerStore:
    backend = await RedisStore.connect(server.url, max_connections=4, connect_timeout=1, timeout=1)
    return BreakerStore(
        backend,
        failures=int(options.get("failures", 3)),
        probe_interval=options.get("probe_interval", 0.05),
    )


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "tickwire.store" and r.levelno >= logging.WARNING
    ]


async def test_an_outage_opens_the_breaker_once_and_a_probe_closes_it(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tickwire.store")
    store = await breaker_on(own_redis, failures=3, probe_interval=0.05)
    try:
        await store.set("k", b"1")
        own_redis.halt()
        for _ in range(3):
            with pytest.raises(StoreDown):
                await store.get("k")
        assert store.state is BreakerState.OPEN and store.trips == 1
        for _ in range(50):  # fail fast, counted, no new warning
            with pytest.raises(StoreDown):
                await store.get("k")
        assert store.refused >= 50
        assert len(store_warnings(caplog)) == 1
        assert f":{own_redis.port}" in store_warnings(caplog)[0].getMessage()

        own_redis.restart()

        async def closed() -> bool:
            try:
                await store.get("k")
            except StoreDown:
                return False
            return True

        await eventually(closed, what="the breaker closing after Redis came back")
        assert store.state is BreakerState.CLOSED and store.trips == 1
        assert await store.set("k", b"2") and await store.get("k") == b"2"
        assert len(store_warnings(caplog)) == 1  # one per outage
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert not any(r.exc_info for r in caplog.records)  # no traceback
    finally:
        await store.close()


async def test_store_down_is_a_typed_overloaded_error_with_a_retry_hint(
    own_redis: RedisProcess,
) -> None:
    store = await breaker_on(own_redis, failures=1, probe_interval=30)
    try:
        own_redis.halt()
        with pytest.raises(StoreDown) as first:
            await store.hgetall("h")
        with pytest.raises(StoreDown) as fast:
            await store.hgetall("h")
        for exc in (first.value, fast.value):
            assert isinstance(exc, StoreUnavailable) and isinstance(exc, HandlerError)
            assert exc.code == ErrorCode.OVERLOADED
            assert "retry after" in exc.message
            # The peer's text names no address; the operator's does.
            assert str(own_redis.port) not in exc.message
            assert str(own_redis.port) in str(exc)
        assert 29 < fast.value.retry_after <= 30
    finally:
        await store.close()


async def test_fewer_failures_than_the_threshold_do_not_open_it(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tickwire.store")
    store = await breaker_on(own_redis, failures=3)
    try:
        own_redis.halt()
        for _ in range(2):
            with pytest.raises(StoreDown):
                await store.get("k")
        own_redis.restart()
        assert await store.get("k") is None  # reached: the count starts again
        assert store.state is BreakerState.CLOSED and store.trips == 0
        # A short outage is still one: a warning, and a line when it ends.
        assert len(store_warnings(caplog)) == 1
        assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


async def test_an_answer_that_is_an_error_is_not_an_outage(redis_url: str) -> None:
    backend = await RedisStore.connect(redis_url)
    store = BreakerStore(backend, failures=1)
    try:
        await store.set("s", b"x")
        for _ in range(3):
            with pytest.raises(StoreTypeError):
                await store.hget("s", "f")
        assert store.state is BreakerState.CLOSED and store.trips == 0
    finally:
        await store.close()


async def test_batches_and_namespaced_views_go_through_the_breaker(
    own_redis: RedisProcess,
) -> None:
    store = await breaker_on(own_redis, failures=1, probe_interval=30)
    view = store.namespaced("app:x:")
    try:
        batch = view.batch()
        batch.set("a", b"1")
        assert await batch.run() == [True]
        assert await view.get("a") == b"1"
        own_redis.halt()
        with pytest.raises(StoreDown):
            await view.get("a")
        assert store.state is BreakerState.OPEN
        batch = view.batch()
        batch.set("a", b"2")
        with pytest.raises(StoreDown):
            await batch.run()
        assert store.refused == 1
    finally:
        await store.close()


async def test_a_memory_store_passes_through(tmp_path: object) -> None:
    store = BreakerStore(await MemoryStore.open(), failures=1)
    try:
        await store.ping()
        assert await store.incr("n") == 1
        assert store.restored_clean
        assert store.state is BreakerState.CLOSED
    finally:
        await store.close()


async def test_an_idle_breaker_notices_the_recovery_and_calls_back(
    own_redis: RedisProcess,
) -> None:
    """The probe runs by itself: no request has to come for the breaker to close and
    for the work waiting on the store (on_recovery) to run."""
    store = await breaker_on(own_redis, failures=1, probe_interval=0.05)
    recovered: list[bool] = []
    store.on_recovery.append(lambda: recovered.append(True))
    try:
        own_redis.halt()
        with pytest.raises(StoreDown):
            await store.get("k")
        assert store.state is not BreakerState.CLOSED
        own_redis.restart()

        async def closed() -> bool:
            return store.state is BreakerState.CLOSED

        await eventually(closed, what="the breaker closing with no call made")
        assert recovered == [True] and store.refused == 0
    finally:
        await store.close()
