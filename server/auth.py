"""Authenticators: whose credentials a LoginRequest carries.

The server asks its `Authenticator` once per login and trusts the user id it answers;
tokens, resume and duplicate logins are the session layer's business (server/sessions.py),
so an authenticator backed by a database or an SSO service only has to say who this is.

Two ship with tickwire:

- `UsersFile`: the demo one `make run` uses. One ``name:scrypt$...`` line per user;
  `tickwire users add FILE NAME` writes them. Each hash carries its own scrypt cost, so a
  load test can use cheap hashes without changing the code that checks them.
- `MemoryUsers`: a dict of names and passwords, for tests and embedded tools.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from protocol.errors import ErrorCode
from server.errors import HandlerError, retry_text

T = TypeVar("T")

#: scrypt cost of new hashes: n=2**14, r=8 (16 MiB), the usual interactive-login setting
#: (its time: docs/bench.md, "Figures behind the server's design"). Checked off the event
#: loop, in a PasswordPool thread.
DEFAULT_N, DEFAULT_R, DEFAULT_P = 1 << 14, 8, 1
_SCHEME = "scrypt"
_MAX_N = 1 << 20


class Authenticator(Protocol):
    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        """The user id the credentials belong to, or None when they are wrong.

        Raising is for "cannot tell" (a database down): the login gets INTERNAL and the
        exception is logged, which a wrong password must never cause. A HandlerError
        keeps its code: UsersFile's OVERLOADED when its password pool is full."""
        ...


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file and line."""


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """``scrypt$n$r$p$salt$hash`` (salt and hash in base64): the cost travels with the hash."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(
        (_SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)),
    )


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (constant-time compare). A malformed hash is
    never a match."""
    try:
        n, r, p, salt, expected = _parse_hash(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must cover 128*r*n bytes plus scrypt's own use, or OpenSSL refuses big n.
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * r * n + (1 << 20)
    )


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError(f"expected scrypt$n$r$p$salt$hash, got {encoded[:20]!r}...")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise ValueError(f"bad number or base64 in the hash: {exc}") from None
    if n < 2 or n > _MAX_N or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError(f"scrypt cost n={n} r={r} p={p} out of range (n a power of 2 <= 2**20)")
    if not salt or len(digest) != 32:
        raise ValueError("empty salt or a hash that is not 32 bytes")
    return n, r, p, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PasswordPool:
    """A few threads for password checks, with a bounded queue that sheds at once.

    scrypt is made to be slow: a flood of logins queued on an unbounded executor makes a
    right login wait behind all of them (minutes under a flood). Here at most `threads`
    checks run and `queue` wait; one more raises HandlerError OVERLOADED whose message
    says when to retry (the checks ahead of it, at the average check time lately), so the
    client backs off instead of waiting.
    """

    def __init__(self, threads: int = 0, queue: int = 64) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.limit = self.threads + queue
        #: Checks running or waiting for a thread.
        self.in_flight = 0
        self.shed = 0
        #: Moving average of one check's seconds, for the retry hint.
        self.check_time = 0.05
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.in_flight >= self.limit:
            self.shed += 1
            # The checks ahead of this one, `threads` at a time, at the recent check time.
            rounds = (self.in_flight - self.threads) // self.threads + 1
            raise HandlerError(
                ErrorCode.OVERLOADED,
                "password checks are busy: " + retry_text(rounds * self.check_time),
            )
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="tickwire-login")

        def timed() -> T:
            began = time.perf_counter()
            result = fn(*args)
            # A float store from a pool thread: a lost update only skews the hint.
            self.check_time += (time.perf_counter() - began - self.check_time) * 0.2
            return result

        self.in_flight += 1
        try:
            # Cancelled (the handler's deadline) while queued, the check never runs.
            return await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class UsersFile:
    """Users from a text file: ``name:scrypt$n$r$p$salt$hash`` per line, ``#`` comments.

    Read once, when built: a bad line fails the server's start naming the line, instead of
    locking that user out later. The user id is the name.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, queue: int = 64) -> None:
        self.path = Path(path)
        self.users = load_users_file(self.path)
        self.pool = PasswordPool(threads, queue)
        # Unknown names are checked against this, so a wrong name costs the same time as
        # a wrong password and the timing does not tell which names exist.
        self._decoy = hash_password(secrets.token_hex(8))

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        encoded = self.users.get(user)
        ok = await self.pool.run(verify_password, password, encoded or self._decoy)
        return user if ok and encoded is not None else None


def load_users_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsersFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise UsersFileError(f"{path}:{number}: expected NAME:HASH")
        try:
            _parse_hash(encoded.strip())
        except ValueError as exc:
            raise UsersFileError(f"{path}:{number}: user {name!r}: {exc}") from None
        if name in users:
            raise UsersFileError(f"{path}:{number}: user {name!r} is listed twice")
        users[name] = encoded.strip()
    return users


def add_user(path: Path, name: str, password: str, *, n: int = DEFAULT_N) -> bool:
    """Add `name` to the users file (created if missing) or replace its hash.
    Returns True when the user was new."""
    if not name or ":" in name or name != name.strip() or "\n" in name:
        raise UsersFileError(
            f"user name {name!r}: must be non-empty, without ':', newlines or surrounding spaces"
        )
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    entry = f"{name}:{hash_password(password, n=n)}"
    new = True
    for i, line in enumerate(lines):
        if line.partition(":")[0].strip() == name and not line.lstrip().startswith("#"):
            lines[i] = entry
            new = False
    if new:
        lines.append(entry)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return new


class MemoryUsers:
    """Users from a dict of name -> password (tests, embedded tools). Compared in constant
    time; the user id is the name."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        expected = self.users.get(user)
        if expected is None:
            return None
        return user if hmac.compare_digest(expected.encode(), password.encode()) else None
