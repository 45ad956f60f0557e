"""Micro-benchmarks of the codec hot path (`make bench-micro`).

Under plain `make test` pytest-benchmark is disabled and each `benchmark(...)` calls its
function once, so every benchmark also asserts its result: a fast wrong answer must
never look like a win.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from protocol.frame import Flags, Frame, FrameDecoder, encode_frame
from protocol.proto import system_pb2
from protocol.registry import MessageRegistry, system_registry

BATCH = 64
ECHO_PAYLOAD = system_pb2.EchoRequest(data=b"x" * 16).SerializeToString()
SINGLE_FRAMES = [encode_frame(10, 0, seq, ECHO_PAYLOAD) for seq in range(1, BATCH + 1)]
CHUNK = b"".join(SINGLE_FRAMES)
EXPECTED = [Frame(10, 0, seq, ECHO_PAYLOAD) for seq in range(1, BATCH + 1)]


@pytest.fixture(scope="module")
def registry() -> MessageRegistry:
    return system_registry()


def test_decoder_feed_chunk_of_64(benchmark: BenchmarkFixture) -> None:
    # One data_received carrying many pipelined requests: the common case under load.
    decoder = FrameDecoder()
    frames = benchmark(decoder.feed, CHUNK)
    assert frames == EXPECTED
    assert decoder.buffered == 0 and decoder.error is None


def test_decoder_feed_one_frame_at_a_time(benchmark: BenchmarkFixture) -> None:
    decoder = FrameDecoder()

    def feed_each() -> list[Frame]:
        out: list[Frame] = []
        for data in SINGLE_FRAMES:
            out.extend(decoder.feed(data))
        return out

    frames = benchmark(feed_each)
    assert frames == EXPECTED
    assert decoder.buffered == 0 and decoder.error is None


def test_encode_frame(benchmark: BenchmarkFixture) -> None:
    reply = system_pb2.EchoReply(data=b"x" * 16).SerializeToString()
    data = benchmark(encode_frame, 11, Flags.RESPONSE, 7, reply)
    assert data == bytes.fromhex("00000019 000b 01 00000007") + reply
    assert FrameDecoder().feed(data) == [Frame(11, Flags.RESPONSE, 7, reply)]


def test_registry_decode(benchmark: BenchmarkFixture, registry: MessageRegistry) -> None:
    message = benchmark(registry.decode, 10, ECHO_PAYLOAD)
    assert isinstance(message, system_pb2.EchoRequest)
    assert message.data == b"x" * 16


def test_registry_id_of_and_serialize(
    benchmark: BenchmarkFixture, registry: MessageRegistry
) -> None:
    reply = system_pb2.EchoReply(data=b"x" * 16)

    def encode_reply() -> tuple[int, bytes]:
        return registry.id_of(reply), reply.SerializeToString()

    msg_id, payload = benchmark(encode_reply)
    assert msg_id == 11
    assert system_pb2.EchoReply.FromString(payload) == reply
