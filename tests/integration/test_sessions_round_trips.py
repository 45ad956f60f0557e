"""The session layer's store traffic on Redis: each login, logout, refresh and resume
sends its writes as ONE round trip (a MULTI/EXEC batch), not one per write.

Watched with MONITOR on the test session's own redis-server: every command the server
sends, in order, with the connection it came on. Commands between MULTI and EXEC count
as one round trip (redis-py sends them in one write and reads one reply).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio

from client_sdk import AsyncClient
from protocol.proto.system_pb2 import (
    LoginReply,
    LoginRequest,
    RefreshTokenRequest,
    ResumeReply,
    ResumeRequest,
)
from server.auth import MemoryUsers
from tests.conftest import StartServer
from tests.integration.testapp import app_registry
from tests.store.redisproc import RedisProcess

USERS = MemoryUsers({"alice": "pw-a", "bob": "pw-b"})
WRITES = {"SET", "HSET", "PEXPIRE", "EXPIRE", "PERSIST", "SADD", "SREM", "DEL"}


@dataclass
class Monitor:
    """Every command the redis-server ran, as (client port, command words)."""

    client: redis.asyncio.Redis
    seen: list[tuple[str, list[str]]] = field(default_factory=list)
    marks: int = 0

    async def mark(self) -> list[tuple[str, list[str]]]:
        """The commands since the previous mark: an ECHO from our own connection, once
        MONITOR has shown it, closes the step (everything before it was seen)."""
        self.marks += 1
        text = f"step-{self.marks}"
        await self.client.echo(text)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            for i, (_, words) in enumerate(self.seen):
                if words[:2] == ["ECHO", text]:
                    step, self.seen = self.seen[:i], self.seen[i + 1 :]
                    return step
            assert loop.time() < deadline, "MONITOR never showed the mark"
            await asyncio.sleep(0.01)


@pytest.fixture
async def monitor(redis_url: str, redis_server: RedisProcess) -> AsyncIterator[Monitor]:
    watcher = redis.asyncio.Redis(port=redis_server.port)
    marker = redis.asyncio.Redis(port=redis_server.port)
    mon = Monitor(marker)

    async def collect() -> None:
        async with watcher.monitor() as stream:
            while True:
                info: dict[str, Any] = await stream.next_command()
                mon.seen.append((str(info["client_port"]), str(info["command"]).split(" ")))

    task = asyncio.get_running_loop().create_task(collect())
    await asyncio.sleep(0.1)  # MONITOR is on before the test's first command
    await mon.mark()
    yield mon
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    await watcher.aclose()
    await marker.aclose()


def write_round_trips(commands: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The round trips that wrote something, each as the names and keys it sent: a
    MULTI..EXEC on one connection is one, any other command is one of its own."""
    trips: list[list[list[str]]] = []
    open_multi: dict[str, list[list[str]]] = {}
    for port, words in commands:
        name = words[0].upper()
        if name == "MULTI":
            open_multi[port] = []
        elif name == "EXEC":
            trips.append(open_multi.pop(port))
        elif port in open_multi:
            open_multi[port].append(words)
        else:
            trips.append([words])
    return [
        [f"{w[0].upper()} {w[1].split(':')[1]}" for w in trip]
        for trip in trips
        if any(w[0].upper() in WRITES for w in trip)
    ]


async def test_session_writes_are_one_round_trip_each(
    start_server: StartServer, redis_url: str, monitor: Monitor
) -> None:
    server = await start_server(authenticator=USERS, store="redis", redis_url=redis_url)
    client = await AsyncClient.connect(*server.address, registry=app_registry())
    other = await AsyncClient.connect(*server.address, registry=app_registry())
    try:
        await monitor.mark()  # the server's start
        alice = await client.request(LoginRequest(user="alice", password="pw-a", device="t"))
        assert isinstance(alice, LoginReply)
        # Before: SET, HSET, PEXPIRE, SADD, PEXPIRE each a round trip of its own.
        assert write_round_trips(await monitor.mark()) == [
            ["SET token", "HSET session", "PEXPIRE session", "SADD user", "PEXPIRE user"]
        ]

        refreshed = await client.request(RefreshTokenRequest())
        assert isinstance(refreshed, LoginReply)
        assert write_round_trips(await monitor.mark()) == [
            ["SET token", "HSET session", "PEXPIRE session", "PEXPIRE user", "DEL token"]
        ]

        resumed = await other.request(ResumeRequest(token=refreshed.token))
        assert isinstance(resumed, ResumeReply)
        assert write_round_trips(await monitor.mark()) == [
            ["HSET session", "PEXPIRE session", "PEXPIRE user"]
        ]

        # A login on a connection that holds a session ends it first: its deletes are
        # one round trip, the new session's writes another.
        bob = await other.request(LoginRequest(user="bob", password="pw-b", device="t"))
        assert isinstance(bob, LoginReply)
        assert write_round_trips(await monitor.mark()) == [
            ["DEL session", "SREM user"],
            ["SET token", "HSET session", "PEXPIRE session", "SADD user", "PEXPIRE user"],
        ]
    finally:
        await client.close()
        await other.close()
