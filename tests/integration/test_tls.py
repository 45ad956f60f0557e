"""TLS against a real server on uvloop: round trips through the SDK, mutual TLS, the
versions refused, the wrong kind of client on either kind of port, and the parts of the
connection (peer address, write flow control, slow consumers, the peer's close) where
uvloop's TLS transport differs from its TCP one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client_sdk import (
    AsyncClient,
    Client,
    ConnectionClosed,
    Push,
    Reconnect,
    TLSError,
    TooManyConnections,
    tls_context,
)
from protocol.errors import ErrorCode
from protocol.frame import encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, LoginReply, LoginRequest
from server import Server
from server.connection import TLSConnection
from tests.conftest import StartServer, wait_for
from tests.integration.test_push import PASSWORDS, USERS, push_app
from tests.integration.test_restart import read_pid, wait_pid_change
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb
from tests.serveproc import server_log, spawn_serve
from tests.tlscerts import Pki, make_pki

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def opened() -> AsyncIterator[list[AsyncClient]]:
    clients: list[AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def tls_server(start_server: StartServer, pki: Pki, *apps: Any, **config: Any) -> Server:
    mutual = config.pop("mutual", False)
    return await start_server(*apps, **pki.config(mutual=mutual), **config)


def old_tls_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only `version`; OpenSSL's default security level would not
    even send a hello that old, so it is lowered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


# -- round trips ------------------------------------------------------------------------


async def test_round_trips_through_the_sdk_over_tls(
    start_server: StartServer, pki: Pki, opened: list[AsyncClient]
) -> None:
    server = await tls_server(start_server, pki, make_app(), prelogin_max_frame=1 << 20)
    client = await AsyncClient.connect(*server.address, app_registry(), tls_ca=pki.ca)
    opened.append(client)
    # Pipelined, of sizes around the TLS record size (16 KiB), each answered in order.
    sizes = [0, 1, 100, 16_000, 16_384, 16_385, 70_000, 300_000]
    replies = await asyncio.gather(
        *(client.call(EchoRequest(data=bytes([n % 251]) * n), EchoReply) for n in sizes)
    )
    assert [len(r.data) for r in replies] == sizes
    big = await client.call(pb.BigRequest(size=900_000), pb.BigReply)
    assert big.data == b"x" * 900_000
    [conn] = server.connections
    assert isinstance(conn, TLSConnection)
    assert conn.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")


async def test_the_peer_address_outlives_the_tls_transport(
    start_server: StartServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """uvloop's TLS transport forgets the peer's address once closed: the per-address
    count must still come down at the close, and the close line still name the peer."""
    caplog.set_level(logging.INFO, "tickwire.server")
    server = await tls_server(start_server, pki, max_connections_per_ip=1, trust_loopback=False)
    for _ in range(3):
        client = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
        await client.ping()  # the server's side of the handshake is done by now
        [conn] = server.connections
        assert conn.peer_ip == "127.0.0.1"
        assert conn.peer == client._transport.get_extra_info("sockname")  # type: ignore[union-attr]
        await client.close()
        await wait_for(lambda: not server.connections)
    assert server.per_ip == {}
    closes = [r for r in caplog.records if r.getMessage() == "connection closed"]
    assert len(closes) == 3
    assert all(r.peer.startswith("127.0.0.1:") for r in closes)  # type: ignore[attr-defined]
    # and the limit itself still holds over TLS
    first = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    second = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    closed = await asyncio.wait_for(second.wait_closed(), 5)
    assert isinstance(closed.error, TooManyConnections)
    await first.ping()
    await first.close()


async def test_reconnects_and_the_blocking_client_keep_tls(
    start_server: StartServer, pki: Pki, opened: list[AsyncClient]
) -> None:
    server = await tls_server(start_server, pki)
    client = await AsyncClient.connect(
        *server.address, tls_ca=pki.ca, reconnect=Reconnect(initial=0.01, attempts=20)
    )
    opened.append(client)
    await client.ping()
    [conn] = server.connections
    conn.transport.abort()
    await wait_for(lambda: client.reconnects == 1)
    await client.ping()
    [again] = server.connections
    assert again is not conn and isinstance(again, TLSConnection)

    def blocking() -> bytes:
        with Client(*server.address, tls_ca=pki.ca) as sync:
            reply = sync.call(EchoRequest(data=b"sync"), EchoReply)
        return reply.data

    assert await asyncio.to_thread(blocking) == b"sync"


async def test_login_and_pushes_over_tls(start_server: StartServer, pki: Pki) -> None:
    server = await tls_server(start_server, pki, push_app(), authenticator=USERS)
    client = await AsyncClient.connect(
        *server.address, app_registry(), tls_ca=pki.ca, server_hostname="localhost"
    )
    try:
        login = await client.call(
            LoginRequest(user="alice", password=PASSWORDS["alice"]), LoginReply
        )
        assert login.user_id == "alice"
        got: list[Push] = []
        client.on_push(pb.SleepReply, got.append)
        reply = await client.call(pb.NoteRequest(text="hello"), pb.SleepReply)
        assert reply.tag == 999
        assert server.push("alice", pb.SleepReply(tag=7)) == 1
        await wait_for(lambda: len(got) == 2)
        assert [p.message.tag for p in got] == [5, 7]  # type: ignore[attr-defined]
        assert [p.seq for p in got] == [1, 2]
    finally:
        await client.close()


# -- refused ------------------------------------------------------------------------------


async def test_mutual_tls_accepts_a_client_certificate_from_tls_ca(
    start_server: StartServer, pki: Pki
) -> None:
    server = await tls_server(start_server, pki, mutual=True)
    context = tls_context(pki.ca, cert=pki.client)
    async with await AsyncClient.connect(*server.address, tls=context) as client:
        await client.ping()
        [conn] = server.connections
        # The verified client certificate is there for an authenticator to read.
        peercert = conn.transport.get_extra_info("peercert")
        assert peercert["subjectAltName"] == (("email", "player@example.org"),)


async def test_mutual_tls_refuses_a_client_without_a_certificate_in_the_handshake(
    start_server: StartServer, pki: Pki
) -> None:
    """TLS 1.2 refuses within the handshake: connect raises. uvloop drops the connection
    without the alert, so the error names the likely causes and the server's log the
    actual one."""
    server = await tls_server(start_server, pki, mutual=True)
    context = tls_context(pki.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSError) as caught:
        await AsyncClient.connect(*server.address, tls=context)
    assert "certificate" in str(caught.value)
    assert server.tls_failures.total == {"PEER_DID_NOT_RETURN_A_CERTIFICATE": 1}
    assert not server.connections


async def test_mutual_tls_refuses_a_client_without_a_certificate_after_the_handshake(
    start_server: StartServer, pki: Pki
) -> None:
    """TLS 1.3 completes the client's side of the handshake first and refuses at the
    server's: connect returns, and the first request finds the connection gone."""
    server = await tls_server(start_server, pki, mutual=True)
    client = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    try:
        with pytest.raises(ConnectionClosed):
            await client.ping(timeout=5)
    finally:
        await client.close()
    assert server.tls_failures.total == {"PEER_DID_NOT_RETURN_A_CERTIFICATE": 1}
    assert not server.connections


