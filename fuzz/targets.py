"""The fuzz targets: functions of one `bytes` that raise on a broken promise.

- `decoder`: `FrameDecoder` fed the bytes in reads of a size the input picks, against
  the frame format parsed whole (fuzz.wire.expected_close).
- `LiveTarget`: a real Server (system handlers and the example chat app, one known user)
  in this process on loopback, on uvloop like production; each input goes over a fresh
  TCP connection, half-closed, and what comes back must be documented answers, closed
  as docs/protocol.md says, with no ERROR or traceback in the log, while a well-behaved
  client on its own connection is still answered after every input.

The live target drives a real socket rather than calling the dispatcher: the per-read
path includes the transport's pause/resume, the half-close and the closing frame, which
a fake transport would have to imitate to be useful.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fuzz.wire import LogWatch, check_answers, exchange, expected_close, split, upto
from protocol.errors import RemoteProtocolError
from protocol.frame import FrameDecoder

__all__ = ["LIVE_MAX_FRAME", "LiveTarget", "decoder"]


def decoder(data: bytes) -> None:
    max_frame, reads = split(data)
    stream = b"".join(reads)
    want, code, _ = expected_close(stream, max_frame)
    dec = FrameDecoder(max_frame)
    got = []
    received = consumed = 0
    for chunk in reads:
        out = dec.feed(chunk)
        got.extend(out)
        received += len(chunk)
        consumed += sum(4 + 7 + len(f.payload) for f in out)
        if dec.error is None:
            assert dec.buffered == received - consumed, "held bytes other than those received"
            assert dec.buffered < 4 + max_frame, "held more than one incomplete frame"
        else:
            assert dec.buffered == 0, "kept bytes after a fatal error"
    assert got == want, f"frames {got!r}, the format says {want!r}"
    if code is None:
        assert dec.error is None, f"error {dec.error!r} on a well-framed stream"
    else:
        error = dec.error
        assert isinstance(error, RemoteProtocolError) and error.code == code, (
            f"error {error!r}, the format says {code.name}"
        )
        assert dec.feed(stream) == [] and dec.error is error, "the error is not sticky"


#: The live target's max_frame: small, so random lengths are in range often enough, yet
#: large enough for every reply a peer can ask for before login (DescribeReply is about
#: 17 KB). Below that, Describe is answered INTERNAL with an ERROR log line per request
#: (issue 12, "an oversized reply answered once with a typed error and no log line per
#: request").
LIVE_MAX_FRAME = 1 << 16
#: The user the live target knows (the Hypothesis tests log in as it).
USER = ("alice", "alice-password")


class LiveTarget:
    """One in-process server and its bystander, shared by every input of a run."""

    def __init__(
        self, *, fast_path: Literal["auto", "interpreted"] = "auto", **config: Any
    ) -> None:
        import uvloop

        from client_sdk import AsyncClient
        from examples.chat.service import make_app
        from server import Server, ServerConfig
        from server.auth import MemoryUsers

        self.loop = uvloop.new_event_loop()
        self.watch = LogWatch()
        logging.getLogger().addHandler(self.watch)
        # Only what matters reaches the handlers: a line per connection would cost more
        # than the input.
        logging.getLogger("tickwire").setLevel(logging.WARNING)
        self.server = Server(
            make_app(),
            config=ServerConfig(
                host="127.0.0.1",
                port=0,
                max_frame=LIVE_MAX_FRAME,
                fast_path=fast_path,
                **config,
            ),
            authenticator=MemoryUsers(dict([USER])),
        )
        self.loop.run_until_complete(self.server.start())
        self.address = self.server.address
        self.registry = self.server.registry
        self.bystander = self.loop.run_until_complete(
            AsyncClient.connect(*self.address, timeout=10.0)
        )

    def __call__(self, data: bytes) -> None:
        # The input reads as the decoder's does (fuzz.wire.split), so one corpus serves
        # both; the server's max_frame is fixed, so the first byte goes unused.
        _, reads = split(data)
        self.loop.run_until_complete(self.run(reads))

    async def run(self, reads: list[bytes]) -> None:
        stream = b"".join(reads)
        sent, owed, size = expected_close(stream, LIVE_MAX_FRAME)
        got = await exchange(self.address, upto(reads, size))
        check_answers(sent, owed, got, self.registry)
        self.watch.check()
        await self.bystander.ping(timeout=10.0)

    def close(self) -> None:
        self.loop.run_until_complete(self.bystander.close())
        self.loop.run_until_complete(self.server.stop(timeout=1.0))
        logging.getLogger().removeHandler(self.watch)
        self.loop.close()
