"""The SDK's push side, against a scripted peer that sends what a server will push."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from client_sdk import AsyncClient, Push
from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, Error, GoAway

Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def scripted_peer() -> AsyncIterator[tuple[tuple[str, int], asyncio.Queue[Peer]]]:
    accepted: asyncio.Queue[Peer] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    yield address, accepted
    server.close()


def push_frame(seq: int, data: bytes) -> bytes:
    return encode_frame(11, Flags.PUSH, seq, EchoReply(data=data).SerializeToString())


async def test_pushes_reach_callbacks_and_iterator_in_order(
    scripted_peer: tuple[tuple[str, int], asyncio.Queue[Peer]],
) -> None:
    address, accepted = scripted_peer
    client = await AsyncClient.connect(*address)
    _, writer = await accepted.get()
    seen: list[Push] = []
    client.on_push(EchoReply, seen.append)
    received: list[Push] = []

    async def collect() -> None:
        async for push in client.pushes():
            received.append(push)

    collector = asyncio.ensure_future(collect())
    await asyncio.sleep(0)
    writer.write(b"".join(push_frame(i, str(i).encode()) for i in range(1, 6)))
    goaway = GoAway(reason=ErrorCode.SERVER_SHUTDOWN, message="bye", reconnect_after_ms=250)
    writer.write(encode_frame(30, Flags.PUSH, 0, goaway.SerializeToString()))
    writer.close()
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    await asyncio.wait_for(collector, 5)
    assert [p.seq for p in seen] == [1, 2, 3, 4, 5]
    assert [p.message.data for p in received] == [b"1", b"2", b"3", b"4", b"5"]  # type: ignore[attr-defined]
    assert client.goaway is not None and client.goaway.reconnect_after_ms == 250
    assert closed.code == ErrorCode.SERVER_SHUTDOWN


async def test_closing_error_fails_requests_in_flight(
    scripted_peer: tuple[tuple[str, int], asyncio.Queue[Peer]],
) -> None:
    address, accepted = scripted_peer
    client = await AsyncClient.connect(*address)
    reader, writer = await accepted.get()
    from protocol.proto.system_pb2 import EchoRequest

    pending = asyncio.ensure_future(client.request(EchoRequest(data=b"x")))
    await reader.readexactly(11 + 3)  # the request arrived
    error = Error(code=ErrorCode.IDLE_TIMEOUT, message="too quiet")
    writer.write(encode_frame(3, Flags.ERROR, 0, error.SerializeToString()))
    with pytest.raises(Exception) as exc_info:
        await asyncio.wait_for(pending, 5)
    assert getattr(exc_info.value, "code", None) == ErrorCode.IDLE_TIMEOUT
    writer.close()
    await client.close()


async def test_observer_sees_unclaimed_frames_and_roundtrip_can_return_errors(
    scripted_peer: tuple[tuple[str, int], asyncio.Queue[Peer]],
) -> None:
    address, accepted = scripted_peer
    client = await AsyncClient.connect(*address)
    reader, writer = await accepted.get()
    seen: list[tuple[int, int, int]] = []
    client.on_frame(lambda f: seen.append((f.msg_id, f.flags, f.seq)))
    # A request that times out, then its late reply: only the observer gets it.
    with pytest.raises(TimeoutError):
        await client.roundtrip(10, b"", timeout=0.05)
    await reader.readexactly(11)
    late = encode_frame(11, Flags.RESPONSE, 1, EchoReply(data=b"late").SerializeToString())
    error = Error(code=ErrorCode.DECODE_ERROR, message="bad", request_msg_id=10)
    writer.write(late + push_frame(1, b"p"))
    pending = asyncio.ensure_future(client.roundtrip(10, b"", raise_errors=False))
    await reader.readexactly(11)
    writer.write(encode_frame(3, Flags.RESPONSE | Flags.ERROR, 2, error.SerializeToString()))
    frame = await asyncio.wait_for(pending, 5)
    assert frame.msg_id == 3 and frame.seq == 2  # returned, not raised
    assert seen == [(11, Flags.RESPONSE, 1), (11, Flags.PUSH, 1)]
    await client.close()


@pytest.mark.parametrize("msg_id", [3, 30])
async def test_undecodable_error_or_goaway_closes_with_a_reason(
    scripted_peer: tuple[tuple[str, int], asyncio.Queue[Peer]], msg_id: int
) -> None:
    address, accepted = scripted_peer
    client = await AsyncClient.connect(*address)
    _, writer = await accepted.get()
    flags = Flags.ERROR if msg_id == 3 else Flags.PUSH
    writer.write(encode_frame(msg_id, flags, 0, b"\xff\xff\xff"))
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert "undecodable" in str(closed)


async def test_the_pushes_of_a_closed_client_end_at_once(
    scripted_peer: tuple[tuple[str, int], asyncio.Queue[Peer]],
) -> None:
    address, accepted = scripted_peer
    client = await AsyncClient.connect(*address)
    await accepted.get()
    await client.close()

    async def drain() -> list[Push]:
        return [p async for p in client.pushes()]

    assert await asyncio.wait_for(drain(), 5) == []  # ends, not waiting for pushes forever
