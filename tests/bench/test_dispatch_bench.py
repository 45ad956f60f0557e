"""Micro-benchmark of the whole server hot path, minus the socket (`make bench-micro`).

One read of 8 pipelined Echo requests goes through Connection.data_received,
Dispatcher.run_read (the connection is idle, so the read is run straight from the
bytes), the default layers (fused), the reply encoding and the end-of-iteration write
(Outbox.flush), into a transport that only records what it is given. As in the
codec benchmarks, the result is checked, so a fast wrong answer never looks like a win.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from bench.baseline import EchoProtocol
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest
from server import Server, ServerConfig
from server.connection import Connection
from tests.conftest import FRAMELOOPS

FRAMES_PER_READ = 8
PAYLOAD = EchoRequest(data=b"x" * 64).SerializeToString()
READ = b"".join(encode_frame(10, 0, seq, PAYLOAD) for seq in range(1, FRAMES_PER_READ + 1))


class RecordingTransport:
    """Stands in for the socket only: the benchmark measures the Python path above it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.fixture(params=FRAMELOOPS)
def started(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Server, Connection, RecordingTransport]]:
    """A started server on each build of the read fast path this checkout has."""
    loop = uvloop.new_event_loop()
    fast_path = "auto" if request.param == "compiled" else "interpreted"
    server = Server(config=ServerConfig(port=0, fast_path=fast_path))
    assert server.dispatcher.build == request.param
    loop.run_until_complete(server.start())
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    yield server, conn, transport
    loop.run_until_complete(server.stop(timeout=0.5))
    loop.close()
    asyncio.set_event_loop(None)


def test_dispatch_one_read_of_8_echo_requests(
    benchmark: BenchmarkFixture, started: tuple[Server, Connection, RecordingTransport]
) -> None:
    server, conn, transport = started
    dispatcher = server.dispatcher
    outbox = server.outbox

    def one_read() -> None:
        conn.data_received(READ)
        # What the loop would run at the end of the iteration: the replies' write. The
        # call_soon that schedules it is left out (marked as done): in a server it is one
        # per loop iteration, shared by every connection read in it.
        outbox.flush()
        outbox._scheduled = True

    benchmark(one_read)
    frames = FrameDecoder().feed(transport.written[-1])
    assert [f.seq for f in frames] == list(range(1, FRAMES_PER_READ + 1))
    assert all(f.msg_id == 11 and f.flags == Flags.RESPONSE for f in frames)
    assert EchoReply.FromString(frames[0].payload).data == b"x" * 64
    assert dispatcher.pending == 0


def test_baseline_one_read_of_8_echo_requests(benchmark: BenchmarkFixture) -> None:
    """The same read through bench/baseline.py's data_received, for side-by-side figures
    in one run: the floor the server's whole path is compared with."""
    protocol = EchoProtocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]

    def one_read() -> None:
        protocol.data_received(READ)
        del transport.written[:-1]

    benchmark(one_read)
    frames = FrameDecoder().feed(transport.written[-1])
    assert [f.seq for f in frames] == list(range(1, FRAMES_PER_READ + 1))
    assert EchoReply.FromString(frames[0].payload).data == b"x" * 64
