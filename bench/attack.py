"""`tickwire bench attack`: what hostile peers cost the server and the clients beside them.

For each attack kind the bench starts a fresh `tickwire serve` (VmHWM, the peak resident
memory, is a process-lifetime figure, so a server that survived one attack would carry
its peak into the next), lets `hostile` connections attack it from a child process, and
meanwhile measures one well-behaved client from this process: a Ping every `interval`
on a logged-in connection (p50, p99, max, failures) and a fresh connection logging in
every `login_every` seconds (connect + login time). The same client is measured first on
the quiet server, in the same run, so the two columns compare like with like.

Attacks (issue 12, "Facing the internet"):

- ``unread``: each connection sends 1 MiB Echo frames as fast as the socket takes them and
  never reads a reply.
- ``partial``: each connection announces a 1 MiB frame, sends all of it but the last
  bytes, and holds it.
- ``logins``: each connection pipelines wrong-password logins for an existing user (the
  server runs scrypt for each), 8 in flight.
- ``slowloris``: each connection dribbles one byte of a Ping every `slowloris_interval`.
- ``flood``: each connection pipelines Pings and small Echos, 256 in flight, reading the
  replies.
- ``connect``: each worker opens a connection and closes it at once, over and over.

A connection the server closes is opened again: an attacker keeps attacking. The
attacker counts the answers it reads (by Error code) and the closes it sees. A server
whose resident memory passes `rss_limit_mib` is killed (the run says so): unbounded
attacks would otherwise take the machine with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bench.proc import Endpoint, ServerProcess, rss_kib, server_command
from bench.wire import FrameClient, WireError, code_name
from bench.workers import ERROR_SAMPLES, BenchError
from protocol.errors import closes_connection
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoRequest, Error, LoginReply, LoginRequest, Ping, Pong

if TYPE_CHECKING:
    from rich.table import Table

KINDS = ("unread", "partial", "logins", "slowloris", "flood", "connect")
#: The run on the server before any attack: the column the attacks are compared with.
QUIET = "quiet"


class AttackParams(msgspec.Struct, frozen=True, kw_only=True):
    kinds: list[str]
    hostile: int = 50
    #: Measured seconds per attack (and for the quiet run).
    duration: float = 10.0
    #: Seconds between the bystander's Pings.
    interval: float = 0.05
    #: Seconds between the bystander's fresh logins.
    login_every: float = 1.0
    #: A bystander request unanswered after this many seconds is a failure.
    timeout: float = 10.0
    #: The frames of `unread` and `partial`: the largest the default max_frame allows.
    frame_size: int = 1 << 20
    slowloris_interval: float = 2.0
    #: The server is killed past this resident memory (MiB).
    rss_limit_mib: int = 3072
    #: Extra `tickwire serve --set` config.
    settings: list[str] = []


class Credentials(msgspec.Struct, frozen=True):
    user: str
    password: str


class Users(msgspec.Struct, frozen=True, kw_only=True):
    """Who logs in. Two users for the well-behaved client, since a login replaces the
    user's other session (duplicate_login's default): `pinger` holds the connection
    that pings, `login` is logged in afresh every `login_every`; and the user whose
    password the logins attack guesses (`target`)."""

    pinger: Credentials | None = None
    login: Credentials | None = None
    target: str = ""


class BystanderResult(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    logins: int
    login_failures: int
    login_p50_ms: float | None
    login_max_ms: float | None
    failure_samples: list[str] = []


class AttackerResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the hostile connections did and saw."""

    connections: int
    connect_errors: int
    #: Connections that ended while the attack ran (the server closed or reset them).
    closed: int
    bytes_sent: int
    #: Frames read back, by kind: "reply", or an Error code's name.
    answers: dict[str, int]


