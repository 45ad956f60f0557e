"""Latest-value conflation before the kernel is full (latest_queue_bytes): a subscriber
that stops reading while prices keep coming reads, once it resumes, the newest price of
each symbol after a bounded number of stale bytes, not the backlog of every update; the
reliable pushes made meanwhile all arrive, in order.

The subscriber is a raw non-blocking socket read with loop.sock_recv, so "stops reading"
means nothing takes bytes out of its kernel buffer, whose size it sets small: the bytes
that buffer holds are beyond the server's reach, and the bound below counts them.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from dataclasses import dataclass, field

from client_sdk import AsyncClient
from protocol.frame import HEADER_SIZE, Flags, Frame, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import LoginReply, LoginRequest
from server import App, Server
from server.auth import MemoryUsers
from server.connection import Connection
from tests.conftest import StartServer, wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "a"})
SYMBOLS = (1, 2, 3)
#: Updates per symbol per producer step (a step about every millisecond: some 10,000
#: updates a second per symbol), and steps between two reliable pushes.
PER_STEP = 10
RELIABLE_EVERY = 10
QUEUE_BYTES = 16 * 1024
PRICE_ID = 1005  # pb.UnorderedSleepRequest: tag is the symbol, ms the update's counter
TRADE_ID = 1001  # pb.SleepReply: tag counts the reliable pushes


def market_app() -> App:
    app = App("market")
    app.add_module(pb)
    app.latest_value(pb.UnorderedSleepRequest, key=lambda m: m.tag)
    return app


@dataclass
class Produced:
    last: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SYMBOLS, 0))
    updates: int = 0
    update_bytes: int = 0
    trades: int = 0
    trade_bytes: int = 0


async def produce(server: Server, produced: Produced, stop: asyncio.Event) -> None:
    step = 0
    while not stop.is_set():
        for _ in range(PER_STEP):
            for symbol in SYMBOLS:
                produced.last[symbol] += 1
                price = pb.UnorderedSleepRequest(tag=symbol, ms=produced.last[symbol])
                server.push("alice", price)
                produced.updates += 1
                produced.update_bytes += HEADER_SIZE + price.ByteSize()
        step += 1
        if step % RELIABLE_EVERY == 0:
            produced.trades += 1
            trade = pb.SleepReply(tag=produced.trades)
            server.push("alice", trade)
            produced.trade_bytes += HEADER_SIZE + trade.ByteSize()
        await asyncio.sleep(0.001)


async def subscriber(server: Server) -> tuple[socket.socket, int]:
    """A logged-in raw socket with a small receive buffer; returns it and the buffer's
    size as the kernel reports it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, server.address)
    body = LoginRequest(user="alice", password="a").SerializeToString()
    await loop.sock_sendall(sock, encode_frame(6, 0, 1, body))
    decoder = FrameDecoder()
    frames: list[Frame] = []
    while not frames:
        frames = decoder.feed(await loop.sock_recv(sock, 4096))
    [reply] = frames
    assert LoginReply.FromString(reply.payload).user_id == "alice"
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


