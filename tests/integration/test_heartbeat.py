"""Server heartbeats, the frame deadline and the idle timer, against an in-process server
over real sockets (docs/protocol.md, "Server heartbeats"; docs/internet.md, "Slow peers
and heartbeats")."""

from __future__ import annotations

import asyncio
import io
import json

from client_sdk import AsyncClient
from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error, Hello, Ping, Pong, Welcome
from protocol.system import ERROR_ID, PING_ID, PONG_ID
from server.connection import CloseReason
from tests.conftest import StartServer
from tests.integration.rawclient import RawPeer
from tools.repl import EXIT_OK, JsonPrinter, Session, run_lines

HEARTBEATS = {"ping_interval": 0.2, "max_outstanding_pings": 2, "sweep_interval": 0.05}


async def test_welcome_announces_heartbeats_and_deadlines(start_server: StartServer) -> None:
    server = await start_server(
        ping_interval=12, max_outstanding_pings=3, auth_timeout=7, frame_timeout=4
    )
    async with await AsyncClient.connect(*server.address) as client:
        welcome = await client.call(Hello(protocol_version=1), Welcome)
    assert welcome.ping_interval_ms == 12_000 and welcome.max_outstanding_pings == 3
    assert welcome.auth_timeout_ms == 7_000 and welcome.frame_timeout_ms == 4_000


async def test_a_silent_peer_is_pinged_then_cut_while_an_sdk_client_stays(
    start_server: StartServer,
) -> None:
    server = await start_server(**HEARTBEATS)
    async with await AsyncClient.connect(*server.address) as client:
        seen: list[int] = []
        client.on_frame(lambda frame: seen.append(frame.msg_id))
        silent = await RawPeer.connect(server.address)
        frames = await silent.read_until_closed()
        pings = [f for f in frames if f.msg_id == PING_ID]
        assert len(pings) == 2
        assert all(f.flags == Flags.PUSH and f.seq == 0 for f in pings)
        assert Ping.FromString(pings[0].payload).client_time_ns > 0
        assert frames[-1].msg_id == ERROR_ID
        assert Error.FromString(frames[-1].payload).code == ErrorCode.IDLE_TIMEOUT
        assert server.stats.close_reasons[CloseReason.PING_TIMEOUT] == 1
        # The SDK client sent nothing of its own all along: it answered the pings.
        assert seen.count(PING_ID) >= 3
        assert not client.closed
        assert (await client.call(EchoRequest(data=b"still"), EchoReply)).data == b"still"
        await silent.close()


async def test_a_pong_notification_answers_a_ping_and_gets_no_reply(
    start_server: StartServer,
) -> None:
    server = await start_server(**HEARTBEATS)
    peer = await RawPeer.connect(server.address)
    try:
        for _ in range(4):  # twice what max_outstanding_pings allows unanswered
            [ping] = await peer.read_frames(1)
            assert ping.msg_id == PING_ID
            sent = Ping.FromString(ping.payload).client_time_ns
            peer.send_frame(PONG_ID, 0, 0, Pong(client_time_ns=sent).SerializeToString())
        peer.send_frame(10, 0, 9, EchoRequest(data=b"x").SerializeToString())
        frames = await peer.read_frames(1)
        while frames[0].msg_id == PING_ID:  # a ping may cross the echo
            frames = await peer.read_frames(1)
        assert frames[0].msg_id == 11 and frames[0].seq == 9  # the Pongs got no answer
        assert not server.stats.close_reasons
    finally:
        await peer.close()


async def test_bytes_that_never_make_a_frame_do_not_reset_the_idle_timer(
    start_server: StartServer,
) -> None:
    server = await start_server(
        idle_timeout=0.4, frame_timeout=0, ping_interval=0, sweep_interval=0.05
    )
    peer = await RawPeer.connect(server.address)
    try:
        frame = encode_frame(10, 0, 1, EchoRequest(data=b"y" * 200).SerializeToString())

        async def dribble() -> None:
            for byte in frame[:-1]:
                peer.send(bytes([byte]))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(dribble())
        frames = await peer.read_until_closed()
        task.cancel()
        assert Error.FromString(frames[-1].payload).code == ErrorCode.IDLE_TIMEOUT
        assert server.stats.close_reasons[CloseReason.IDLE_TIMEOUT] == 1
    finally:
        await peer.close()


async def test_an_unfinished_frame_is_cut_at_the_frame_deadline(start_server: StartServer) -> None:
    server = await start_server(
        frame_timeout=0.3, ping_interval=0, sweep_interval=0.05, prelogin_max_frame=1 << 20
    )
    async with await AsyncClient.connect(*server.address) as client:
        peer = await RawPeer.connect(server.address)
        # Whole frames arriving now and then reset nothing here: the pending one counts.
        peer.send(encode_frame(10, 0, 1, EchoRequest(data=b"z").SerializeToString())[:5])
        frames = await peer.read_until_closed()
        error = Error.FromString(frames[-1].payload)
        assert error.code == ErrorCode.IDLE_TIMEOUT and "not finished" in error.message
        assert server.stats.close_reasons[CloseReason.FRAME_TIMEOUT] == 1
        # Many frames in flight one after another are never "one unfinished frame".
        big = EchoRequest(data=b"w" * 50_000)
        for _ in range(20):
            assert (await client.call(big, EchoReply)).data == big.data
            await asyncio.sleep(0.03)
        assert not client.closed
        await peer.close()


async def test_tickwire_client_answers_server_pings_without_showing_them(
    start_server: StartServer,
) -> None:
    server = await start_server(**HEARTBEATS)
    out = io.StringIO()
    session = await Session.connect(*server.address, JsonPrinter(out), timeout=5)
    try:
        await asyncio.sleep(1.2)  # twice past the cut of a peer that does not answer
        assert await run_lines(session, ["ping"], echo=False) == EXIT_OK
    finally:
        await session.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [event["type"] for event in events] == ["connected", "pong"]
    assert not server.stats.close_reasons


async def test_a_peer_that_sends_without_reading_still_meets_the_auth_timeout(
    start_server: StartServer,
) -> None:
    server = await start_server(
        auth_timeout=1,
        sweep_interval=0.05,
        slow_consumer_timeout=60,
        slow_consumer_bytes=256 << 20,
        trust_loopback=False,
        # Large frames and unread replies before login: the pre-login budgets are raised
        # so that only the auth timeout ends it.
        prelogin_max_frame=1 << 20,
        prelogin_output_bytes=256 << 20,
    )
    peer = await RawPeer.connect(server.address)
    try:
        echo = encode_frame(10, 0, 1, EchoRequest(data=b"p" * 60_000).SerializeToString())
        async with asyncio.timeout(20):
            while not server.stats.writes_paused:  # replies it never reads: writes pause
                for _ in range(10):
                    peer.send(echo)
                await asyncio.sleep(0.01)
            while not server.stats.close_reasons:
                await asyncio.sleep(0.05)
        assert dict(server.stats.close_reasons) == {CloseReason.AUTH_TIMEOUT: 1}
    finally:
        peer.writer.transport.abort()
