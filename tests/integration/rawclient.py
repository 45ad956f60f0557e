"""A raw-socket peer for tests that must send what the SDK never would."""

from __future__ import annotations

import asyncio
import contextlib

from protocol.frame import Frame, FrameDecoder, encode_frame


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame=0xFFFFFFFF)
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawPeer:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, msg_id: int, flags: int, seq: int, payload: bytes = b"") -> None:
        self.writer.write(encode_frame(msg_id, flags, seq, payload))

    async def read_frames(self, count: int, timeout: float = 10.0) -> list[Frame]:
        """Exactly the next `count` frames (more may be buffered for the next call)."""
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError(f"closed after {len(self.frames)} of {count} frames")
                self.frames.extend(self.decoder.feed(data))
        got, self.frames = self.frames[:count], self.frames[count:]
        return got

    async def read_until_closed(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame until the server closes the connection."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(1 << 16)
                except ConnectionResetError:
                    break
                if not data:
                    break
                self.frames.extend(self.decoder.feed(data))
        got, self.frames = self.frames, []
        return got

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