class AttackRun(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    hostile: int
    duration_s: float
    #: True when the run had a server of its own (then `rss_peak_mib` is its VmHWM).
    fresh_server: bool
    rss_start_mib: float | None
    #: VmHWM of a fresh server (or the highest sample, if above it), else the highest
    #: VmRSS sampled during the run.
    rss_peak_mib: float | None
    rss_sampled_peak_mib: float | None
    rss_end_mib: float | None
    #: The server passed rss_limit_mib and was killed (or, not ours, the attack stopped).
    cut_at_limit: bool
    server_alive: bool
    #: Lines the server logged during the run, and tracebacks among them (a server the
    #: bench started; None for --pid).
    log_lines: int | None = None
    log_tracebacks: int | None = None
    bystander: BystanderResult
    attack: AttackerResult | None = None


class AttackReport(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = "attack"
    host: str
    hostile: int
    duration_s: float
    settings: list[str]
    scrypt_n: int | None
    runs: list[AttackRun]


# -- the attacker (a child process) -------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.connections = 0
        self.connect_errors = 0
        self.closed = 0
        self.bytes_sent = 0
        self.answers: Counter[str] = Counter()

    def result(self) -> AttackerResult:
        return AttackerResult(
            connections=self.connections,
            connect_errors=self.connect_errors,
            closed=self.closed,
            bytes_sent=self.bytes_sent,
            answers=dict(self.answers),
        )


async def _read_answers(
    reader: asyncio.StreamReader, tally: _Tally, seen: list[int] | None = None
) -> None:
    """Count every frame until the server closes; an Error by its code. `seen[0]` counts
    this connection's frames."""
    decoder = FrameDecoder(max_frame=0xFFFFFFFF)
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(1 << 16):
            frames = decoder.feed(data)
            if seen is not None:
                seen[0] += len(frames)
            for msg_id, flags, _, payload in frames:
                if flags & Flags.ERROR:
                    try:
                        tally.answers[code_name(Error.FromString(payload).code)] += 1
                    except Exception:  # an undecodable Error is counted as such
                        tally.answers["undecodable"] += 1
                else:
                    tally.answers["reply" if flags & Flags.RESPONSE else f"push {msg_id}"] += 1


class _Attacker:
    def __init__(self, kind: str, host: str, port: int, params: AttackParams, target: str) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.params = params
        self.target = target
        self.tally = _Tally()
        self.stopping = False

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the connect finishing, and the worker would never stop.
            async with asyncio.timeout(10):
                pair = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            self.tally.connect_errors += 1
            await asyncio.sleep(0.1)
            return None
        self.tally.connections += 1
        return pair

    def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.tally.bytes_sent += len(data)

    async def worker(self) -> None:
        """One hostile connection, opened again whenever it ends."""
        attack = getattr(self, "_" + self.kind)
        while not self.stopping:
            pair = await self.connect()
            if pair is None:
                continue
            reader, writer = pair
            try:
                await attack(reader, writer)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()
            self.tally.closed += 1
            if self.kind != "connect":
                await asyncio.sleep(0.05)

    def _payload(self, size: int) -> bytes:
        # EchoRequest{data}: a 1-byte tag and a varint length (at most 4 bytes here).
        return EchoRequest(data=bytes(max(0, size - 7 - 5))).SerializeToString()

    async def _unread(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = self._payload(self.params.frame_size)
        seq = 0
        while True:
            seq += 1
            self.send(writer, encode_frame(10, 0, seq, payload))
            await writer.drain()

    async def _partial(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = encode_frame(10, 0, 1, self._payload(self.params.frame_size))
        self.send(writer, frame[:-16])
        await writer.drain()
        await _read_answers(reader, self.tally)

    async def _logins(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wrong = LoginRequest(user=self.target, password="not-the-password").SerializeToString()
        depth = 8
        seq = 0

        def more(count: int) -> None:
            nonlocal seq
            for _ in range(count):
                seq = seq % 0xFFFFFFFE + 1
                self.send(writer, encode_frame(6, 0, seq, wrong))

        more(depth)
        decoder = FrameDecoder(max_frame=0xFFFFFFFF)
        while data := await reader.read(1 << 16):
            frames = decoder.feed(data)
            for _, flags, _, payload in frames:
                if flags & Flags.ERROR:
                    self.tally.answers[code_name(Error.FromString(payload).code)] += 1
                else:
                    self.tally.answers["reply"] += 1
            more(len(frames))
            await writer.drain()

    async def _slowloris(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers = asyncio.ensure_future(_read_answers(reader, self.tally))
        try:
            seq = 0
            while not answers.done():
                seq += 1
                for byte in encode_frame(1, 0, seq, Ping(client_time_ns=1).SerializeToString()):
                    if answers.done():
                        break
                    self.send(writer, bytes([byte]))
                    await asyncio.sleep(self.params.slowloris_interval)
        finally:
            answers.cancel()

    async def _flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo = EchoRequest(data=bytes(64)).SerializeToString()
        batch = b"".join(
            encode_frame(1, 0, 2 * i + 1) + encode_frame(10, 0, 2 * i + 2, echo) for i in range(32)
        )
        seen = [0]
        answers = asyncio.ensure_future(_read_answers(reader, self.tally, seen))
        try:
            sent = 0
            while not answers.done():
                # At most 256 frames in flight: a flood that reads, not an unread one.
                if sent - seen[0] > 256 - 64:
                    await asyncio.sleep(0.001)
                    continue
                self.send(writer, batch)
                sent += 64
                await writer.drain()
        finally:
            answers.cancel()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()


def _attack_process(
    pipe: Connection, kind: str, host: str, port: int, params: AttackParams, target: str
) -> None:
    """The child: attack until the parent says stop, then send back the tally."""
    import uvloop

    async def main() -> AttackerResult:
        attacker = _Attacker(kind, host, port, params, target)
        workers = [asyncio.ensure_future(attacker.worker()) for _ in range(params.hostile)]
        loop = asyncio.get_running_loop()
        # Ready once the first connections are open (or have failed): the measured window
        # starts under attack.
        ready_by = loop.time() + 5
        while (
            attacker.tally.connections + attacker.tally.connect_errors < params.hostile
            and loop.time() < ready_by
        ):
            await asyncio.sleep(0.01)
        pipe.send("ready")
        await loop.run_in_executor(None, pipe.recv)
        attacker.stopping = True
        for task in workers:
            task.cancel()
        await asyncio.wait(workers, timeout=5)
        return attacker.tally.result()

    result = uvloop.run(main())
    pipe.send_bytes(msgspec.msgpack.encode(result))


# -- the bystander (this process) ----------------------------------------------------------


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


async def _bystander(host: str, port: int, users: Users, params: AttackParams) -> BystanderResult:
    latencies: list[float] = []
    logins: list[float] = []
    failures: list[str] = []
    login_failures = 0
    deadline = time.perf_counter() + params.duration

    async def timed(call: Awaitable[object]) -> float:
        began = time.perf_counter()
        await asyncio.wait_for(call, params.timeout)
        return time.perf_counter() - began

    async def login_once(creds: Credentials) -> FrameClient:
        client = await FrameClient.connect(host, port, timeout=params.timeout)
        request = LoginRequest(user=creds.user, password=creds.password)
        await client.call(request, LoginReply)
        return client

    async def session() -> FrameClient:
        if users.pinger is None:
            return await FrameClient.connect(host, port, timeout=params.timeout)
        return await login_once(users.pinger)

    async def pings() -> None:
        client: FrameClient | None = None
        while time.perf_counter() < deadline:
            try:
                if client is None:
                    client = await asyncio.wait_for(session(), params.timeout)
                latencies.append(await timed(client.call(Ping(), Pong)))
            except (WireError, OSError, TimeoutError) as exc:
                failures.append(f"ping: {type(exc).__name__}: {exc}")
                if client is not None:
                    await client.close()
                client = None
            await asyncio.sleep(params.interval)
        if client is not None:
            await client.close()

    async def fresh_logins() -> None:
        nonlocal login_failures
        creds = users.login
        if creds is None:
            return
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                client = await asyncio.wait_for(login_once(creds), params.timeout)
            except (WireError, OSError, TimeoutError) as exc:
                login_failures += 1
                failures.append(f"login: {type(exc).__name__}: {exc}")
            else:
                logins.append(time.perf_counter() - began)
                await client.close()
            await asyncio.sleep(max(0.0, params.login_every - (time.perf_counter() - began)))

    await asyncio.gather(pings(), fresh_logins())
    ping_failures = len(failures) - login_failures
    return BystanderResult(
        requests=len(latencies),
        failures=ping_failures,
        p50_ms=_ms(latencies, 0.5),
        p99_ms=_ms(latencies, 0.99),
        max_ms=_ms(latencies, 1.0),
        logins=len(logins),
        login_failures=login_failures,
        login_p50_ms=round(1000 * statistics.median(logins), 3) if logins else None,
        login_max_ms=_ms(logins, 1.0),
        failure_samples=failures[:ERROR_SAMPLES],
    )


# -- one run ------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the process's peak resident memory since it started, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) still answers kill 0.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


async def run_one(
    kind: str,
    endpoint: Endpoint,
    params: AttackParams,
    *,
    users: Users,
    server: ServerProcess | None = None,
) -> AttackRun:
    """One attack (or the quiet run) against the server at `endpoint`; `server` when the
    bench started it for this run alone."""
    assert endpoint.pid is not None
    pid = endpoint.pid
    fresh = server is not None
    lines_before = (server.lines, server.tracebacks) if server is not None else (0, 0)
    loop = asyncio.get_running_loop()
    rss_start = rss_kib(pid)
    sampled = rss_start or 0
    cut = False
    stop_sampling = asyncio.Event()
    child: multiprocessing.process.BaseProcess | None = None
    pipe: Connection | None = None

    async def sample() -> None:
        nonlocal sampled, cut
        while not stop_sampling.is_set():
            now = rss_kib(pid)
            if now is not None:
                sampled = max(sampled, now)
                if now > params.rss_limit_mib * 1024 and not cut:
                    cut = True
                    if fresh:
                        os.kill(pid, signal.SIGKILL)
                    elif pipe is not None:
                        pipe.send("stop")
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    attack: AttackerResult | None = None
    try:
        if kind != QUIET:
            context = multiprocessing.get_context("spawn")
            pipe, child_end = context.Pipe()
            child = context.Process(
                target=_attack_process,
                args=(child_end, kind, endpoint.host, endpoint.port, params, users.target),
                daemon=True,
            )
            child.start()
            child_end.close()
            ready = pipe
            if not await loop.run_in_executor(None, lambda: ready.poll(30)):
                raise BenchError(f"the {kind} attacker did not start")
            ready.recv()
        bystander = await _bystander(endpoint.host, endpoint.port, users, params)
        if pipe is not None and child is not None:
            with contextlib.suppress(OSError):
                if not cut or fresh:
                    pipe.send("stop")
            done = pipe
            if await loop.run_in_executor(None, lambda: done.poll(30)):
                attack = msgspec.msgpack.decode(done.recv_bytes(), type=AttackerResult)
    finally:
        stop_sampling.set()
        await sampler
        if child is not None:
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
    alive = _alive(pid)
    logged: tuple[int | None, int | None] = (None, None)
    if server is not None:
        # What the server wrote during the run has been read by now, unless it is still
        # in the pipe: a short pause lets the drain thread catch up.
        await asyncio.sleep(0.2)
        logged = (server.lines - lines_before[0], server.tracebacks - lines_before[1])
    return AttackRun(
        kind=kind,
        hostile=0 if kind == QUIET else params.hostile,
        duration_s=params.duration,
        fresh_server=fresh,
        rss_start_mib=_mib(rss_start),
        # The kernel updates VmHWM lazily: a sample can be a little above it.
        rss_peak_mib=_mib(max(peak_rss_kib(pid) or 0, sampled) if fresh and alive else sampled),
        rss_sampled_peak_mib=_mib(sampled),
        rss_end_mib=_mib(rss_kib(pid) if alive else None),
        cut_at_limit=cut,
        server_alive=alive,
        log_lines=logged[0],
        log_tracebacks=logged[1],
        bystander=bystander,
        attack=attack,
    )


def run_attacks(
    params: AttackParams,
    *,
    host: str,
    scrypt_n: int,
    log: Callable[[str], None],
    endpoint: Endpoint | None = None,
    users: Users | None = None,
) -> AttackReport:
    """Every kind of `params.kinds` after a quiet run: each against a fresh `tickwire
    serve` on `host`, or, given `endpoint` (with its pid), all against that server."""
    kinds = [QUIET, *params.kinds]
    runs: list[AttackRun] = []
    if endpoint is not None:
        for kind in kinds:
            log(f"{kind}: against the server at {endpoint.host}:{endpoint.port}")
            runs.append(asyncio.run(run_one(kind, endpoint, params, users=users or Users())))
        return _report(params, host, None, runs)
    from bench.serverside.users import make_users

    with tempfile.TemporaryDirectory(prefix="tickwire-bench-attack-") as tmp:
        users_path = Path(tmp) / "users"
        log(f"hashing 3 passwords at scrypt n={scrypt_n}")
        pinger, login, target = make_users(3, scrypt_n, users_path)
        made = Users(
            pinger=Credentials(pinger.name, pinger.password),
            login=Credentials(login.name, login.password),
            target=target.name,
        )
        cmd = server_command("tickwire", host)
        for setting in [f"users_file={users_path}", *params.settings]:
            cmd += ["--set", setting]
        log(f"tickwire ({' '.join(cmd[1:])}), a fresh one per attack")
        for kind in kinds:
            log(f"{kind}: {params.hostile if kind != QUIET else 0} hostile connections, "
                f"{params.duration:g} s")  # fmt: skip
            with ServerProcess(cmd) as server:
                runs.append(
                    asyncio.run(
                        run_one(
                            kind,
                            server.endpoint,
                            params,
                            users=made,
                            server=server,
                        )
                    )
                )
    return _report(params, host, scrypt_n, runs)


def _report(
    params: AttackParams, host: str, scrypt_n: int | None, runs: list[AttackRun]
) -> AttackReport:
    return AttackReport(
        host=host,
        hostile=params.hostile,
        duration_s=params.duration,
        settings=list(params.settings),
        scrypt_n=scrypt_n,
        runs=runs,
    )


def attack_table(report: AttackReport) -> Table:
    """One row per run, the quiet one first: the server's memory, the bystander's
    latency and logins, and what the attacker saw."""
    from rich.table import Table

    def num(value: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    table = Table(title=f"tickwire bench attack: {report.hostile} hostile connections")
    for name in (
        "attack",
        "peak RSS MiB",
        "pings",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "logins",
        "login p50",
        "login max",
        "failed",
        "conns",
        "closed",
        "answers read",
        "log lines",
    ):
        table.add_column(name, justify="left" if name in ("attack", "answers read") else "right")
    for run in report.runs:
        b = run.bystander
        peak = num(run.rss_peak_mib)
        if run.cut_at_limit:
            peak = f">{peak} (killed)"
        elif not run.server_alive:
            peak += " (died)"
        answers = ", ".join(
            f"{k} {v}" for k, v in sorted((run.attack.answers if run.attack else {}).items())
        )
        table.add_row(
            run.kind,
            peak,
            str(b.requests),
            num(b.p50_ms),
            num(b.p99_ms),
            num(b.max_ms),
            str(b.failures),
            str(b.logins),
            num(b.login_p50_ms),
            num(b.login_max_ms),
            str(b.login_failures),
            "-" if run.attack is None else str(run.attack.connections),
            "-" if run.attack is None else str(run.attack.closed),
            answers or "-",
            "-"
            if run.log_lines is None
            else f"{run.log_lines}"
            + (f" ({run.log_tracebacks} tracebacks)" if run.log_tracebacks else ""),
        )
    return table


def _log_cell(run: AttackRun) -> str:
    if run.log_lines is None:
        return "-"
    if run.log_tracebacks:
        return f"{run.log_lines} ({run.log_tracebacks} tracebacks)"
    return str(run.log_lines)


def clean(report: AttackReport) -> bool:
    """Every bystander request and login answered, and every server alive and uncut."""
    return all(
        r.server_alive
        and not r.cut_at_limit
        and not r.bystander.failures
        and not r.bystander.login_failures
        for r in report.runs
    )


def closing_answers(run: AttackRun) -> dict[str, int]:
    """The closing codes the attacker read (a typed close), by name."""
    from protocol.errors import ErrorCode

    if run.attack is None:
        return {}
    names = {c.name for c in ErrorCode if closes_connection(c)}
    return {k: v for k, v in run.attack.answers.items() if k in names}


__all__ = [
    "KINDS",
    "QUIET",
    "AttackParams",
    "AttackReport",
    "AttackRun",
    "AttackerResult",
    "BystanderResult",
    "Credentials",
    "Users",
    "attack_table",
    "clean",
    "closing_answers",
    "peak_rss_kib",
    "run_attacks",
]