async def test_mutual_tls_refuses_a_certificate_from_another_ca(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    server = await tls_server(start_server, pki, mutual=True)
    stranger = make_pki(tmp_path / "stranger")
    with pytest.raises((TLSError, ConnectionClosed)):
        client = await AsyncClient.connect(
            *server.address, tls=tls_context(pki.ca, cert=stranger.client)
        )
        try:
            await client.ping(timeout=5)
        finally:
            await client.close()
    assert server.tls_failures.total == {"CERTIFICATE_VERIFY_FAILED": 1}
    assert not server.connections


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_a_client_below_tls_1_2_is_refused(
    start_server: StartServer, pki: Pki, version: ssl.TLSVersion
) -> None:
    server = await tls_server(start_server, pki)
    with pytest.raises(TLSError) as caught:
        await AsyncClient.connect(*server.address, tls=old_tls_context(version))
    assert "TLS version" in str(caught.value)
    assert server.tls_failures.total == {"UNSUPPORTED_PROTOCOL": 1}
    assert not server.connections


async def test_tls_min_version_1_3_refuses_tls_1_2(start_server: StartServer, pki: Pki) -> None:
    server = await tls_server(start_server, pki, tls_min_version="1.3")
    context = tls_context(pki.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSError):
        await AsyncClient.connect(*server.address, tls=context)
    async with await AsyncClient.connect(*server.address, tls_ca=pki.ca) as client:
        await client.ping()


async def test_plaintext_client_on_the_tls_port_is_closed_without_a_traceback(
    start_server: StartServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await tls_server(start_server, pki, metrics=True, metrics_port=0)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    client = await AsyncClient.connect(*server.address)
    with pytest.raises(ConnectionClosed):
        await client.ping(timeout=5)
    await client.close()
    # Raw peers too: a frame, HTTP, and a lone byte then a half-close.
    for data in (encode_frame(10, 0, 1, b""), b"GET / HTTP/1.1\r\n\r\n", b"\x00"):
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(data)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    # The lone byte is not even a TLS record header: its peer's close ends it, uncounted.
    await wait_for(lambda: sum(server.tls_failures.total.values()) == 3)
    assert server.tls_failures.total == {"WRONG_VERSION_NUMBER": 2, "HTTP_REQUEST": 1}
    assert server.metrics is not None
    text = server.metrics.respond("/metrics")[1].decode()
    assert 'tickwire_tls_handshake_failures_total{reason="WRONG_VERSION_NUMBER"} 2.0' in text
    assert "tickwire_tls_handshakes_in_flight 0.0" in text
    assert not server.connections
    assert not loop_errors
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    lines = [r for r in caplog.records if r.name == "tickwire.tls"]
    assert len(lines) == 1 and "WRONG_VERSION_NUMBER" in lines[0].getMessage()
    # The TLS clients are served all along.
    async with await AsyncClient.connect(*server.address, tls_ca=pki.ca) as good:
        await good.ping()


async def test_verify_failures_are_typed(start_server: StartServer, pki: Pki) -> None:
    server = await tls_server(start_server, pki)
    with pytest.raises(TLSError) as untrusted:
        await AsyncClient.connect(*server.address, tls=True)  # the system's CAs
    assert untrusted.value.reason == "CERTIFICATE_VERIFY_FAILED"
    assert "certificate verify failed" in str(untrusted.value)
    with pytest.raises(TLSError) as other_ca:
        await AsyncClient.connect(*server.address, tls_ca=pki.other_ca)
    assert other_ca.value.reason == "CERTIFICATE_VERIFY_FAILED"
    with pytest.raises(TLSError) as wrong_name:
        await AsyncClient.connect(*server.address, tls_ca=pki.ca, server_hostname="example.com")
    assert "server_hostname" in str(wrong_name.value)
    assert isinstance(wrong_name.value, OSError)  # what `except OSError` callers catch
    with pytest.raises(ValueError, match="tls_ca"):
        await AsyncClient.connect(*server.address, tls=tls_context(), tls_ca=pki.ca)


async def test_tls_client_on_a_plaintext_port_gets_a_clear_error(
    start_server: StartServer, pki: Pki
) -> None:
    server = await start_server()
    with pytest.raises(TLSError) as caught:
        await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    assert "plaintext port" in str(caught.value)
    assert caught.value.reason == "WRONG_VERSION_NUMBER"


# -- flow control on the TLS transport -------------------------------------------------------


async def tls_reader_that_stops(
    address: tuple[str, int], pki: Pki
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS peer with a tiny receive buffer that will read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    sock.setblocking(False)
    return await asyncio.open_connection(
        sock=sock, ssl=pki.client_context(), server_hostname="127.0.0.1", limit=4096
    )


async def test_slow_consumer_over_tls_is_cut_by_its_pending_bytes(
    start_server: StartServer, pki: Pki
) -> None:
    """The TLS transport's write buffer (encrypted and not yet encrypted bytes) is what
    get_write_buffer_size reports and pause_writing follows: past slow_consumer_bytes the
    peer is cut at once, long before slow_consumer_timeout."""
    server = await tls_server(
        start_server, pki, make_app(), slow_consumer_bytes=256 * 1024, slow_consumer_timeout=60
    )
    _, writer = await tls_reader_that_stops(server.address, pki)
    await wait_for(lambda: len(server.connections) == 1)
    [conn] = server.connections
    assert conn.transport.get_write_buffer_limits()[1] == server.budgets.prelogin_high_water
    request = pb.BigRequest(size=900_000).SerializeToString()
    for seq in range(1, 41):
        writer.write(encode_frame(1008, 0, seq, request))
    await wait_for(lambda: server.stats.close_reasons.get("slow_consumer", 0) == 1, timeout=20)
    assert server.stats.writes_paused >= 1
    assert server.stats.errors[ErrorCode.SLOW_CONSUMER] == 1
    await wait_for(lambda: not server.connections, timeout=10)
    writer.transport.abort()


async def test_slow_consumer_over_tls_is_cut_by_the_timeout_and_resumes_otherwise(
    start_server: StartServer, pki: Pki
) -> None:
    server = await tls_server(
        start_server,
        pki,
        slow_consumer_timeout=0.3,
        close_grace=0.3,
        sweep_interval=0.05,
        mailbox_limit=16,
    )
    _, writer = await tls_reader_that_stops(server.address, pki)
    payload = EchoRequest(data=b"z" * 1000).SerializeToString()
    writer.write(b"".join(encode_frame(10, 0, s, payload) for s in range(1, 20_001)))
    await wait_for(lambda: server.stats.writes_paused > 0, timeout=10)
    await wait_for(lambda: server.stats.close_reasons.get("slow_consumer", 0) == 1, timeout=10)
    await wait_for(lambda: not server.connections, timeout=10)
    assert server.dispatcher.pending == 0
    writer.transport.abort()
    # A client that reads, only slowly, is paused and resumed and gets every reply.
    async with await AsyncClient.connect(*server.address, tls_ca=pki.ca) as client:
        replies = await asyncio.gather(
            *(client.call(EchoRequest(data=b"r" * 4000), EchoReply) for _ in range(2000))
        )
    assert len(replies) == 2000


async def test_a_close_notify_with_requests_queued_ends_the_connection_quietly(
    start_server: StartServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS has no half-close: uvloop warns when eof_received keeps the connection open,
    and again for each write after the peer's close_notify; neither may happen."""
    caplog.set_level(logging.DEBUG)
    app = make_app()
    server = await tls_server(start_server, pki, app)
    _, writer = await asyncio.open_connection(
        *server.address, ssl=pki.client_context(), server_hostname="127.0.0.1"
    )
    # One request held at the gate, more queued behind it.
    writer.write(encode_frame(1010, 0, 1, pb.GateRequest(tag=1).SerializeToString()))
    for seq in range(2, 12):
        writer.write(encode_frame(10, 0, seq, EchoRequest(data=b"q").SerializeToString()))
    await wait_for(lambda: server.dispatcher.busy)
    writer.close()  # sends close_notify
    await wait_for(lambda: server.stats.close_reasons.get("peer_closed", 0) == 1)
    app.gate.set()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    assert not server.connections
    assert server.dispatcher.pending == 0
    noisy = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


# -- a real process ---------------------------------------------------------------------------


async def test_a_restart_serves_the_renewed_certificate(tmp_path: Path) -> None:
    """SIGHUP's successor reads the TLS files anew: a renewed certificate is served
    without a moment of downtime, and a client still trusting only the old CA is told."""
    old = make_pki(tmp_path / "old")
    new = make_pki(tmp_path / "new")
    pid_file = tmp_path / "tickwire.pid"
    proc, address = await spawn_serve(*old.serve_args(), "--pid-file", str(pid_file))
    try:
        async with await AsyncClient.connect(*address, tls_ca=old.ca) as client:
            await client.ping()
        for name in ("cert", "key"):
            getattr(old, name).write_bytes(getattr(new, name).read_bytes())
        proc.send_signal(signal.SIGHUP)
        await wait_pid_change(pid_file, proc.pid, timeout=30)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        async with await AsyncClient.connect(*address, tls_ca=new.ca) as client:
            await client.ping()
        with pytest.raises(TLSError, match="certificate verify failed"):
            await AsyncClient.connect(*address, tls_ca=old.ca)
    finally:
        successor = read_pid(pid_file)
        if successor is not None and successor != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(successor, signal.SIGKILL)
    log = await server_log(proc)
    assert "Traceback" not in log


async def test_handshakes_in_flight_count_against_max_connections(
    start_server: StartServer, pki: Pki
) -> None:
    """A peer in its handshake is no Connection yet; stalled handshakes must not hold
    sockets past the connection cap, and every way a handshake ends gives its place back."""
    server = await tls_server(start_server, pki, max_connections=4, tls_handshake_timeout=30)
    good = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    await good.ping()
    stalled = [await asyncio.open_connection(*server.address) for _ in range(4)]
    await wait_for(lambda: server.tls_handshakes.in_flight == 4)
    # 1 connection + 4 handshakes, one past the cap: the next peer is closed before
    # its handshake.
    with pytest.raises(TLSError):
        await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    assert server.tls_failures.total == {"TOO_MANY_CONNECTIONS": 1}
    for _, writer in stalled[:3]:  # three leave (EOF), one sends garbage
        writer.write_eof()
    stalled[3][1].write(b"GET / HTTP/1.1\r\n\r\n")
    await wait_for(lambda: server.tls_handshakes.in_flight == 0)
    async with await AsyncClient.connect(*server.address, tls_ca=pki.ca) as again:
        await again.ping()
    assert server.tls_handshakes.in_flight == 0
    for _, writer in stalled:
        writer.close()
    await good.close()


async def test_a_full_server_still_says_too_many_connections_over_tls(
    start_server: StartServer, pki: Pki
) -> None:
    server = await tls_server(start_server, pki, max_connections=1)
    first = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    await first.ping()
    second = await AsyncClient.connect(*server.address, tls_ca=pki.ca)
    closed = await asyncio.wait_for(second.wait_closed(), 5)
    assert isinstance(closed.error, TooManyConnections)
    await first.ping()
    await first.close()


async def test_a_handshake_cut_by_its_timeout_gives_its_place_back(
    start_server: StartServer, pki: Pki
) -> None:
    server = await tls_server(start_server, pki, tls_handshake_timeout=0.3)
    stalled = [await asyncio.open_connection(*server.address) for _ in range(2)]
    await wait_for(lambda: server.tls_handshakes.in_flight == 2)
    for reader, _ in stalled:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    await wait_for(lambda: server.tls_handshakes.in_flight == 0)
    for _, writer in stalled:
        writer.close()
