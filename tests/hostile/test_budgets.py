"""Byte budgets against a real `tickwire serve` (docs/internet.md, "Byte budgets" and
"Freed on close"): hostile connections that send 1 MiB frames and never read, or hold
1 MiB partial frames, with a well-behaved client beside them.

Each test asserts the bound the budgets give (the server's peak RSS under what the
budgets allow for that many connections, plus a margin for the interpreter), that the
bystander was answered throughout, and the typed answer the attackers got. The server
runs with its default budgets; only timeouts are shortened so the tests end in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from protocol.errors import ErrorCode
from protocol.frame import HEADER, Frame, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoRequest, Error, LoginRequest
from protocol.system import ECHO_ID, ERROR_ID, LOGIN_ID, LOGIN_REPLY_ID
from server.config import ServerConfig
from tests.hostile.harness import Bystander, bystander, hostile_server, users_file

MIB = 1 << 20
ATTACKERS = 20
DEFAULTS = ServerConfig()
#: What one logged-in connection may make the server hold: its input budget and its
#: output budget (the transport's buffer, which the budget bounds to one more reply).
PER_CONNECTION = DEFAULTS.max_input_bytes + DEFAULTS.slow_consumer_bytes + DEFAULTS.max_frame
#: The interpreter's own growth under load (allocator slack, the bystander, logs).
MARGIN = 64 * MIB

ONE_MIB_ECHO = encode_frame(ECHO_ID, 0, 1, EchoRequest(data=b"A" * (MIB - 64)).SerializeToString())


class Attacker:
    """A raw connection: logs in when asked, then writes whatever it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame=0xFFFFFFFF)

    @classmethod
    async def connect(
        cls, address: tuple[str, int], user: str | None = None, *, rcvbuf: int = 0
    ) -> Attacker:
        """`rcvbuf`: a small receive buffer, so that what the server sends fills the
        kernel's buffers after a few frames, not after megabytes."""
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        reader, writer = await asyncio.open_connection(sock=sock)
        attacker = cls(reader, writer)
        if user is not None:
            login = LoginRequest(user=user, password="pw", device="attack")
            writer.write(encode_frame(LOGIN_ID, 0, 1, login.SerializeToString()))
            [reply] = await attacker.read(1)
            assert reply.msg_id == LOGIN_REPLY_ID, reply
            # A plain-def handler too (its Context is kept on the connection for reuse).
            writer.write(encode_frame(ECHO_ID, 0, 2, EchoRequest(data=b"hi").SerializeToString()))
            [echo] = await attacker.read(1)
            assert echo.seq == 2, echo
        return attacker

    async def read(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        async with asyncio.timeout(20):
            while len(frames) < count:
                data = await self.reader.read(1 << 16)
                assert data, "closed early"
                frames.extend(self.decoder.feed(data))
        return frames

    async def last_frame(self) -> Frame | None:
        """Read until the server closes; the last frame it sent."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
        last = None
        async with asyncio.timeout(30):
            while True:
                try:
                    data = await self.reader.read(1 << 20)
                except ConnectionError:
                    break
                if not data:
                    break
                for frame in self.decoder.feed(data):
                    last = frame
        return last

    async def flood(self, frame: bytes, count: int) -> None:
        """Write `count` copies of `frame` without reading, until the server stops
        taking them (its reading paused) or the connection ends."""
        with contextlib.suppress(ConnectionError):
            for _ in range(count):
                self.writer.write(frame)
                await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()


def error_code(frame: Frame | None) -> int:
    assert frame is not None and frame.msg_id == ERROR_ID, frame
    return Error.FromString(frame.payload).code


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def answered(client: Bystander, count: int = 5) -> None:
    """Let the bystander be answered `count` more times beside the attack."""
    goal = len(client.latencies) + count
    async with asyncio.timeout(20):
        while len(client.latencies) < goal and not client.failures:
            await asyncio.sleep(0.02)


async def test_unread_1mib_frames_before_login_are_refused_at_their_length(
    tmp_path: Path,
) -> None:
    async with (
        hostile_server() as server,
        bystander(server.address, interval=0.02) as client,
    ):
        base = server.rss()
        attackers = [await Attacker.connect(server.address) for _ in range(ATTACKERS)]
        await asyncio.gather(*(a.flood(ONE_MIB_ECHO, 8) for a in attackers))
        closes = [error_code(await a.last_frame()) for a in attackers]
        assert closes == [ErrorCode.FRAME_TOO_LARGE] * ATTACKERS
        await answered(client)
        # Refused after its 4 length bytes: nothing of a frame was ever held.
        assert server.peak_rss() - base < MARGIN
        assert server.alive
    client.check(at_least=5)


async def test_unread_1mib_frames_after_login_stay_within_the_budgets(tmp_path: Path) -> None:
    users = users_file(tmp_path, {f"u{i}": "pw" for i in range(ATTACKERS)} | {"ok": "ok"})
    async with (
        hostile_server(
            "--set",
            f"users_file={users}",
            "--set",
            "slow_consumer_timeout=2",
            "--set",
            "sweep_interval=0.2",
            "--set",
            "close_grace=60",
        ) as server,
        bystander(server.address, interval=0.02, user=("ok", "ok")) as client,
    ):
        base = server.rss()
        attackers = [
            await Attacker.connect(server.address, user=f"u{i}", rcvbuf=16384)
            for i in range(ATTACKERS)
        ]
        floods = [asyncio.ensure_future(a.flood(ONE_MIB_ECHO, 16)) for a in attackers]
        # The server stops reading each one at its budgets, and cuts it off once it has
        # read nothing for slow_consumer_timeout (2 s); then the attackers read what
        # they got.
        await answered(client, 200)
        lasts = await asyncio.gather(*(a.last_frame() for a in attackers))
        closes = [error_code(frame) for frame in lasts]
        for flood in floods:
            flood.cancel()
        assert closes == [ErrorCode.SLOW_CONSUMER] * ATTACKERS
        await answered(client)
        grown = server.peak_rss() - base
        assert grown < ATTACKERS * PER_CONNECTION + MARGIN, f"grew {grown / MIB:.0f} MiB"
        assert server.alive
    client.check(at_least=5)


async def test_1mib_partial_frames_are_freed_when_their_peers_close(tmp_path: Path) -> None:
    users = users_file(tmp_path, {f"u{i}": "pw" for i in range(ATTACKERS)})
    async with hostile_server("--set", f"users_file={users}") as server:
        async with bystander(server.address, interval=0.02) as client:
            base = server.rss()
            first_held = None
            for _ in range(3):  # rounds: what one round held must not pile up
                attackers = [
                    await Attacker.connect(server.address, user=f"u{i}") for i in range(ATTACKERS)
                ]
                partial = HEADER.pack(MIB, ECHO_ID, 0, 3) + b"P" * (MIB - 4096)
                for attacker in attackers:
                    attacker.writer.write(partial)
                    await attacker.writer.drain()
                await answered(client)
                held = server.rss() - base
                for attacker in attackers:
                    attacker.close()
                await answered(client)
                after = server.rss() - base
                assert held < ATTACKERS * DEFAULTS.max_input_bytes + MARGIN
                # Freed on close, without waiting for a garbage collection: the next round
                # reuses the memory (the allocator may keep it from the OS), so rounds do
                # not add up.
                if first_held is None:
                    first_held = held
                assert after < first_held + ATTACKERS * MIB // 2, (held // MIB, after // MIB)
            assert server.alive
        client.check(at_least=5)
