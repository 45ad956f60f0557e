"""The login bench: how many logins per second the server completes, and how long each takes.

    tickwire bench login --conns 50 --duration 5
    tickwire bench login --conns 50 --duration 5 --scrypt-n 16
    tickwire bench login --conns 50 --duration 5 --store redis --redis-url redis://127.0.0.1:6379/15

The parent writes a users file (one user per connection, each with its own password,
hashed with `server.auth.hash_password` at `--scrypt-n`) and spawns `tickwire serve` on
it (`bench.runner.bench_login`). Every connection then logs in as its own user, again and
again, closed loop: the next LoginRequest when the previous LoginReply came. A login on a
connection that already holds a session ends that session first (server.sessions:
`login` logs the old one out), so every iteration is a whole login: the password check,
the duplicate-login lookup, the old session's keys deleted, a new token and session
written. One round trip per login, so the latency is that of a login alone; a client that
logs in once per connection pays a little less (no old session to delete).

Every reply is checked: a LoginReply to that request's seq, for that user, with a token,
a session id unlike the previous one, and an expiry in the future. Anything else (an
Error, a GoAway, a closed connection, another frame) is an error, counted and sampled.

After the window every connection sends a LogoutRequest (not measured), so a Redis the
bench used is left without the bench's sessions or tokens.

Measurement (HdrHistogram per process, merged; the window; CPU of the server, the
generators and the rest of the machine) is `bench.load`'s, as for echo and scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection
from pathlib import Path

import msgspec

from bench.load import (
    Driven,
    LoadTotals,
    RunParams,
    drive,
    now_us,
    quota_of,
    run_loops,
    summarize_driven,
    wait_for_start,
)
from bench.proc import Endpoint
from bench.progress import ProgressSink
from bench.results import EchoRun, WorkerEchoResult
from bench.wire import Closed, FrameClient, WireError
from bench.workers import ERROR_SAMPLES, BenchError, Share, run_worker, split
from protocol.proto.system_pb2 import LoginReply, LoginRequest, LogoutReply, LogoutRequest

_CONNECT_TIMEOUT_S = 10.0
#: After the window: how long in-flight logins may take to return before they are
#: cancelled (not counted either way). A production-cost scrypt queue can be seconds long.
_DRAIN_S = 30.0
_LOGOUT_TIMEOUT_S = 10.0

#: The scrypt cost of production hashes (server.auth.DEFAULT_N), the default.
PRODUCTION_SCRYPT_N = 1 << 14


class LoginUser(msgspec.Struct, frozen=True, array_like=True):
    name: str
    password: str


class LoginParams(RunParams, frozen=True, kw_only=True):
    #: One user per connection, in connection order over all processes.
    users: list[LoginUser]
    device: str = "bench"


def first_conn(conns: int, procs: int, index: int) -> int:
    """Number of the first connection of process `index`, over all processes."""
    return sum(split(conns, procs)[:index])


def check_reply(reply: LoginReply, user: str, previous_session: str) -> str | None:
    """What is wrong with `reply` to a login of `user` (None: nothing)."""
    if reply.user_id != user:
        return f"LoginReply for user {reply.user_id!r}, expected {user!r}"
    if not reply.token or not reply.session_id:
        return "LoginReply without a token or a session id"
    if reply.session_id == previous_session:
        return f"LoginReply repeats the previous session id {previous_session!r}"
    if reply.expires_at_ms <= time.time_ns() // 1_000_000:
        return f"LoginReply token already expired ({reply.expires_at_ms})"
    return None


async def _login_worker(pipe: Connection, share: Share, params: LoginParams) -> WorkerEchoResult:
    totals = LoadTotals(quota_of(params, share))
    samples: list[str] = []
    gate = asyncio.Semaphore(max(1, share.connect_concurrency))

    async def connect() -> FrameClient | None:
        async with gate:
            try:
                return await FrameClient.connect(share.host, share.port, timeout=_CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                if len(samples) < ERROR_SAMPLES:
                    samples.append(f"connect: {type(exc).__name__}: {exc}")
                return None

    first = first_conn(params.conns, params.procs, share.index)
    opened = await asyncio.gather(*(connect() for _ in range(share.conns)))
    pairs = [
        (client, params.users[first + i]) for i, client in enumerate(opened) if client is not None
    ]
    pipe.send(("ready", len(pairs)))
    window = await wait_for_start(pipe)
    if window is None:
        await asyncio.gather(*(c.close() for c, _ in pairs))
        raise BenchError("parent aborted the run")
    totals.open_window(window)
    #: Connections that hold a session and can still be spoken to: logged out at the end.
    logged_in: set[FrameClient] = set()

    async def loop_one(client: FrameClient, user: LoginUser) -> None:
        request = LoginRequest(user=user.name, password=user.password, device=params.device)
        previous = ""
        while totals.running:
            started = now_us()
            totals.sent += 1
            try:
                reply = await client.call(request, LoginReply)
            except Closed as exc:
                logged_in.discard(client)
                if totals.running:
                    totals.error(f"{user.name}: {exc}")
                return
            except WireError as exc:
                # An Error answer leaves the connection usable; anything else does not.
                totals.error(f"{user.name}: {exc}")
                if type(exc) is WireError:
                    logged_in.discard(client)
                    return
                continue
            now = now_us()
            logged_in.add(client)
            problem = check_reply(reply, user.name, previous)
            previous = reply.session_id
            if problem is None:
                totals.record(started, now)
            else:
                totals.answered += 1
                totals.error(f"{user.name}: {problem}")

    cut = await run_loops(pipe, totals, window, [loop_one(c, u) for c, u in pairs], _DRAIN_S)
    for i in cut:
        logged_in.discard(pairs[i][0])  # a reply may be on its way: the stream is unusable

    async def logout(client: FrameClient) -> None:
        with contextlib.suppress(WireError, TimeoutError):
            await asyncio.wait_for(client.call(LogoutRequest(), LogoutReply), _LOGOUT_TIMEOUT_S)

    await asyncio.gather(*(logout(c) for c in logged_in))
    for client, _ in pairs:
        await client.close()
    return totals.result(
        connections=len(pairs),
        connect_errors=share.conns - len(pairs),
        connect_samples=samples,
    )


def login_worker(pipe: Connection, share: Share, params: LoginParams) -> None:
    """Entry point of one login load-generator process."""
    run_worker(pipe, share.cpus, lambda: _login_worker(pipe, share, params))


def run_login(
    params: LoginParams,
    server: Endpoint,
    *,
    target: str,
    store: str,
    scrypt_n: int,
    round_no: int = 1,
    client_cpus: list[int] | None = None,
    progress: ProgressSink | None = None,
    store_pid: int | None = None,
) -> EchoRun:
    """One measured login run against a server that is listening and knows the users.
    `store_pid`: the local redis-server, whose CPU is read over the window."""
    if len(params.users) < params.conns:
        raise BenchError(f"{params.conns} connections need {params.conns} users")
    driven: Driven = drive(
        login_worker,
        params,
        server,
        client_cpus=client_cpus,
        progress=progress,
        label=f"login ({store}, scrypt n={scrypt_n}) {target}",
        helper_pid=store_pid,
    )
    run = summarize_driven(
        driven,
        params=params,
        target=target,
        round_no=round_no,
        client_cpus=client_cpus,
        mode="login",
    )
    return msgspec.structs.replace(
        run, store=store, scrypt_n=scrypt_n, store_cpu_pct=driven.helper_cpu_pct
    )


def local_redis_pid(url: str) -> int | None:
    """The pid of the redis-server at `url` when it runs on this machine (its INFO names
    a pid that /proc shows as a redis-server), else None. Never raises: the server's own
    start reports a Redis that cannot be reached."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            info = client.info("server")
        pid = int(info["process_id"])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (redis.RedisError, OSError, KeyError, TypeError, ValueError):
        return None
    return pid if comm.startswith("redis") else None