async def test_a_subscriber_that_stops_reading_gets_the_newest_prices_after_a_bounded_backlog(
    start_server: StartServer,
) -> None:
    server = await start_server(
        market_app(),
        authenticator=USERS,
        latest_queue_bytes=QUEUE_BYTES,
        slow_consumer_bytes=64 << 20,
        slow_consumer_timeout=60,
    )
    loop = asyncio.get_running_loop()
    sock, rcvbuf = await subscriber(server)
    produced, stop = Produced(), asyncio.Event()
    producer = asyncio.create_task(produce(server, produced, stop))
    await asyncio.sleep(1.0)  # the subscriber reads nothing meanwhile
    stop.set()
    await producer
    final = dict(produced.last)

    decoder = FrameDecoder()
    seen: dict[int, int] = {}
    trades: list[tuple[int, int]] = []
    stale_bytes = stale_frames = 0  # read before the last symbol's newest price
    received = updates = 0
    async with asyncio.timeout(30):
        while seen != final or len(trades) < produced.trades:
            data = await loop.sock_recv(sock, 4096)
            assert data, "the server closed the subscriber"
            for frame in decoder.feed(data):
                received += HEADER_SIZE + len(frame.payload)
                assert frame.flags == Flags.PUSH
                if frame.msg_id == TRADE_ID:
                    trades.append((frame.seq, pb.SleepReply.FromString(frame.payload).tag))
                    continue
                assert frame.msg_id == PRICE_ID and frame.seq == 0
                price = pb.UnorderedSleepRequest.FromString(frame.payload)
                assert price.ms > seen.get(price.tag, 0)  # never an older value after a newer
                seen[price.tag] = price.ms
                updates += 1
                if seen != final:
                    stale_bytes, stale_frames = received, updates
    sock.close()

    # Every reliable push, in order, none conflated.
    assert trades == [(n, n) for n in range(1, produced.trades + 1)]
    # The newest price of each symbol came after at most what the subscriber's kernel
    # buffer held, plus latest_queue_bytes, plus the reliable pushes (which never wait),
    # plus one write's worth: not after the backlog of every update made.
    bound = rcvbuf + QUEUE_BYTES + produced.trade_bytes + 8 * 1024
    assert stale_bytes <= bound, (stale_bytes, bound, produced.update_bytes)
    assert produced.update_bytes > 4 * bound  # the backlog it did not read
    assert stale_frames < produced.updates // 4
    # Most updates were replaced by newer ones, not sent.
    assert updates < produced.updates // 4
    assert server.pusher.conflated > produced.updates // 2


async def test_waiting_latest_values_are_capped_and_a_closed_subscriber_is_let_go(
    start_server: StartServer,
) -> None:
    cap = 10 * (HEADER_SIZE + pb.UnorderedSleepRequest(tag=1, ms=1).ByteSize())
    server = await start_server(
        market_app(),
        authenticator=USERS,
        latest_queue_bytes=QUEUE_BYTES,
        latest_parked_bytes=cap,
        slow_consumer_bytes=64 << 20,
        slow_consumer_timeout=60,
    )
    client = await AsyncClient.connect(*server.address, registry=app_registry())
    got: list[pb.UnorderedSleepRequest] = []
    client.on_push(pb.UnorderedSleepRequest, lambda push: got.append(push.message))  # type: ignore[arg-type]
    await client.request(LoginRequest(user="alice", password="a"))
    [session] = server.sessions.local_sessions("alice")
    conn = session.conn
    assert conn is not None and conn.latest_gate and client._transport is not None
    client._transport.pause_reading()
    filler = pb.BigReply(data=b"x" * 65536)
    while conn.latest is None:  # reliable pushes until latest_queue_bytes wait
        server.push("alice", filler)
        await asyncio.sleep(0.01)
    assert not conn.write_paused  # waiting started long before the transport's limit
    for ms in (1, 2):  # two rounds over 50 symbols: 10 fit under the cap
        for symbol in range(1, 51):
            server.push("alice", pb.UnorderedSleepRequest(tag=symbol, ms=ms))
    assert list(conn.latest) == [(PRICE_ID, symbol) for symbol in range(1, 11)]
    assert conn.latest_bytes == cap
    assert server.pusher.latest_dropped == 80 and server.pusher.conflated == 10

    client._transport.resume_reading()
    await wait_for(lambda: len(got) == 10, timeout=20)
    assert [(m.tag, m.ms) for m in got] == [(symbol, 2) for symbol in range(1, 11)]
    # Once caught up, values go straight out again.
    assert conn.latest is None
    server.push("alice", pb.UnorderedSleepRequest(tag=40, ms=3))
    await wait_for(lambda: len(got) == 11)

    # A closed subscriber with values waiting is freed, values and all.
    client._transport.pause_reading()
    while conn.latest is None:
        server.push("alice", filler)
        await asyncio.sleep(0.01)
    server.push("alice", pb.UnorderedSleepRequest(tag=40, ms=4))
    assert conn.latest
    ref = weakref.ref(conn)
    del conn, session
    await client.close()
    await wait_for(lambda: closed(ref))
    await asyncio.sleep(0.05)
    gc.collect()
    assert ref() is None


def closed(ref: weakref.ref[Connection]) -> bool:
    conn = ref()
    return conn is None or conn.closing
