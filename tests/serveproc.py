"""`tickwire serve` as a real process on a free port, for the tests that need one."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(rb"listening on ([\d.]+):(\d+)")


async def spawn_serve(
    *args: str, cwd: str | None = None, open_files: int | None = None
) -> tuple[asyncio.subprocess.Process, tuple[str, int]]:
    """`tickwire serve` on a free port; `open_files` sets its RLIMIT_NOFILE (soft and hard)."""

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    env = dict(os.environ)
    if cwd is not None:  # the project stays importable from elsewhere
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
        preexec_fn=limit_open_files,
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    async with asyncio.timeout(20):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError(f"server exited with {await proc.wait()} before listening")
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                break
    # Keep reading: a server logs a line per connection, and a full pipe would block it.
    reader = proc.stderr

    async def drain() -> None:
        while chunk := await reader.readline():
            lines.append(chunk)

    LOGS[proc] = (lines, asyncio.ensure_future(drain()))
    return proc, (match.group(1).decode(), int(match.group(2)))


#: Each spawned server's stderr lines so far, and the task that reads them.
LOGS: dict[asyncio.subprocess.Process, tuple[list[bytes], asyncio.Future[None]]] = {}


async def server_log(proc: asyncio.subprocess.Process) -> str:
    """Everything the server (and any successor sharing its stderr) wrote, once it is done."""
    lines, drained = LOGS.pop(proc)
    await asyncio.wait_for(drained, 10)
    return b"".join(lines).decode()
