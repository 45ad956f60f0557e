"""The restore bench: how long `tickwire serve` takes to come back with N sessions in a
memory-store snapshot, and proof that they did come back.

    tickwire bench restore --sessions 100000

1. Make the snapshot: an in-process `SessionManager` on a `MemoryStore` logs in N users
   (one session each, the same code path a LoginRequest takes after the password check),
   then each session's connection "closes", as a stopping server closes them all: the
   sessions are disconnected and wait for a Resume. Closing the store writes the file.
2. Rounds: start `tickwire serve` with a snapshot path that holds no file (the cost of a
   start without a restore: interpreter, imports, binding), then with a fresh copy of the
   snapshot; each time, the seconds from starting the process to its "listening" line,
   which the server prints only once the store is restored and it accepts connections.
3. With the snapshot: resume a random sample of the sessions over the wire, each on a
   new connection with its token (ResumeRequest), and expect the ResumeReply of that very
   session; and send a made-up token, which must be refused with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import msgspec
import uvloop

from bench.proc import ServerProcess, rss_kib, server_command
from bench.results import RestoreReport
from bench.serverside.snapshot import SampledSession, build_snapshot
from bench.wire import FrameClient, ServerError, WireError
from bench.workers import ERROR_SAMPLES
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import ResumeReply, ResumeRequest

_RESTORED = re.compile(r"store snapshot restored .*keys=(\d+) expired=(\d+)")
_RESUME_CONCURRENCY = 50
_CONNECT_TIMEOUT_S = 10.0
TARGET_S = 2.0


class RestoreParams(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int = 100_000
    #: Sessions resumed over the wire per round.
    sample: int = 200
    rounds: int = 3
    seed: int = 0


class ResumeResult(NamedTuple):
    resumed: int
    bogus_refused: bool
    problems: list[str]


async def resume_sample(host: str, port: int, sample: list[SampledSession]) -> ResumeResult:
    """Resume every sampled session on a connection of its own; then a made-up token."""
    gate = asyncio.Semaphore(_RESUME_CONCURRENCY)

    async def one(session: SampledSession) -> str | None:
        async with gate:
            try:
                client = await FrameClient.connect(host, port, timeout=_CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                return f"connect: {type(exc).__name__}: {exc}"
            try:
                reply = await client.call(ResumeRequest(token=session.token), ResumeReply)
            except WireError as exc:
                return f"resume of {session.user}: {exc}"
            finally:
                await client.close()
            if reply.user_id != session.user or reply.session_id != session.session_id:
                return (
                    f"resume of {session.user}/{session.session_id} answered "
                    f"{reply.user_id}/{reply.session_id}"
                )
            return None

    problems = [p for p in await asyncio.gather(*(one(s) for s in sample)) if p is not None]
    resumed = len(sample) - len(problems)
    bogus_refused = False
    try:
        client = await FrameClient.connect(host, port, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        problems.append(f"connect: {type(exc).__name__}: {exc}")
    else:
        try:
            reply = await client.call(ResumeRequest(token=secrets.token_urlsafe(32)), ResumeReply)
            problems.append(f"a made-up token resumed session {reply.session_id}")
        except ServerError as exc:
            bogus_refused = exc.code == ErrorCode.UNAUTHENTICATED
            if not bogus_refused:
                problems.append(f"a made-up token: {exc}")
        except WireError as exc:
            problems.append(f"a made-up token: {exc}")
        finally:
            await client.close()
    return ResumeResult(resumed, bogus_refused, problems)


class _Start(NamedTuple):
    seconds: float
    rss_kib: int | None
    restored: tuple[int, int] | None
    resume: ResumeResult | None


def _start_once(cmd: list[str], sample: list[SampledSession] | None) -> _Start:
    server = ServerProcess(cmd, start_timeout=120.0)
    t0 = time.monotonic()
    with server:
        seconds = time.monotonic() - t0
        rss = rss_kib(server.pid)
        match = _RESTORED.search(server.tail())
        restored = (int(match.group(1)), int(match.group(2))) if match else None
        resume = None
        if sample is not None:
            resume = uvloop.run(resume_sample(server.host, server.port, sample))
    return _Start(seconds, rss, restored, resume)


def run_restore(
    params: RestoreParams, workdir: Path, *, host: str, log: Callable[[str], None]
) -> RestoreReport:
    """Build the snapshot in `workdir`, then `params.rounds` rounds of an empty start and a
    restoring start of `tickwire serve`."""
    pristine = workdir / "sessions.snapshot"
    log(f"making {params.sessions:,} sessions in a memory store (in-process SessionManager)")
    built = uvloop.run(build_snapshot(pristine, params.sessions, params.sample, seed=params.seed))
    log(
        f"snapshot: {built.size / 1e6:,.1f} MB, {built.keys:,} keys; sessions made in "
        f"{built.build_s:.1f} s, written in {built.write_s:.1f} s"
    )
    base = server_command("tickwire", host)
    live = workdir / "restore.snapshot"
    absent = workdir / "absent.snapshot"
    starts: list[_Start] = []
    empties: list[_Start] = []
    for round_no in range(1, params.rounds + 1):
        absent.unlink(missing_ok=True)
        log(f"round {round_no}/{params.rounds}: tickwire serve, no snapshot file")
        empties.append(_start_once([*base, "--set", f"store_snapshot_path={absent}"], None))
        shutil.copyfile(pristine, live)  # the server rewrites its snapshot when it stops
        log(f"round {round_no}/{params.rounds}: tickwire serve, restoring the snapshot")
        starts.append(_start_once([*base, "--set", f"store_snapshot_path={live}"], built.sample))
    last = starts[-1]
    problems = [p for s in starts if s.resume is not None for p in s.resume.problems]
    return RestoreReport(
        host=host,
        sessions=params.sessions,
        snapshot_bytes=built.size,
        snapshot_keys=built.keys,
        build_s=built.build_s,
        write_s=built.write_s,
        start_s=[s.seconds for s in starts],
        empty_start_s=[s.seconds for s in empties],
        start_median_s=_median([s.seconds for s in starts]),
        empty_start_median_s=_median([s.seconds for s in empties]),
        restored_keys=last.restored[0] if last.restored else None,
        expired_keys=last.restored[1] if last.restored else None,
        rss_kib=last.rss_kib,
        empty_rss_kib=empties[-1].rss_kib,
        resume_sample=sum(len(built.sample) for _ in starts),
        resumed=sum(s.resume.resumed for s in starts if s.resume is not None),
        bogus_refused=all(s.resume is not None and s.resume.bogus_refused for s in starts),
        target_s=TARGET_S,
        error_samples=problems[:ERROR_SAMPLES],
    )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
