"""Slow peers against a real `tickwire serve`, each beside a well-behaved client: a
slowloris, a connection that only ever pings without logging in, and a dead peer next
to an idle client that answers the server's heartbeats (docs/internet.md, "Slow peers
and heartbeats"). Deadlines are configured small so each attack takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.frame import Frame, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error, Ping
from protocol.system import ERROR_ID, PING_ID
from tests.conftest import wait_for
from tests.hostile.harness import bystander, hostile_server, server_log, users_file

FAST_SWEEP = ("--set", "sweep_interval=0.1")


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float = 20) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(1 << 16)
            except ConnectionResetError:
                break
            if not data:
                break
            frames.extend(decoder.feed(data))
    return frames


def _closing_error(frames: list[Frame]) -> Error:
    assert frames and frames[-1].msg_id == ERROR_ID, f"no closing Error in {frames!r}"
    return Error.FromString(frames[-1].payload)


async def test_slowloris_peers_are_cut_at_the_frame_deadline() -> None:
    """Twenty peers each send one byte of an Echo frame every 0.3 s: every byte used to
    reset the idle timer and nothing bounded a frame's arrival, so they stayed forever."""
    async with (
        hostile_server(
            *FAST_SWEEP,
            "--set",
            "frame_timeout=1",
            "--set",
            "ping_interval=0",
            "--set",
            "log_flood=0",
        ) as srv,
        bystander(srv.address) as client,
    ):
        frame = encode_frame(10, 0, 1, EchoRequest(data=b"s" * 100).SerializeToString())
        peers = [await asyncio.open_connection(*srv.address) for _ in range(20)]

        async def dribble(writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                for byte in frame:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.3)

        dribblers = [asyncio.create_task(dribble(w)) for _, w in peers]
        results = await asyncio.gather(*(_read_until_closed(r) for r, _ in peers))
        for task in dribblers:
            task.cancel()
        for frames in results:
            error = _closing_error(frames)
            assert error.code == ErrorCode.IDLE_TIMEOUT and "not finished" in error.message
        assert srv.alive
        for _, writer in peers:
            writer.close()
    client.check(at_least=5)
    assert (await server_log(srv.proc)).count("reason=frame_timeout") == 20


async def test_a_ping_only_connection_is_cut_at_the_auth_timeout(tmp_path: Path) -> None:
    """One Ping used to exempt a connection from the auth timeout for good."""
    users = users_file(tmp_path, {"alice": "pw-a"})
    async with (
        hostile_server(
            *FAST_SWEEP,
            "--set",
            f"users_file={users}",
            "--set",
            "auth_timeout=1",
            "--set",
            "trust_loopback=false",
        ) as srv,
        bystander(srv.address, user=("alice", "pw-a")) as client,
    ):
        reader, writer = await asyncio.open_connection(*srv.address)

        async def keep_pinging() -> None:
            with contextlib.suppress(ConnectionError):
                for seq in range(1, 1000):
                    writer.write(encode_frame(PING_ID, 0, seq, Ping().SerializeToString()))
                    await asyncio.sleep(0.1)

        pinger = asyncio.create_task(keep_pinging())
        frames = await _read_until_closed(reader)
        pinger.cancel()
        assert any(f.msg_id == 2 for f in frames)  # its Pings were answered meanwhile
        assert _closing_error(frames).code == ErrorCode.AUTH_TIMEOUT
        writer.close()
        await asyncio.sleep(0.5)  # the logged-in bystander outlives the auth timeout
    client.check(at_least=10)


async def test_an_idle_client_answering_pings_stays_while_a_dead_peer_is_cut() -> None:
    """Without server pings a dead peer holds its socket for the idle timeout (300 s),
    and a quiet client has to send its own heartbeats to stay."""
    async with (
        hostile_server(
            *FAST_SWEEP,
            "--set",
            "ping_interval=0.3",
            "--set",
            "max_outstanding_pings=2",
            "--set",
            "auth_timeout=0",
        ) as srv,
        bystander(srv.address) as client,
    ):
        idle = await AsyncClient.connect(*srv.address)
        pings: list[int] = []
        idle.on_frame(lambda frame: pings.append(frame.msg_id) if frame.msg_id == PING_ID else None)
        reader, writer = await asyncio.open_connection(*srv.address)
        frames = await _read_until_closed(reader)  # the dead peer reads but never answers
        assert [f.msg_id for f in frames[:-1]] == [PING_ID, PING_ID]
        error = _closing_error(frames)
        assert error.code == ErrorCode.IDLE_TIMEOUT and "pings unanswered" in error.message
        # The idle client is pinged past the point where the dead peer was cut, and stays.
        await wait_for(lambda: len(pings) >= 3)
        assert not idle.closed
        assert (await idle.call(EchoRequest(data=b"alive"), EchoReply)).data == b"alive"
        await idle.close()
        writer.close()
    client.check(at_least=5)
