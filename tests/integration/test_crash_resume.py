"""No silent loss after a crash: a real `tickwire serve` (the chat example) killed with
SIGKILL while a session it held was being pushed to; the Resume on the next process
says push_gap, and new pushes are numbered above what the client saw. On both stores:
Redis (the test session's redis-server) and memory with a snapshot file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from google.protobuf.message import Message

from examples.chat.chat_pb2 import JoinRequest, SayRequest
from protocol.frame import Flags, Frame
from protocol.proto.system_pb2 import LoginReply, LoginRequest, ResumeReply, ResumeRequest
from protocol.registry import declared_id
from server import Server, ServerConfig
from server.store.memory import decode_snapshot
from tests.hostile.harness import users_file
from tests.integration.rawclient import RawPeer
from tests.integration.test_push import USERS, push_app, raw_login
from tests.proto import testapp_pb2 as pb
from tests.serveproc import spawn_serve

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def msg_id(message: Message) -> int:
    found = declared_id(message.DESCRIPTOR)
    assert found is not None
    return found


async def ask(peer: RawPeer, seq: int, message: Message, frames: int = 1) -> list[Frame]:
    """Send a request; the `frames` frames that come back (pushes ahead of the reply)."""
    if isinstance(message, LoginRequest):
        mid = 6
    elif isinstance(message, ResumeRequest):
        mid = 13
    else:
        mid = msg_id(message)
    peer.send_frame(mid, 0, seq, message.SerializeToString())
    return await peer.read_frames(frames)


def pushes(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.flags & Flags.PUSH]


def serve_args(tmp_path: Path, store: str, redis_url: str | None) -> list[str]:
    args = ["--set", f"users_file={users_file(tmp_path, PASSWORDS)}"]
    if store == "redis":
        assert redis_url is not None
        return [*args, "--set", "store=redis", "--set", f"redis_url={redis_url}"]
    return [
        *args,
        "--set",
        f"store_snapshot_path={tmp_path / 'store.snap'}",
        "--set",
        "store_snapshot_interval=0.1",
    ]


async def disconnected(tmp_path: Path, redis_url: str | None, sid: str) -> None:
    """Wait until the store (Redis, or the memory store's snapshot file) has the session
    written as disconnected, with its push sequence: from then on, what the record says
    is exactly what the client saw, and only the fix can tell that more was pushed."""
    key = f"tw:session:{sid}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        record: dict[str, bytes] = {}
        if redis_url is not None:
            client = redis.Redis.from_url(redis_url)
            try:
                record = {k.decode(): v for k, v in client.hgetall(key).items()}
            finally:
                client.close()
        else:
            try:
                snapshot = decode_snapshot((tmp_path / "store.snap").read_bytes())
            except (FileNotFoundError, ValueError):
                pass
            else:
                if key in snapshot.keys:
                    value = snapshot.values[snapshot.keys.index(key)]
                    assert isinstance(value, dict)
                    record = value
        if record.get("conn") == b"" and "pseq" in record:
            assert int(record["pseq"]) == 6  # what alice saw, nothing more
            return
        if loop.time() > deadline:
            raise AssertionError(f"{key} not stored as disconnected within 10 s: {record}")
        await asyncio.sleep(0.05)


async def crash_and_resume(tmp_path: Path, store: str, redis_url: str | None) -> None:
    """The issue's case: alice saw some pushes, disconnected, was pushed 12 more, and the
    server was killed; her Resume on the next process must say push_gap."""
    args = serve_args(tmp_path, store, redis_url)
    proc, address = await spawn_serve(*args)
    alice = await RawPeer.connect(address)
    bob = await RawPeer.connect(address)
    try:
        [reply] = await ask(alice, 1, LoginRequest(user="alice", password="alice-pw"))
        login = LoginReply.FromString(reply.payload)
        await ask(alice, 2, JoinRequest(room="lobby"))
        await ask(bob, 1, LoginRequest(user="bob", password="bob-pw"))
        await ask(bob, 2, JoinRequest(room="lobby"))
        # bob's join and 5 lines reach alice: pushes 1..6
        for n in range(5):
            await ask(bob, 3 + n, SayRequest(room="lobby", text=f"early {n}"), frames=2)
        seen_frames = pushes(await alice.read_frames(6))
        seen = max(f.seq for f in seen_frames)
        assert seen == 6
        await alice.close()
        await disconnected(tmp_path, redis_url, login.session_id)
        # 12 lines alice's waiting session is pushed and never gets: the crash takes them
        # (5 + 12 stays within the chat example's Say burst of 20 per user)
        for n in range(12):
            await ask(bob, 10 + n, SayRequest(room="lobby", text=f"late {n}"), frames=2)
    finally:
        await bob.close()
        proc.kill()
        await proc.wait()

    proc, address = await spawn_serve(*args)
    again = await RawPeer.connect(address)
    bob = await RawPeer.connect(address)
    try:
        [frame] = await ask(again, 1, ResumeRequest(token=login.token, last_push_seq=seen))
        assert frame.msg_id == 14, frame
        resumed = ResumeReply.FromString(frame.payload)
        assert resumed.session_id == login.session_id
        assert resumed.push_gap  # 12 pushes died with the process: the client must know
        assert resumed.last_push_seq >= seen
        await ask(again, 2, JoinRequest(room="lobby"))
        await ask(bob, 1, LoginRequest(user="bob", password="bob-pw"))
        await ask(bob, 2, JoinRequest(room="lobby"))
        [joined] = await again.read_frames(1)  # bob's MemberJoined
        assert joined.flags & Flags.PUSH and joined.seq > seen  # not dropped as a repeat
    finally:
        await again.close()
        await bob.close()
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_resume_after_kill_9_reports_push_gap(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    await crash_and_resume(tmp_path, store, url)


async def test_a_resume_elsewhere_numbers_new_pushes_above_what_the_client_saw(
    redis_url: str,
) -> None:
    """Node a held the session (and pushed 5,000 times, unsaved); node b rebuilds it from
    the record: its pushes must go on above the client's 5,000, or the client drops them
    as repeats, and the reply must say push_gap."""
    config = ServerConfig(host="127.0.0.1", port=0, store="redis", redis_url=redis_url)
    a, b = (Server(push_app(), config=config, authenticator=USERS) for _ in range(2))
    await a.start()
    await b.start()
    try:
        peer = await RawPeer.connect(a.address)
        [reply] = await raw_login(peer, "alice")
        token = LoginReply.FromString(reply.payload).token
        other = await RawPeer.connect(b.address)
        other.send_frame(
            13, 0, 1, ResumeRequest(token=token, last_push_seq=5000).SerializeToString()
        )
        [frame] = await other.read_frames(1)
        resumed = ResumeReply.FromString(frame.payload)
        assert resumed.push_gap and resumed.last_push_seq == 5000
        assert b.push("alice", pb.SleepReply(tag=1)) == 1
        [push] = await other.read_frames(1)
        assert push.seq == 5001
        await peer.close()
        await other.close()
    finally:
        await a.stop(timeout=1)
        await b.stop(timeout=1)


async def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        if loop.time() > deadline:
            raise AssertionError(f"{path} not written within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("append_only", [True, False])
async def test_a_login_after_the_last_snapshot_survives_kill_9_with_the_append_only_log(
    tmp_path: Path, append_only: bool
) -> None:
    """The issue's case: a login made after the last snapshot is gone after a kill -9
    on the memory store; with store_append_only it comes back."""
    snapshot = tmp_path / "store.snap"
    args = [
        "--set",
        f"users_file={users_file(tmp_path, PASSWORDS)}",
        "--set",
        f"store_snapshot_path={snapshot}",
        "--set",
        "store_snapshot_interval=3600",
        "--set",
        f"store_append_only={'true' if append_only else 'false'}",
        "--set",
        "store_append_fsync=0.1",
    ]
    proc, address = await spawn_serve(*args)
    try:
        peer = await RawPeer.connect(address)
        [reply] = await ask(peer, 1, LoginRequest(user="alice", password="alice-pw"))
        login = LoginReply.FromString(reply.payload)
        await peer.close()
        if append_only:
            await wait_for_file(snapshot.with_name("store.snap.aof.0"))
        else:
            assert not snapshot.exists()  # no snapshot since the start, and no log
    finally:
        proc.kill()
        await proc.wait()
    proc, address = await spawn_serve(*args)
    again = await RawPeer.connect(address)
    try:
        [frame] = await ask(again, 1, ResumeRequest(token=login.token))
        if append_only:
            assert frame.msg_id == 14
            resumed = ResumeReply.FromString(frame.payload)
            assert resumed.session_id == login.session_id and resumed.push_gap
        else:
            assert frame.msg_id == 3  # Error: UNAUTHENTICATED, the session died with it
    finally:
        await again.close()
        proc.kill()
        await proc.wait()
