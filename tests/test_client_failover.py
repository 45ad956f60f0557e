"""The SDK's fallback addresses against real servers, without a cluster: the first
connect tries them in turn, a reconnect moves on from an address that refuses (after a
GoAway too) or accepts and never answers, round the list and back, each TLS connection
checked against its own host's name; when none answers it gives up naming them all."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from client_sdk import AsyncClient, Client, ConnectionClosed, Reconnect
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from protocol.registry import system_registry
from server import App, Context, Server, ServerConfig
from server.auth import MemoryUsers
from tests.conftest import StartServer
from tests.proto import testapp_pb2 as pb

pytestmark = pytest.mark.timeout(60)

FAST = Reconnect(initial=0.02, maximum=0.2)
USERS = {"alice": "pw-a"}


def dead_address() -> tuple[str, int]:
    """A loopback port nothing listens on: a connect there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return ("127.0.0.1", port)


def named_app(name: str) -> App:
    """NoteRequest answers which server ran it, and as whom."""
    app = App(name, public=True)
    app.add_module(pb)

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.BlockingReply:
        user = ctx.session.user_id if ctx.session is not None else "-"
        return pb.BlockingReply(thread_name=f"{name}/{user}")

    return app


async def served_by(client: AsyncClient) -> str:
    reply = await client.call(pb.NoteRequest(), pb.BlockingReply, timeout=10)
    return reply.thread_name


@pytest.fixture
async def opened() -> AsyncIterator[list[AsyncClient]]:
    clients: list[AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def connect(
    opened: list[AsyncClient],
    first: tuple[str, int],
    *fallbacks: tuple[str, int],
    **options: object,
) -> AsyncClient:
    client = await AsyncClient.connect(
        *first,
        system_registry([pb]),
        fallbacks=fallbacks,
        **options,  # type: ignore[arg-type]
    )
    opened.append(client)
    return client


async def test_connect_tries_the_fallbacks_in_turn(
    start_server: StartServer, opened: list[AsyncClient]
) -> None:
    b = await start_server(named_app("b"))
    dead = dead_address()
    client = await connect(opened, dead, dead, b.address)  # an address twice counts once
    assert client.addresses == (dead, b.address)
    assert client.address == b.address
    assert await served_by(client) == "b/-"
    # None answers: the first address's error, each address's in its notes.
    other = dead_address()
    with pytest.raises(ConnectionRefusedError) as refused:
        await AsyncClient.connect(*dead, fallbacks=[other])
    notes = refused.value.__notes__
    assert [note.split(": ")[0] for note in notes] == [
        f"tried 127.0.0.1:{dead[1]}",
        f"tried 127.0.0.1:{other[1]}",
    ]
    # Without fallbacks nothing changes: the one error, no notes.
    with pytest.raises(ConnectionRefusedError) as alone:
        await AsyncClient.connect(*dead)
    assert not getattr(alone.value, "__notes__", None)


async def test_fallbacks_must_be_host_port_pairs() -> None:
    for wrong in (["127.0.0.1:7000"], [("127.0.0.1", "7000")], [("127.0.0.1", 0)]):
        with pytest.raises(ValueError, match="fallbacks take"):
            await AsyncClient.connect("127.0.0.1", 1, fallbacks=wrong)  # type: ignore[arg-type]


async def test_a_goaway_moves_the_client_to_the_next_address_and_round_again(
    start_server: StartServer, opened: list[AsyncClient]
) -> None:
    a = await start_server(named_app("a"))
    b = await start_server(named_app("b"))
    client = await connect(opened, a.address, b.address, reconnect=FAST)
    assert client.address == a.address and await served_by(client) == "a/-"
    port_a = a.address[1]
    # A drain: GoAway, then the port refuses, so the retry goes to b.
    await a.stop(timeout=1, reconnect_after_ms=30)
    assert await served_by(client) == "b/-"
    assert client.address == b.address and client.reconnects == 1
    # b goes too, and a server is back on a's port: the client comes round to it.
    again = Server(named_app("a2"), config=ServerConfig(host="127.0.0.1", port=port_a))
    await again.start()
    try:
        await b.stop(timeout=1, reconnect_after_ms=30)
        assert await served_by(client) == "a2/-"
        assert client.address == ("127.0.0.1", port_a) and client.reconnects == 2
    finally:
        await client.close()
        await again.stop(timeout=1)


async def test_a_node_that_accepts_and_never_answers_is_passed_over(
    start_server: StartServer, opened: list[AsyncClient]
) -> None:
    """The Resume on the silent address times out: the next try goes to the next one,
    whose fresh memory store refuses the token, so the remembered login takes over."""
    a = await start_server(named_app("a"), authenticator=MemoryUsers(USERS))
    b = await start_server(named_app("b"), authenticator=MemoryUsers(USERS))
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # reads everything, answers nothing

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_address = hung.sockets[0].getsockname()[:2]
    try:
        # `timeout` bounds the Resume on a new connection too: the wait on the silent one.
        client = await connect(
            opened, a.address, hung_address, b.address, reconnect=FAST, timeout=0.5
        )
        await client.login("alice", "pw-a", remember=True)
        await a.stop(timeout=1)
        assert await served_by(client) == "b/alice"
        assert client.address == b.address and len(accepted) == 1
    finally:
        for writer in accepted:
            writer.close()
        hung.close()
        await hung.wait_closed()


async def test_reconnecting_gives_up_naming_every_address(
    start_server: StartServer, opened: list[AsyncClient]
) -> None:
    a = await start_server(named_app("a"))
    b_address = dead_address()
    client = await connect(
        opened, a.address, b_address, reconnect=Reconnect(initial=0.01, maximum=0.02, attempts=4)
    )
    where = f"127.0.0.1:{a.address[1]}, 127.0.0.1:{b_address[1]}"
    await a.stop(timeout=1)
    reason = await asyncio.wait_for(client.wait_closed(), 10)
    assert isinstance(reason, ConnectionClosed)
    assert f"gave up reconnecting to {where} after 4 attempts" in str(reason)


async def test_each_tls_address_is_checked_against_its_own_host(
    start_server: StartServer, opened: list[AsyncClient], tmp_path: Path
) -> None:
    """a's certificate names only localhost, b's only 127.0.0.1: the reconnect to b
    passes the check only if it asks for b's own host."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    configs = []
    for name, host in (("a", "localhost"), ("b", "127.0.0.1")):
        issued = ca.issue_cert(host)
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        issued.private_key_pem.write_to_path(str(key))
        configs.append({"tls_cert": str(cert), "tls_key": str(key)})
    a = await start_server(named_app("a"), **configs[0])
    b = await start_server(named_app("b"), **configs[1])
    client = await connect(
        opened, ("localhost", a.address[1]), b.address, reconnect=FAST, tls_ca=str(ca_file)
    )
    assert await served_by(client) == "a/-"
    await a.stop(timeout=1, reconnect_after_ms=30)
    assert await served_by(client) == "b/-"
    assert client.address == b.address


async def test_the_blocking_client_takes_fallbacks(start_server: StartServer) -> None:
    b = await start_server(named_app("b"))
    dead = dead_address()

    def script() -> tuple[tuple[str, int], bytes]:
        with Client(*dead, fallbacks=[b.address]) as client:
            return client.address, client.call(EchoRequest(data=b"hi"), EchoReply).data

    assert await asyncio.to_thread(script) == (b.address, b"hi")
