"""The baseline: the smallest honest uvloop + protobuf echo server we know how to write.

`tickwire bench echo --compare-baseline` runs it next to the real server. It answers the
same wire contract (docs/protocol.md frames; EchoRequest -> EchoReply, Ping -> Pong) with
none of the machinery the real server carries (dispatch pool, middleware, sessions,
limits), so the gap between the two is the price of that machinery, and the baseline's
number is a ceiling for this language, loop and codec on this machine.

It is written the way docs/architecture.md asks the server to be fast: one
`asyncio.Protocol`, every frame of one `data_received` split with `struct.unpack_from`,
the payload copied once, replies of one read joined into one write. It is not made slow
on purpose, and it does not skip the protobuf decode/encode either: the real server has
to do both.

It imports `protocol` for the frame layout and the message IDs (sans-I/O, nothing of the
server's) and nothing else of tickwire but `bench.proc`'s fd-limit helper.

What it leaves out, on purpose: unknown message IDs are ignored (no Error frame), there are
no timeouts, and a bad length closes the connection without an Error frame.

    python -m bench.baseline --host 127.0.0.1 --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import cast

import uvloop

from bench.proc import raise_nofile_limit
from protocol.frame import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, MIN_LENGTH, Flags
from protocol.proto import system_pb2
from protocol.system import ECHO_ID, ECHO_REPLY_ID, PING_ID, PONG_ID

_RESPONSE = int(Flags.RESPONSE)


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_transport")

    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        unpack = HEADER.unpack_from
        end_of_data = len(data)
        out: list[bytes] = []
        pos = 0
        while end_of_data - pos >= HEADER_SIZE:
            length, msg_id, _flags, seq = unpack(data, pos)
            if not MIN_LENGTH <= length <= DEFAULT_MAX_FRAME:
                assert self._transport is not None
                self._transport.close()
                self._buf = b""
                return
            end = pos + 4 + length
            if end > end_of_data:
                break
            if msg_id == ECHO_ID:
                request = system_pb2.EchoRequest.FromString(data[pos + HEADER_SIZE : end])
                body = system_pb2.EchoReply(data=request.data).SerializeToString()
                out.append(HEADER.pack(MIN_LENGTH + len(body), ECHO_REPLY_ID, _RESPONSE, seq))
                out.append(body)
            elif msg_id == PING_ID:
                ping = system_pb2.Ping.FromString(data[pos + HEADER_SIZE : end])
                body = system_pb2.Pong(
                    client_time_ns=ping.client_time_ns, server_time_ns=time.time_ns()
                ).SerializeToString()
                out.append(HEADER.pack(MIN_LENGTH + len(body), PONG_ID, _RESPONSE, seq))
                out.append(body)
            pos = end
        self._buf = data[pos:] if pos < end_of_data else b""
        if out:
            assert self._transport is not None
            self._transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=backlog)
    bound = server.sockets[0].getsockname()
    print(f"tickwire listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    try:
        await stop
    finally:
        # No wait_closed(): open client connections would hold the exit up, and the
        # process is ending anyway.
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline", description="Minimal echo server for comparison."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    uvloop.run(serve(args.host, args.port, args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
