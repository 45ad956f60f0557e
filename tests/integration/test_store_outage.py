"""A Redis outage seen from inside the server: a handler's ctx.cache goes through the
breaker, the chat example's history writes log nothing per line (the breaker's one
warning covers the outage), and the metrics show the breaker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from client_sdk import AsyncClient, Overloaded, Reconnect
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import JoinRequest, SayReply, SayRequest
from examples.chat.service import make_app
from protocol.registry import system_registry
from server.auth import MemoryUsers
from server.store import BreakerState
from tests.conftest import StartServer, need_redis_binary, wait_for
from tests.store.redisproc import RedisProcess, start_redis

USERS = MemoryUsers({"alice": "a"})


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


async def test_chat_lines_during_an_outage_cost_one_warning_not_one_each(
    own_redis: RedisProcess, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(
        make_app(),
        authenticator=USERS,
        store="redis",
        redis_url=own_redis.url,
        store_breaker_probe_interval=30,
        metrics=True,
        metrics_port=0,
    )
    async with await AsyncClient.connect(
        *server.address, registry=system_registry([chat_pb2])
    ) as alice:
        await alice.login("alice", "a")
        await alice.request(JoinRequest(room="lobby"))
        own_redis.halt()
        for n in range(20):
            # The line still reaches the room; only its history write fails.
            assert isinstance(await alice.request(SayRequest(room="lobby", text=f"{n}")), SayReply)
    assert server.breaker is not None and server.breaker.state is BreakerState.OPEN
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    store_down = [r for r in warnings if "store unavailable" in r.getMessage()]
    assert len(store_down) == 1
    assert not [r for r in warnings if "chat history" in r.getMessage()]
    assert not any(r.exc_info for r in caplog.records)
    assert server.metrics is not None
    _, body, _ = server.metrics.respond("/metrics")
    text = body.decode()
    assert "tickwire_store_breaker_state 1.0" in text
    assert "tickwire_store_breaker_trips_total 1.0" in text
    refused = next(
        line for line in text.splitlines() if line.startswith("tickwire_store_refused_total")
    )
    assert float(refused.split()[1]) >= 1


async def test_a_disconnect_the_store_missed_is_written_once_it_is_back(
    own_redis: RedisProcess, start_server: StartServer
) -> None:
    """Without it, the record would say "connected" (with the connected TTL) long after
    its connection ended: reject-policy logins refused, the session resumable past its
    session_ttl."""
    server = await start_server(
        authenticator=USERS,
        store="redis",
        redis_url=own_redis.url,
        store_breaker_failures=1,
        store_breaker_probe_interval=0.05,
        session_ttl=30,
    )
    client = await AsyncClient.connect(*server.address)
    reply = await client.login("alice", "a")
    key = f"tw:session:{reply.session_id}"
    with own_redis.client() as redis_client:
        assert redis_client.hget(key, "conn") not in (None, b"")
    own_redis.pause()  # Redis hangs, its data kept: the disconnect's write times out
    try:
        await client.close()
        await wait_for(lambda: server.breaker is not None and server.breaker.trips == 1, 20)
    finally:
        own_redis.unpause()

    def written() -> bool:
        with own_redis.client() as redis_client:
            return redis_client.hget(key, "conn") == b""

    await wait_for(written, timeout=20)
    with own_redis.client() as redis_client:
        assert 0 < redis_client.pttl(key) <= 30_000  # session_ttl, not the connected TTL


class CountingUsers(MemoryUsers):
    """Counts the password checks it is asked for."""

    checks = 0

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        self.checks += 1
        return await super().authenticate(user, password, device)


async def test_a_login_during_an_outage_is_refused_before_the_password_check(
    own_redis: RedisProcess, start_server: StartServer
) -> None:
    """A password check costs scrypt; with the store down its session could not be kept,
    so the Login is answered OVERLOADED without one."""
    users = CountingUsers({"alice": "a"})
    server = await start_server(
        authenticator=users,
        store="redis",
        redis_url=own_redis.url,
        store_breaker_probe_interval=30,
    )
    async with await AsyncClient.connect(*server.address) as client:
        own_redis.halt()
        for _ in range(5):
            with pytest.raises(Overloaded) as refused:
                await client.login("alice", "a")
            assert refused.value.retry_after is not None
        assert server.breaker is not None and server.breaker.state is BreakerState.OPEN
    # The logins that found the store down before the breaker opened checked a password;
    # none after it did.
    assert users.checks == server.breaker.failures


async def test_a_reconnecting_client_waits_the_retry_the_store_outage_asks_for(
    own_redis: RedisProcess, start_server: StartServer
) -> None:
    """A Resume refused OVERLOADED "retry after N ms" keeps the session and tries again,
    but not before the N ms: a thousand clients retrying on their own short backoff
    would hammer a server whose store is down."""
    server = await start_server(
        authenticator=USERS,
        store="redis",
        redis_url=own_redis.url,
        store_breaker_failures=1,
        store_breaker_probe_interval=0.4,
    )
    opened: list[float] = []  # when each attempt arrived
    loop = asyncio.get_running_loop()
    client = await AsyncClient.connect(
        *server.address, reconnect=Reconnect(initial=0.01, maximum=0.02)
    )
    try:
        await client.login("alice", "a")
        opened_before = server.stats.connections_opened
        own_redis.halt()
        for conn in list(server.connections):
            conn.transport.abort()
        # Each connection the client opens meets an open breaker: OVERLOADED, retry after
        # up to 400 ms. Watch when the attempts arrive.
        deadline = loop.time() + 1.5
        seen = opened_before
        while loop.time() < deadline:
            if server.stats.connections_opened > seen:
                seen = server.stats.connections_opened
                opened.append(loop.time())
            await asyncio.sleep(0.002)
        assert client.session is not None  # kept through the refusals
    finally:
        await client.close()
    # Each refusal's hint is the time to the breaker's next probe (at most 400 ms), so
    # about one attempt per probe; without the hint the client comes back every 10-20 ms,
    # 75 times or more in the 1.5 s (a slower machine only makes it fewer).
    assert 2 <= len(opened) <= 15, len(opened)
