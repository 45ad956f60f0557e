"""Micro-benchmark of a push fanned out to 1,000 connections that read fast, minus the
socket (`make bench-micro`): the per-member loop of server/push.py and the end-of-
iteration write of server/outbox.py, into transports that only record what they get
(tests/bench/test_dispatch_bench.py's). A latest-value push costs what a reliable one
does while its members keep up: the waiting of latest values (latest_queue_bytes) must
not show here. Each result is checked, so a fast wrong answer never looks like a win.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from protocol.frame import Flags, FrameDecoder
from server import Server, ServerConfig
from server.connection import Connection
from server.sessions import Session
from tests.bench.test_dispatch_bench import RecordingTransport

MEMBERS = 1000
MSG_ID = 1001
PAYLOAD = b"q" * 48


class Transport(RecordingTransport):
    """uvloop's get_write_buffer_size is a C method (32 ns on the dev box): a Python one
    here would cost the gated flush twice that, which no server pays."""

    get_write_buffer_size = int  # type: ignore[assignment]


Members = tuple[Server, list[Session], list[RecordingTransport]]


@pytest.fixture
def members() -> Iterator[Members]:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = Server(config=ServerConfig(port=0))
    loop.run_until_complete(server.start())
    sessions: list[Session] = []
    transports: list[RecordingTransport] = []
    for i in range(MEMBERS):
        conn = Connection(server)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        # What a gated connection is (Connection._gate_latest), without a socket to set
        # TCP_NOTSENT_LOWAT on: its flush asks the transport for its buffer size.
        if hasattr(conn, "latest_gate"):
            conn.latest_gate = True
        session = Session(server.sessions, f"u{i}", f"s{i}", "bench", "h", 0, 0)
        session.conn = conn
        sessions.append(session)
        transports.append(transport)
    yield server, sessions, transports
    loop.run_until_complete(server.stop(timeout=0.5))
    loop.close()
    asyncio.set_event_loop(None)


def fan_out(benchmark: BenchmarkFixture, members: Members, latest: object) -> None:
    server, sessions, transports = members
    pusher, outbox = server.pusher, server.outbox

    def one_push() -> None:
        pusher.fan_out(sessions, MSG_ID, PAYLOAD, latest)
        # The write at the end of the iteration; its call_soon is left out (one per
        # iteration in a server, shared by every push made in it).
        outbox.flush()
        outbox._scheduled = True
        for transport in transports:
            transport.written.clear()

    benchmark(one_push)
    pusher.fan_out(sessions, MSG_ID, PAYLOAD, latest)
    outbox.flush()
    for transport in (transports[0], transports[-1]):
        [frame] = FrameDecoder().feed(transport.written[-1])
        assert frame.msg_id == MSG_ID and frame.flags == Flags.PUSH
        assert frame.payload == PAYLOAD and (frame.seq == 0) == (latest is not None)


def test_latest_value_push_to_1000_fast_readers(
    benchmark: BenchmarkFixture, members: Members
) -> None:
    fan_out(benchmark, members, (MSG_ID, "EURUSD"))
    assert members[0].pusher.conflated == 0


def test_reliable_push_to_1000_fast_readers(benchmark: BenchmarkFixture, members: Members) -> None:
    fan_out(benchmark, members, None)
