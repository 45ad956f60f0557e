"""Floods against a real `tickwire serve`: pipelined wrong logins, a wrong-password flood
at real scrypt cost, a chat Say flood; each with a well-behaved client beside it that
must be answered. Bounded in time by generous timeouts; nothing here asserts a latency."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient, Overloaded, RateLimited
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import JoinReply, JoinRequest, SayReply, SayRequest
from examples.chat.service import SAY_BURST
from protocol.errors import ErrorCode
from protocol.frame import FrameDecoder, encode_frame
from protocol.proto.system_pb2 import Error, LoginRequest
from protocol.registry import declared_id, system_registry
from tests.hostile.harness import bystander, hostile_server, users_file

LOGIN = declared_id(LoginRequest.DESCRIPTOR)
ERROR = declared_id(Error.DESCRIPTOR)
#: The production scrypt cost: the attack on the password check pays what it would.
REAL_COST = 1 << 14
USERS = {"alice": "right-a", "bob": "right-b"}
#: Generous: a request that waits this long has waited without bound, for a test.
PATIENCE = 60.0


def chat_client(address: tuple[str, int]) -> asyncio.Task[AsyncClient]:
    registry = system_registry([chat_pb2])
    return asyncio.ensure_future(AsyncClient.connect(*address, registry, timeout=PATIENCE))


async def attacker(address: tuple[str, int], frames: bytes, expect: int) -> list[tuple[int, int]]:
    """Write `frames` at once, then read until `expect` replies: (msg_id, error code)."""
    reader, writer = await asyncio.open_connection(*address)
    decoder = FrameDecoder(max_frame=1 << 24)
    got: list[tuple[int, int]] = []
    try:
        writer.write(frames)
        async with asyncio.timeout(PATIENCE * 2):
            while len(got) < expect:
                data = await reader.read(1 << 16)
                if not data:
                    break
                for frame in decoder.feed(data):
                    code = Error.FromString(frame.payload).code if frame.msg_id == ERROR else 0
                    got.append((frame.msg_id, code))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return got


def wrong_logins(count: int, user: str = "alice") -> bytes:
    assert LOGIN is not None
    return b"".join(
        encode_frame(
            LOGIN,
            0,
            seq,
            LoginRequest(user=f"{user}{seq}", password="wrong").SerializeToString(),
        )
        for seq in range(1, count + 1)
    )


@contextlib.asynccontextmanager
async def chat_user(address: tuple[str, int], user: str) -> AsyncIterator[AsyncClient]:
    client = await chat_client(address)
    try:
        await client.login(user, USERS[user], timeout=PATIENCE)
        await client.call(JoinRequest(room="lobby"), JoinReply, timeout=PATIENCE)
        yield client
    finally:
        await client.close()


async def test_pipelined_wrong_logins_leave_a_logged_in_users_requests_answered(
    tmp_path: Path,
) -> None:
    path = users_file(tmp_path, USERS, cost=REAL_COST)
    async with (
        hostile_server("--set", f"users_file={path}") as server,
        bystander(server.address) as pinger,
        chat_user(server.address, "bob") as bob,
    ):
        attack = [
            asyncio.create_task(attacker(server.address, wrong_logins(20), 20)) for _ in range(50)
        ]
        await asyncio.sleep(0.2)  # the attack is under way
        # Said while 50 connections hold the consumers with logins: each is answered.
        for n in range(5):
            reply = await bob.call(SayRequest(room="lobby", text=f"still here {n}"), SayReply)
            assert isinstance(reply, SayReply)
        replies = await asyncio.gather(*attack)
        assert server.alive
    pinger.check()
    codes = {code for got in replies for _, code in got}
    assert all(len(got) == 20 for got in replies)
    assert codes <= {ErrorCode.UNAUTHENTICATED, ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED}
    # The address lockout took over from the password checks.
    assert ErrorCode.RATE_LIMITED in codes


@pytest.mark.parametrize(
    "settings",
    [[], ["--set", "login_lockout=0"]],
    ids=["default", "no-throttle-only-the-pool"],
)
async def test_a_right_login_is_answered_during_a_wrong_password_flood(
    tmp_path: Path, settings: list[str]
) -> None:
    path = users_file(tmp_path, USERS, cost=REAL_COST)
    async with (
        hostile_server("--set", f"users_file={path}", *settings) as server,
        bystander(server.address) as pinger,
    ):
        attack = [
            asyncio.create_task(attacker(server.address, wrong_logins(1, f"u{n}-"), 1))
            for n in range(400)
        ]
        await asyncio.sleep(0.3)
        client = await chat_client(server.address)
        try:
            reply = await client.login("alice", USERS["alice"], timeout=PATIENCE)
            assert reply.user_id == "alice"
        except (Overloaded, RateLimited) as refused:
            # Refused at once with when to come back, never queued behind the flood.
            assert refused.retry_after is not None and refused.retry_after > 0
        finally:
            await client.close()
        replies = await asyncio.gather(*attack)
        assert server.alive
    pinger.check()
    codes = [code for got in replies for _, code in got]
    assert len(codes) == 400
    # Shed, not queued: the pool's OVERLOADED (and, once enough checks failed, the
    # address lockout's RATE_LIMITED).
    assert ErrorCode.OVERLOADED in codes
    assert set(codes) <= {ErrorCode.UNAUTHENTICATED, ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED}


async def test_a_say_flood_is_answered_rate_limited(tmp_path: Path) -> None:
    path = users_file(tmp_path, USERS)
    async with (
        hostile_server("--set", f"users_file={path}") as server,
        bystander(server.address) as pinger,
        chat_user(server.address, "alice") as alice,
        chat_user(server.address, "bob") as bob,
    ):
        text = "x" * 1000
        results = await asyncio.gather(
            *(
                alice.call(SayRequest(room="lobby", text=text), SayReply, timeout=PATIENCE)
                for _ in range(2000)
            ),
            return_exceptions=True,
        )
        limited = [r for r in results if isinstance(r, RateLimited)]
        said = [r for r in results if isinstance(r, SayReply)]
        assert len(limited) + len(said) == 2000, [
            r for r in results if not isinstance(r, (SayReply, RateLimited))
        ][:3]
        assert len(said) >= SAY_BURST and len(limited) > 1000
        assert all(r.retry_after is not None for r in limited)
        # Another user is not limited by alice's flood.
        await bob.call(SayRequest(room="lobby", text="mine"), SayReply, timeout=PATIENCE)
        assert server.alive
    pinger.check()
