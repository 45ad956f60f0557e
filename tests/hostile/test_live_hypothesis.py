"""Hypothesis over a live connection: any sequence of frames a peer can send (good
requests, unknown IDs, bad flags, garbage payloads, raw garbage, a bad length, a partial
frame), cut into reads anywhere, with or without a half-close, gets only what
docs/protocol.md allows back (fuzz.wire.check_answers), the server logs no ERROR or
traceback, and a well-behaved client on its own connection is answered after every one.

Most examples run against an in-process server (fast); one test runs fewer against a
real `tickwire serve` process, whose log is read whole at the end.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import AsyncClient
from examples.chat import chat_pb2
from examples.chat.service import make_app
from fuzz.wire import LogWatch, check_answers, exchange, expected_close, upto
from protocol.frame import DEFAULT_MAX_FRAME, Flags, Frame, encode_frame
from protocol.proto import system_pb2
from protocol.registry import MessageRegistry, system_registry
from server import Server
from server.auth import MemoryUsers
from tests.conftest import StartServer
from tests.hostile.harness import HostileServer, bystander, hostile_server, server_log, users_file

USER = ("alice", "alice-password")
#: The seq of the Ping that ends an exchange left open; requests use small seqs.
SENTINEL = 0xFFFFFFF0

seqs = st.integers(0, 40)
text = st.text(max_size=80)


def _request(msg_id: int, message: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda seq, msg: encode_frame(msg_id, 0, seq, msg.SerializeToString()),  # type: ignore[attr-defined]
        seqs,
        message,
    )


requests = st.one_of(
    _request(1, st.builds(system_pb2.Ping, client_time_ns=st.integers(0, 2**62))),
    _request(10, st.builds(system_pb2.EchoRequest, data=st.binary(max_size=300))),
    _request(20, st.just(system_pb2.DescribeRequest())),
    _request(4, st.builds(system_pb2.Hello, protocol_version=st.integers(0, 3), client_name=text)),
    _request(
        6,
        st.builds(
            system_pb2.LoginRequest,
            user=st.sampled_from([USER[0], "mallory", ""]),
            password=st.sampled_from([USER[1], "wrong", ""]),
            device=text,
        ),
    ),
    _request(8, st.just(system_pb2.RefreshTokenRequest())),
    _request(9, st.just(system_pb2.LogoutRequest())),
    _request(13, st.builds(system_pb2.ResumeRequest, token=text, last_push_seq=st.integers(0, 9))),
    _request(15, st.builds(system_pb2.PushAck, seq=st.integers(0, 9))),
    _request(257, st.builds(chat_pb2.JoinRequest, room=st.sampled_from(["lobby", "x" * 70, ""]))),
    _request(259, st.builds(chat_pb2.SayRequest, room=st.just("lobby"), text=text)),
    _request(261, st.builds(chat_pb2.LeaveRequest, room=st.just("lobby"))),
)
unknown_ids = st.integers(0, 0xFFFF).filter(
    lambda i: i not in {1, 4, 6, 8, 9, 10, 13, 15, 20, 257, 259, 261}
)
hostile = st.one_of(
    st.builds(encode_frame, unknown_ids, st.just(0), seqs, st.binary(max_size=40)),
    st.builds(
        lambda frame, flags: frame[:6] + bytes([flags]) + frame[7:], requests, st.integers(1, 255)
    ),
    st.builds(
        encode_frame,
        st.sampled_from([1, 4, 6, 10, 13, 257, 259]),
        st.just(0),
        seqs,
        st.binary(min_size=1, max_size=40),
    ),
    st.binary(min_size=1, max_size=12),
)
#: What may end a stream: a bad length (the server owes a closing code) or half a frame.
bad_lengths = st.one_of(st.integers(0, 6), st.integers(DEFAULT_MAX_FRAME + 1, 0xFFFFFFFF)).map(
    lambda n: struct.pack(">I", n)
)
partial = requests.flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda k: f[:k]))


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """(reads, half_close): a peer's stream cut into reads, and whether it half-closes.

    A stream left open ends with a Ping the test waits for; one ending in half a frame
    half-closes, since anything sent after it would complete that frame (so does one
    whose garbage swallows the Ping)."""
    pieces = draw(st.lists(st.one_of(requests, requests, hostile), max_size=10))
    end = draw(st.sampled_from(["none", "bad length", "partial"]))
    half_close = end == "partial" or draw(st.booleans())
    if end == "bad length":
        pieces.append(draw(bad_lengths))
    elif end == "partial":
        pieces.append(draw(partial))
    if not half_close:
        pieces.append(encode_frame(1, 0, SENTINEL))
    stream = b"".join(pieces)
    sent, owed, _ = expected_close(stream, DEFAULT_MAX_FRAME)
    if not half_close and owed is None and (not sent or sent[-1].seq != SENTINEL):
        # Garbage announced a frame long enough to swallow the Ping: the server rightly
        # waits for the rest, so only a half-close ends this exchange.
        half_close = True
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)], half_close


def _sentinel_answered(frames: list[Frame]) -> bool:
    return any(f.seq == SENTINEL and f.flags & Flags.RESPONSE for f in frames)


async def _one(
    address: tuple[str, int], registry: MessageRegistry, reads: list[bytes], half_close: bool
) -> None:
    sent, owed, size = expected_close(b"".join(reads), DEFAULT_MAX_FRAME)
    got = await exchange(
        address,
        upto(reads, size),
        half_close=half_close,
        until=None if half_close else _sentinel_answered,
    )
    check_answers(sent, owed, got, registry, half_closed=half_close)
    if not half_close and got.ended == "open":
        assert _sentinel_answered(got.frames), "the connection stayed open but went silent"


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    logging.getLogger().addHandler(watch)
    yield watch
    logging.getLogger().removeHandler(watch)


@pytest.fixture
async def in_process(
    fastpath_impl: ModuleType, start_server: StartServer
) -> AsyncIterator[tuple[Server, AsyncClient]]:
    """One server and its bystander for all of a test's examples (Hypothesis runs them
    in one set of fixtures), on each build of the read fast path in turn."""
    server = await start_server(make_app(), authenticator=MemoryUsers(dict([USER])))
    client = await AsyncClient.connect(*server.address, timeout=10.0)
    yield server, client
    await client.close()


LIVE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(LIVE, max_examples=400)
@given(session=sessions())
async def test_any_stream_gets_documented_answers_in_process(
    in_process: tuple[Server, AsyncClient],
    log_watch: LogWatch,
    session: tuple[list[bytes], bool],
) -> None:
    server, client = in_process
    reads, half_close = session
    await _one(server.address, server.registry, reads, half_close)
    log_watch.check()
    await client.ping(timeout=10.0)


@pytest.fixture
async def serve_process(tmp_path: Path) -> AsyncIterator[HostileServer]:
    """A real `tickwire serve` (the chat app, one user) with a bystander pinging it
    throughout; at the end, the bystander must have been answered every time and the
    server's whole log must hold no ERROR line and no traceback."""
    users = users_file(tmp_path, dict([USER]))
    async with hostile_server("--set", f"users_file={users}") as server:
        async with bystander(server.address) as client:
            yield server
        client.check()
        assert server.alive
        server.proc.terminate()
        await server.proc.wait()
        log = await server_log(server.proc)
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if " ERROR " in line], log


PROCESS_REGISTRY = system_registry([chat_pb2])


@settings(LIVE, max_examples=60)
@given(session=sessions())
async def test_any_stream_gets_documented_answers_from_a_serve_process(
    serve_process: HostileServer, session: tuple[list[bytes], bool]
) -> None:
    reads, half_close = session
    await _one(serve_process.address, PROCESS_REGISTRY, reads, half_close)
