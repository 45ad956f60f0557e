"""The SDK gets its connection back by itself: after a drop, after GoAway (waiting what
the server asked), with jittered backoff, and gives up when told to; its ConnState on
the way."""

from __future__ import annotations

import asyncio
import time

import pytest

from client_sdk import AsyncClient, ConnectionClosed, ConnState
from client_sdk.client import Reconnect
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from server import Server, ServerConfig
from tests.conftest import wait_for
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb


async def serve_on(port: int) -> Server:
    server = Server(config=ServerConfig(port=port))
    await server.start()
    return server


async def echo(client: AsyncClient, data: bytes, timeout: float = 10) -> bytes:
    return (await client.call(EchoRequest(data=data), EchoReply, timeout=timeout)).data


async def test_reconnects_after_goaway_to_the_next_server_on_the_port() -> None:
    first = await serve_on(0)
    port = first.address[1]
    client = await AsyncClient.connect("127.0.0.1", port, reconnect=Reconnect(initial=0.02))
    back: list[int] = []
    client.on_reconnect(lambda c: back.append(c.reconnects))
    assert await echo(client, b"one") == b"one"
    stopped_at = time.monotonic()  # before the GoAway goes out, so the wait is all counted
    await first.stop(timeout=1, reconnect_after_ms=300)
    second = await serve_on(port)
    try:
        # Sent while the connection is down: it waits for the reconnect, then goes out.
        assert await echo(client, b"two") == b"two"
        # GoAway asked for 300 ms; with jitter the wait is at least half of that.
        assert time.monotonic() - stopped_at >= 0.15
        assert client.reconnects == 1 and back == [1] and not client.closed
    finally:
        await client.close()
        await second.stop(timeout=1)


async def test_request_in_flight_at_the_drop_fails_and_later_ones_work() -> None:
    """A request the server may or may not have run is not retried behind the caller's
    back: it fails with ConnectionClosed; requests after the reconnect work."""
    server = Server(make_app(), config=ServerConfig(port=0))
    await server.start()
    client = await AsyncClient.connect(
        *server.address, app_registry(), reconnect=Reconnect(initial=0.02)
    )
    try:
        stuck = asyncio.ensure_future(client.request(pb.GateRequest(tag=1)))
        await asyncio.sleep(0.05)
        for conn in list(server.connections):
            conn.transport.abort()  # the network drops it: no GoAway
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(stuck, 5)
        assert await echo(client, b"after") == b"after"
        assert client.reconnects == 1
    finally:
        await client.close()
        await server.stop(timeout=1)


async def test_gives_up_after_its_attempts_with_growing_waits() -> None:
    server = await serve_on(0)
    port = server.address[1]
    client = await AsyncClient.connect(
        "127.0.0.1", port, reconnect=Reconnect(initial=0.05, maximum=1.0, attempts=3)
    )
    started = time.monotonic()  # before the drop, so every wait is counted
    await server.stop(timeout=1)  # nothing listens on the port any more
    closed = await asyncio.wait_for(client.wait_closed(), 10)
    elapsed = time.monotonic() - started
    assert "gave up reconnecting" in str(closed) and "after 3 attempts" in str(closed)
    # Waits of 0.05, 0.1, 0.2 s, each at least half that when jittered: 0.175 s or more.
    # Without the doubling it would be 0.075 s or more.
    assert elapsed >= 0.15
    with pytest.raises(ConnectionClosed):
        await echo(client, b"too late")


async def test_without_a_policy_a_drop_closes_the_client() -> None:
    server = await serve_on(0)
    client = await AsyncClient.connect(*server.address)
    await server.stop(timeout=1)
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert closed.code is not None and client.closed and client.reconnects == 0


async def test_reconnects_again_if_the_link_drops_during_the_reconnect_callback() -> None:
    server = await serve_on(0)
    client = await AsyncClient.connect(*server.address, reconnect=Reconnect(initial=0.02))
    calls: list[int] = []

    async def flaky(c: AsyncClient) -> None:
        calls.append(c.reconnects)
        if len(calls) == 1:  # the new connection dies while the callback runs
            for conn in list(server.connections):
                conn.transport.abort()
            await asyncio.sleep(0.1)

    client.on_reconnect(flaky)
    try:
        for conn in list(server.connections):
            conn.transport.abort()
        # Once the client knows it is down, a request waits through both reconnects.
        await wait_for(lambda: not client.connected)
        assert (await client.call(EchoRequest(data=b"ok"), EchoReply, timeout=5)).data == b"ok"
        assert client.reconnects == 2 and calls == [1, 2]
    finally:
        await client.close()
        await server.stop(timeout=1)


async def test_the_state_goes_through_reconnecting_and_restoring_back_to_open() -> None:
    server = await serve_on(0)
    client = await AsyncClient.connect(*server.address, reconnect=Reconnect(initial=0.2))
    seen: list[ConnState] = []
    waiting: list[bool] = []

    async def during(c: AsyncClient) -> None:
        seen.append(c.state)
        await echo(c, b"callback")  # the callback's own request goes straight out
        waiting.append(not request.done())  # while the others wait for OPEN

    client.on_reconnect(during)
    try:
        assert client.state is ConnState.OPEN and client.connected
        for conn in list(server.connections):
            conn.transport.abort()
        await asyncio.sleep(0.05)  # within the 0.1-0.2 s jittered wait
        assert client.state is ConnState.RECONNECTING and not client.connected
        with pytest.raises(ConnectionClosed):
            client.notify(EchoRequest(data=b"x"))  # not queued for later
        request = asyncio.ensure_future(echo(client, b"waited"))
        assert await request == b"waited"
        assert seen == [ConnState.RESTORING] and waiting == [True]
        assert client.state is ConnState.OPEN and client.connected
    finally:
        await client.close()
        await server.stop(timeout=1)
    assert client.state is ConnState.CLOSED and client.closed
