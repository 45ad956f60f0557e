"""The demo authenticator: scrypt hashes, the users file and `tickwire users`."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from server.auth import (
    MemoryUsers,
    PasswordPool,
    UsersFile,
    UsersFileError,
    add_user,
    hash_password,
    load_users_file,
    verify_password,
)
from server.errors import HandlerError
from server.store import MemoryStore
from tools.cli import main as tickwire


def test_hash_carries_its_cost_and_verifies() -> None:
    encoded = hash_password("pw", n=16, r=1, p=1)
    assert encoded.startswith("scrypt$16$1$1$")
    assert verify_password("pw", encoded)
    assert not verify_password("pw2", encoded)
    assert hash_password("pw", n=16) != hash_password("pw", n=16)  # salted


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$16$1$1$AAAA$AAAA",
        "scrypt$15$1$1$AAAA$" + "A" * 44,  # n not a power of two
        "scrypt$16$1$1$!!!$" + "A" * 44,  # bad base64
        "scrypt$16$1$1$AAAA$AAAA",  # hash too short
        "scrypt$4194304$8$1$AAAA$" + "A" * 44,  # n beyond the cap: no 4 GiB allocation
    ],
)
def test_a_malformed_hash_never_matches(encoded: str) -> None:
    assert not verify_password("pw", encoded)


async def test_users_file_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    assert add_user(path, "alice", "a", n=16)
    assert add_user(path, "bob", "b", n=16)
    assert not add_user(path, "alice", "a2", n=16)  # replaced, not duplicated
    users = UsersFile(path)
    assert list(users.users) == ["alice", "bob"]
    assert await users.authenticate("alice", "a2", "") == "alice"
    assert await users.authenticate("alice", "a", "") is None
    assert await users.authenticate("nobody", "a2", "") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice\n", ":1: expected NAME:HASH"),
        ("# c\n\nalice:plain\n", ":3: user 'alice': expected scrypt$"),
        (f"a:{hash_password('x', n=16)}\na:{hash_password('y', n=16)}\n", "listed twice"),
    ],
)
def test_a_bad_users_file_names_the_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "users.txt"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=problem.replace("$", r"\$")):
        load_users_file(path)


def test_unreadable_users_files(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read users file"):
        load_users_file(tmp_path / "missing.txt")
    binary = tmp_path / "users.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsersFileError, match="not UTF-8"):
        load_users_file(binary)


@pytest.mark.parametrize("name", ["", "a:b", " a", "a\nb"])
def test_add_user_refuses_names_the_file_cannot_hold(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsersFileError):
        add_user(tmp_path / "users.txt", name, "pw", n=16)


async def test_memory_users() -> None:
    users = MemoryUsers({"alice": "pw"})
    assert await users.authenticate("alice", "pw", "phone") == "alice"
    assert await users.authenticate("alice", "px", "phone") is None
    assert await users.authenticate("bob", "pw", "phone") is None


def test_users_command_adds_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.txt"
    args = ["users", "add", str(path), "carol", "--password", "pw", "--scrypt-n", "16"]
    assert tickwire(args) == 0
    assert tickwire(["users", "list", str(path)]) == 0
    out = capsys.readouterr().out
    assert "added carol" in out and out.strip().endswith("carol")
    assert verify_password("pw", load_users_file(path)["carol"])
    assert tickwire(["users", "add", str(path), "dave", "--password", "pw", "--scrypt-n", "3"]) == 2
    assert "dave" not in load_users_file(path)
    assert tickwire(["users", "add", str(path), "a:b", "--password", "pw"]) == 2


def test_demo_users_file_loads() -> None:
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo-users.txt"
    assert sorted(load_users_file(demo)) == ["alice", "bob", "carol"]
    assert verify_password("demo-alice", load_users_file(demo)["alice"])


async def test_released_snapshot_is_not_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = MemoryStore(path=path)
    await store.start()
    await store.set("k", b"v")
    store.release_snapshot()
    await store.close()
    assert not path.exists()


async def test_the_password_pool_sheds_past_its_queue_at_once() -> None:
    pool = PasswordPool(threads=1, queue=1)
    release = threading.Event()
    checks = [asyncio.create_task(pool.run(release.wait)) for _ in range(2)]
    await asyncio.sleep(0)  # both started: one on the thread, one queued
    assert pool.in_flight == 2
    with pytest.raises(HandlerError) as info:
        await pool.run(release.wait)
    assert info.value.code == ErrorCode.OVERLOADED
    assert "password checks are busy: retry after" in info.value.message
    assert pool.shed == 1
    release.set()
    assert await asyncio.gather(*checks) == [True, True]
    assert await pool.run(lambda: "room again") == "room again"
    pool.close()


async def test_users_file_checks_on_its_bounded_pool(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "ann", "pw", n=1 << 12)
    users = UsersFile(path, threads=1, queue=1)
    results = await asyncio.gather(
        *(users.authenticate("ann", "pw", "") for _ in range(5)), return_exceptions=True
    )
    assert results[:2] == ["ann", "ann"]
    assert all(isinstance(r, HandlerError) and r.code == ErrorCode.OVERLOADED for r in results[2:])
    assert await users.authenticate("ann", "pw", "") == "ann"
    users.pool.close()
