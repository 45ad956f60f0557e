"""SDK clients of the test app (tests/proto/testapp.proto) for the integration and
cluster tests: one way to connect, log in and close, so the two suites cannot drift."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from client_sdk import AsyncClient
from protocol.proto.system_pb2 import LoginReply, LoginRequest
from server import Server
from tests.integration.testapp import app_registry

#: The passwords `connect(server, user)` logs in with (a MemoryUsers of them serves it).
PASSWORDS = {"alice": "a", "bob": "b", "carol": "c"}

#: connect(server, user=None, **options): a client (AsyncClient.connect's `options`),
#: logged in as `user` (by PASSWORDS) when given.
Connect = Callable[..., Awaitable[AsyncClient]]


@asynccontextmanager
async def open_clients() -> AsyncIterator[Connect]:
    """Clients connected through the yielded function, every one closed on exit."""
    opened: list[AsyncClient] = []

    async def connect(server: Server, user: str | None = None, **options: Any) -> AsyncClient:
        client = await AsyncClient.connect(*server.address, registry=app_registry(), **options)
        opened.append(client)
        if user is not None:
            await login(client, user, PASSWORDS[user])
        return client

    try:
        yield connect
    finally:
        for client in opened:
            await client.close()


async def login(client: AsyncClient, user: str = "alice", password: str = "pw-a") -> LoginReply:
    """A LoginRequest built by hand (not the SDK's helper), so the tests pin the wire."""
    reply = await client.request(LoginRequest(user=user, password=password, device="test"))
    assert isinstance(reply, LoginReply)
    return reply
