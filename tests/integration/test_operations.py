"""Operating a server: metrics and health endpoint, structured logs, drain under load."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client_sdk import AsyncClient, ConnectionClosed
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from server.logs import JsonFormatter, TextFormatter
from tests.conftest import StartServer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb
from tests.serveproc import server_log, spawn_serve


async def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_endpoint_is_scraped_and_parsed(start_server: StartServer) -> None:
    server = await start_server(make_app(), metrics=True, metrics_port=0)
    assert server.metrics_address is not None
    async with await AsyncClient.connect(*server.address, app_registry()) as client:
        for _ in range(5):
            await client.call(EchoRequest(data=b"m"), EchoReply)
        with pytest.raises(Exception):  # noqa: B017 - any failure will do, it is counted
            await client.request(pb.FailRequest())
        status, body = await http_get(server.metrics_address, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    requests = {
        s.labels["message"]: s.value
        for s in families["tickwire_requests"].samples
        if s.name == "tickwire_requests_total"
    }
    assert requests["system.EchoRequest"] == 5 and requests["testapp.FailRequest"] == 1
    errors = {
        s.labels["code"]: s.value
        for s in families["tickwire_errors_sent"].samples
        if s.name == "tickwire_errors_sent_total"
    }
    assert errors == {"INTERNAL": 1}
    assert families["tickwire_connections"].samples[0].value == 1
    latency = [
        s
        for s in families["tickwire_handler_seconds"].samples
        if s.name == "tickwire_handler_seconds_count"
        and s.labels["message"] == "system.EchoRequest"
    ]
    assert latency[0].value == 5
    for name in (
        "tickwire_event_loop_lag_seconds",
        "tickwire_mailbox_frames",
        "tickwire_bytes_in",
        "tickwire_slow_consumers",
        "tickwire_connections_closed",
    ):
        assert name in families, name


async def test_health_and_readiness(start_server: StartServer) -> None:
    app = make_app()
    server = await start_server(app, metrics=True, metrics_port=0)
    address = server.metrics_address
    assert address is not None
    assert await http_get(address, "/healthz") == (200, "ok\n")
    assert await http_get(address, "/readyz") == (200, "ready\n")
    assert (await http_get(address, "/nope"))[0] == 404
    client = await AsyncClient.connect(*server.address, app_registry())
    gated = asyncio.ensure_future(client.request(pb.GateRequest(tag=1)))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(server.stop(timeout=5))
    await asyncio.sleep(0.05)
    assert await http_get(address, "/readyz") == (503, "draining\n")
    app.gate.set()  # type: ignore[attr-defined]
    await stopping
    assert (await gated).tag == 1  # type: ignore[attr-defined]
    await client.close()


async def test_drain_under_load_loses_no_reply() -> None:
    """SIGTERM while a client keeps a stream of requests going: every request either got
    its correct reply or failed with ConnectionClosed after GoAway; none got a wrong one."""
    proc, address = await spawn_serve()
    client = await AsyncClient.connect(*address)
    answered: list[int] = []
    failed: list[int] = []

    async def one(i: int) -> None:
        try:
            reply = await client.call(EchoRequest(data=str(i).encode()), EchoReply)
        except ConnectionClosed:
            failed.append(i)
            return
        assert reply.data == str(i).encode()
        answered.append(i)

    async def stream() -> None:
        i = 0
        tasks = []
        while not client.closed:
            tasks.append(asyncio.ensure_future(one(i)))
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)

    streaming = asyncio.ensure_future(stream())
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(streaming, 15)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert client.goaway is not None and client.goaway.reason == ErrorCode.SERVER_SHUTDOWN
    assert len(answered) > 100
    assert len(answered) + len(failed) == len(set(answered) | set(failed))
    # Replies come in order: what was answered is a prefix of what was sent.
    assert sorted(answered) == list(range(len(answered)))


async def test_json_logs_carry_open_and_close_with_reason() -> None:
    proc, address = await spawn_serve("--log-format", "json")
    client = await AsyncClient.connect(*address)
    await client.ping()
    await client.close()
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 10)
    lines = [json.loads(line) for line in (await server_log(proc)).splitlines()]
    opened = [e for e in lines if e["msg"] == "connection open"]
    closed = [e for e in lines if e["msg"] == "connection closed"]
    assert len(opened) == 1 and len(closed) == 1
    assert opened[0]["conn"] == closed[0]["conn"]
    assert closed[0]["reason"] == "peer_closed" and closed[0]["level"] == "info"
    assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in lines)


async def test_second_sigint_forces_exit() -> None:
    """The first SIGINT starts a drain that a stuck handler would hold for 30 s; the
    second one ends the process at once."""
    proc, address = await spawn_serve(
        "--app", "tests.integration.testapp:make_app", "--set", "drain_timeout=30"
    )
    client = await AsyncClient.connect(*address, app_registry())
    stuck = asyncio.ensure_future(client.request(pb.GateRequest(tag=1)))
    await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    assert proc.returncode is None  # draining, waiting on the stuck handler
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 5) == 130
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(stuck, 5)


async def test_an_overlong_metrics_request_line_raises_nothing_into_the_loop(
    start_server: StartServer,
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    try:
        server = await start_server(metrics=True, metrics_port=0)
        assert server.metrics_address is not None
        reader, writer = await asyncio.open_connection(*server.metrics_address)
        writer.write(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.sleep(0.1)
        assert errors == []
    finally:
        loop.set_exception_handler(None)


def test_peer_text_cannot_forge_or_flood_log_lines() -> None:
    forged = "mallory\n2026-01-01T00:00:00.000Z INFO tickwire.sessions: login user=admin"
    record = logging.makeLogRecord(
        {"name": "tickwire.sessions", "msg": "login refused", "levelname": "INFO", "levelno": 20}
    )
    record.user = forged
    record.blob = "x" * 1_000_000
    text = TextFormatter().format(record)
    assert "\n" not in text and "user='mallory\\n2026" in text
    assert len(text) < 1000
    assert len(JsonFormatter().format(record)) < 1000
