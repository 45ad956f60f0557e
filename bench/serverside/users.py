"""Users files for the benches that log in (login, fanout), hashed as the server hashes."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.login import LoginUser
from bench.proc import available_cpus
from server.auth import hash_password


def make_users(conns: int, scrypt_n: int, path: Path) -> list[LoginUser]:
    """`conns` users with random passwords, written to the users file at `path` with
    their hashes at scrypt cost `scrypt_n` (hashed in threads: scrypt releases the GIL)."""
    tag = secrets.token_hex(3)  # runs against one Redis never share a user
    users = [LoginUser(f"bench-{tag}-{i}", secrets.token_urlsafe(12)) for i in range(conns)]
    with ThreadPoolExecutor(max(1, len(available_cpus()))) as pool:
        hashes = list(pool.map(lambda u: hash_password(u.password, n=scrypt_n), users))
    lines = [f"{u.name}:{h}" for u, h in zip(users, hashes, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return users
