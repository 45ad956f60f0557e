"""The fan-out bench: a room broadcast to N members, counted by receivers in other processes.

    tickwire bench fanout --members 10000 --duration 5
    tickwire bench fanout --members 10000 --duration 5 --burst 8
    tickwire bench fanout --members 2000 --duration 5 --stalled 20 --size 4096 \\
        --set slow_consumer_bytes=1048576

The push issue's target: a room broadcast to 10,000 members (64-byte message) delivers
at least 500,000 pushes/s, measured by receivers in other processes, with the time from
the broadcast call to the last member's write reported as p50/p99; a member that stops
reading costs the server no more memory than its pending limit.

1. **Users and server.** The parent writes a users file (one user per member, scrypt
   n=16: the logins are set-up, not the thing measured) and spawns `tickwire serve
   --no-chat --app bench.serverside.fanout_app:app` on it, without auth or idle timeouts.
2. **Members.** `--procs` receiver processes (spawn context, uvloop each) open their share
   of the connections; each logs in as its own user and sends FanoutJoin. Frames are
   parsed raw (the SDK would measure itself): a receiver walks the length prefixes of
   what it reads, counts the FanoutPush frames, checks that each member's push seq goes
   up by exactly one (a gap or a repeat is an error), and with `--ack-every N` sends a
   PushAck for the last seq every N pushes, as a real client does. `--stalled S` members
   (spread over the processes) pause reading on their sockets once joined and never
   read during the run.
3. **Driver.** The parent holds one more connection and sends FanoutTrigger{count =
   `--burst`} in a closed loop from the start of the warm-up to the end of the window;
   each Trigger is `--burst` broadcasts in one handler call, so the server writes them
   to a member in one write. At the start of the window it sends FanoutStats{reset}, at
   its end FanoutStats: the server's fan-out histogram of the window alone.
4. **Counting.** A push counts for deliveries/s when a receiver reads it inside the
   window (receivers and parent share CLOCK_MONOTONIC). After the window the parent
   tells the receivers how many broadcasts were made in all; every reading member must
   then reach exactly that seq: expected deliveries (broadcasts x reading members) are
   compared with the pushes received over the whole run, so any loss shows. Then the
   stalled members read again, to see whether the server cut them off (SLOW_CONSUMER).

The server's RSS is read after the joins (before), every 100 ms during the run (peak)
and at the end of the window (after); its CPU, the receivers' and the rest of the
machine's over the window, as in the other benches (`bench.proc`).

With `--nodes N` the server is N nodes of a cluster (`--cluster URL`, or a private
redis-server, bench/fanout_redis.py): member i joins on node i % N, the driver triggers
node 0, and the window starts only once every node with a member subscribes the room's
channel. Redis's INFO is read before the first Trigger and once every member read the
last broadcast (the receivers report "drained" and wait before closing, whose session
writes would count), and at the window's edges for its CPU: commands, PUBLISHes and
bytes per broadcast. `--compare-nodes 1,3` runs the layouts in turn with one set of
users.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import uvloop
from google.protobuf.message import DecodeError, Message
from hdrh.histogram import HdrHistogram

from bench.fanout_redis import (
    PrivateRedis,
    RedisCounters,
    counters_client,
    database,
    read_counters,
    redis_server_binary,
    subscribers,
)
from bench.fanout_report import compare_table, fanout_notes, fanout_table
from bench.load import apportion, sleep_until, wait_for_start
from bench.login import LoginUser, first_conn
from bench.proc import (
    CpuSampler,
    Endpoint,
    MachineSampler,
    ServerProcess,
    raise_nofile_limit,
    rss_kib,
)
from bench.proto import bench_pb2
from bench.proto.bench_pb2 import (
    FanoutJoin,
    FanoutJoinReply,
    FanoutPush,
    FanoutStats,
    FanoutStatsReply,
    FanoutTrigger,
    FanoutTriggerReply,
)
from bench.results import FanoutComparison, FanoutReport
from bench.wire import FrameClient, WireError, code_name
from bench.workers import (
    ERROR_SAMPLES,
    BenchError,
    ClientConnection,
    LoadParams,
    Share,
    Workers,
    open_connections,
    run_worker,
    split,
)
from protocol.errors import ErrorCode
from protocol.frame import HEADER, HEADER_SIZE, MIN_LENGTH, Flags
from protocol.proto.system_pb2 import Error, GoAway, LoginReply, LoginRequest, PushAck
from protocol.registry import system_registry
from protocol.system import ERROR_ID, GOAWAY_ID, PUSH_ACK_ID

#: The users' password hashes: cheap, the logins are set-up.
SCRYPT_N = 16
#: The app the bench serves.
APP = "bench.serverside.fanout_app:app"

#: The protocol's messages and the bench app's: the wire IDs of what members and the
#: driver send and expect.
REGISTRY = system_registry([bench_pb2])

#: The longest frame a member accepts: well above the bench app's largest push (its
#: MAX_SIZE, 1 MiB of data), so only a broken length stops a member.
_MAX_FRAME = 1 << 24
# Plain ints, compared per frame by the receivers.
_RESPONSE = int(Flags.RESPONSE)
_ERROR = int(Flags.ERROR)
_PUSH = int(Flags.PUSH)
_PUSH_ID = REGISTRY.id_of(FanoutPush)
_SLOW_CONSUMER = int(ErrorCode.SLOW_CONSUMER)

_CALL_TIMEOUT_S = 30.0
#: After the window: how long reading members may take to reach the last broadcast.
_DRAIN_S = 30.0
#: After the stalled members read again: how long for the server's close to reach them.
_STALLED_READ_S = 5.0
_RSS_EVERY_S = 0.1
#: SO_RCVBUF of a stalled member's socket (the kernel doubles it). Not below a few
#: loopback MSS (64 KiB): a receive window smaller than one segment never reopens in
#: full, and the connection crawls on zero-window probes once reading resumes.
_STALLED_RCVBUF = 128 * 1024

if TYPE_CHECKING:
    from rich.console import Console

M = TypeVar("M", bound=Message)


class FanoutParams(LoadParams, frozen=True, kw_only=True):
    """`conns` members from `procs` receiver processes; `users[i]` is member i's."""

    users: list[LoginUser]
    duration: float
    warmup: float = 1.0
    burst: int = 1
    size: int = 64
    ack_every: int = 256
    stalled: int = 0
    #: The nodes' ports on the share's host, member i on ``ports[i % len(ports)]``;
    #: empty: every member on the share's port (one server).
    ports: list[int] = []


class WorkerFanoutResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one receiver process hands back."""

    connect_errors: int
    join_errors: int
    #: Members that logged in and joined; `stalled` of them did not read during the run.
    joined: int
    stalled: int
    #: Pushes read inside the window by reading members, per second of the window too.
    window_pushes: int
    throughput: list[int]
    #: Pushes read by reading members over the whole run (warm-up and drain included).
    total_pushes: int
    #: Reading members that did not reach the last broadcast's seq within the drain.
    behind: int
    #: Reading members whose connection ended during the run.
    lost: int
    errors: int
    #: Stalled members whose connection the server ended, and those of them that read
    #: its Error SLOW_CONSUMER first; pushes the stalled members read after the run.
    stalled_cut: int
    stalled_saw_slow_consumer: int
    stalled_pushes: int
    error_samples: list[str] = []


# -- receiver side ----------------------------------------------------------------------


class _Totals:
    """Counters of one receiver process, shared by its members."""

    __slots__ = (
        "ack_every",
        "bins",
        "error_samples",
        "errors",
        "measure_from_ns",
        "measure_until_ns",
        "window_pushes",
    )

    def __init__(self, ack_every: int) -> None:
        self.ack_every = ack_every
        self.measure_from_ns = 0
        self.measure_until_ns = 0
        self.window_pushes = 0
        self.bins: list[int] = []
        self.errors = 0
        self.error_samples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)

    def counted(self, pushes: int) -> None:
        now = time.monotonic_ns()
        if self.measure_from_ns <= now < self.measure_until_ns:
            self.window_pushes += pushes
            index = (now - self.measure_from_ns) // 1_000_000_000
            bins = self.bins
            if index >= len(bins):
                bins.extend([0] * (index + 1 - len(bins)))
            bins[index] += pushes


class Member(ClientConnection):
    """One member's connection: requests one at a time (login, join), then pushes."""

    __slots__ = (
        "_buf",
        "_seq",
        "_waiter",
        "closed_error",
        "done",
        "last_seq",
        "name",
        "received",
        "stalled",
        "totals",
        "unacked",
    )

    def __init__(self, totals: _Totals) -> None:
        super().__init__()
        self.totals = totals
        self.name = "?"
        self._buf = b""
        self._seq = 0
        self._waiter: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.last_seq = 0
        self.received = 0
        self.unacked = 0
        self.stalled = False
        #: The code of an unsolicited Error or GoAway the server sent before closing.
        self.closed_error: int | None = None
        #: Set when the connection ended (for whatever reason).
        self.done = asyncio.Event()

    @property
    def open(self) -> bool:
        return self._transport is not None

    def send(self, msg_id: int, seq: int, payload: bytes) -> None:
        if self._transport is not None:
            self._transport.write(HEADER.pack(MIN_LENGTH + len(payload), msg_id, 0, seq) + payload)

    async def call(self, request: Message, reply_type: type[M]) -> M:
        """Send `request`, return its reply; WireError for anything else."""
        if self._transport is None:
            raise WireError("the connection is closed")
        self._seq += 1
        seq = self._seq
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.send(REGISTRY.id_of(request), seq, request.SerializeToString())
        try:
            msg_id, got_seq, body = await asyncio.wait_for(waiter, _CALL_TIMEOUT_S)
        except TimeoutError:
            raise WireError(
                f"no reply to {type(request).__name__} within {_CALL_TIMEOUT_S:g} s"
            ) from None
        finally:
            self._waiter = None
        if msg_id == ERROR_ID:
            error = Error.FromString(body)
            raise WireError(f"{type(request).__name__}: {code_name(error.code)}: {error.message}")
        if got_seq != seq or msg_id != REGISTRY.id_of(reply_type):
            raise WireError(f"expected a {reply_type.__name__} to seq {seq}, got msg_id={msg_id}")
        try:
            return reply_type.FromString(body)
        except DecodeError as exc:
            raise WireError(f"undecodable {reply_type.__name__}: {exc}") from None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        end_of_data = len(buf)
        pos = 0
        last = self.last_seq
        pushes = 0
        unpack = HEADER.unpack_from
        while end_of_data - pos >= HEADER_SIZE:
            length, msg_id, flags, seq = unpack(buf, pos)
            end = pos + 4 + length
            if end > end_of_data:
                if not MIN_LENGTH <= length <= _MAX_FRAME:
                    self._fail(f"{self.name}: frame length {length} out of range")
                    return
                break
            if msg_id == _PUSH_ID and flags & _PUSH:
                if seq != last + 1:
                    self.totals.error(f"{self.name}: push seq {seq} after {last}")
                last = seq
                pushes += 1
            else:
                self._frame(msg_id, flags, seq, buf[pos + HEADER_SIZE : end])
            pos = end
        self._buf = buf[pos:] if pos < end_of_data else b""
        if pushes:
            self.last_seq = last
            if self.stalled:
                self.received += pushes
                return
            self.received += pushes
            totals = self.totals
            totals.counted(pushes)
            every = totals.ack_every
            if every:
                self.unacked += pushes
                if self.unacked >= every:
                    self.unacked = 0
                    self.send(PUSH_ACK_ID, 0, PushAck(seq=last).SerializeToString())

    def _frame(self, msg_id: int, flags: int, seq: int, body: bytes) -> None:
        waiter = self._waiter
        if seq and flags & (_RESPONSE | _ERROR) and waiter is not None and not waiter.done():
            waiter.set_result((msg_id, seq, body))
        elif msg_id == ERROR_ID and flags & _ERROR:
            self.closed_error = Error.FromString(body).code
        elif msg_id == GOAWAY_ID:
            self.closed_error = GoAway.FromString(body).reason
        else:
            self.totals.error(f"{self.name}: unexpected frame msg_id={msg_id} flags={flags}")

    def _fail(self, what: str) -> None:
        self.totals.error(what)
        self.close()
        self.done.set()

    def close(self) -> None:
        super().close()
        self.done.set()

    def lost(self, exc: Exception | None) -> None:
        self.done.set()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(WireError(f"{self.name}: the server closed the connection"))

    def pause(self) -> None:
        """Stop reading, with a small kernel receive buffer: on Linux loopback a reader's
        buffer may grow to tcp_rmem's maximum (often 6-32 MiB), which would hold minutes
        of pushes before any of them waited in the server's own memory, the thing
        measured here."""
        self.stalled = True
        transport = self._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _STALLED_RCVBUF)
            transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()


async def _recv(pipe: Connection) -> tuple[Any, ...]:
    message: tuple[Any, ...] = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    return message


async def _fanout_worker(
    pipe: Connection, share: Share, params: FanoutParams
) -> WorkerFanoutResult:
    totals = _Totals(params.ack_every)
    connect_samples: list[str] = []

    def connect_error(what: str) -> None:
        if len(connect_samples) < ERROR_SAMPLES:
            connect_samples.append(what)

    first = first_conn(params.conns, params.procs, share.index)
    opened: list[Member] = []
    for port, count in _per_node(params.ports or [share.port], first, share.conns):
        if count:
            part = msgspec.structs.replace(share, port=port, conns=count)
            made = await open_connections(part, lambda: Member(totals), connect_error)
            opened.extend(cast(list[Member], made))
    gate = asyncio.Semaphore(max(1, share.connect_concurrency))
    join_errors = 0

    async def enroll(member: Member, user: LoginUser) -> bool:
        nonlocal join_errors
        member.name = user.name
        async with gate:
            try:
                await member.call(LoginRequest(user=user.name, password=user.password), LoginReply)
                await member.call(FanoutJoin(), FanoutJoinReply)
            except WireError as exc:
                join_errors += 1
                totals.error(f"{user.name}: {exc}")
                member.close()
                return False
        return True

    joined_flags = await asyncio.gather(
        *(enroll(m, params.users[first + i]) for i, m in enumerate(opened))
    )
    members = [m for m, ok in zip(opened, joined_flags, strict=True) if ok]
    stalled_here = apportion(params.stalled, split(params.conns, params.procs))[share.index]
    stalled_here = min(stalled_here, len(members))
    stalled = members[len(members) - stalled_here :] if stalled_here else []
    reading = members[: len(members) - stalled_here]
    for member in stalled:
        member.pause()
    pipe.send(("ready", len(members), len(stalled)))

    window = await wait_for_start(pipe)
    if window is None:
        for member in members:
            member.close()
        raise BenchError("parent aborted the run")
    totals.measure_from_ns = window.measure_from_ns
    totals.measure_until_ns = window.measure_until_ns
    final = await _recv(pipe)
    if final[0] != "final":
        for member in members:
            member.close()
        raise BenchError("parent aborted the run")
    broadcasts: int = final[1]

    # Every reading member must reach the last broadcast's seq.
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline:
        if all(m.last_seq >= broadcasts or not m.open for m in reading):
            break
        await asyncio.sleep(0.05)
    behind = [m for m in reading if m.last_seq < broadcasts]
    lost = [m for m in reading if not m.open]
    for member in behind[:ERROR_SAMPLES]:
        totals.error(f"{member.name}: read up to push {member.last_seq} of {broadcasts}")
    # The parent reads Redis's counters now, before the stalled members' cut-offs and
    # the closes below make the nodes write sessions to it.
    pipe.send(("drained",))
    if (await _recv(pipe))[0] != "close":
        for member in members:
            member.close()
        raise BenchError("parent aborted the run")

    # The stalled members read again: what did the server do with them?
    for member in stalled:
        member.resume()
    if stalled:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(m.done.wait() for m in stalled)), _STALLED_READ_S
            )
    stalled_cut = [m for m in stalled if not m.open]
    saw = [m for m in stalled_cut if m.closed_error == _SLOW_CONSUMER]
    stalled_pushes = sum(m.received for m in stalled)
    for member in members:
        member.close()
    await asyncio.sleep(0)
    return WorkerFanoutResult(
        connect_errors=share.conns - len(opened),
        join_errors=join_errors,
        joined=len(members),
        stalled=len(stalled),
        window_pushes=totals.window_pushes,
        throughput=totals.bins,
        total_pushes=sum(m.received for m in reading),
        behind=len(behind),
        lost=len(lost),
        errors=totals.errors,
        stalled_cut=len(stalled_cut),
        stalled_saw_slow_consumer=len(saw),
        stalled_pushes=stalled_pushes,
        error_samples=(connect_samples + totals.error_samples)[:ERROR_SAMPLES],
    )


def _per_node(ports: list[int], first: int, count: int) -> list[tuple[int, int]]:
    """How many of the members `first` .. `first + count - 1` go to each port: member i
    to ``ports[i % len(ports)]``, so every node gets an even share of the room."""
    nodes = len(ports)
    return [
        (port, sum(1 for i in range(first, first + count) if i % nodes == node))
        for node, port in enumerate(ports)
    ]


def fanout_worker(pipe: Connection, share: Share, params: FanoutParams) -> None:
    """Entry point of one receiver process."""
    run_worker(pipe, share.cpus, lambda: _fanout_worker(pipe, share, params))


# -- parent side -----------------------------------------------------------------------


def _user_sys_seconds(pid: int) -> tuple[float, float] | None:
    """User and system CPU time of one process, from /proc/PID/stat (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class _Driven(msgspec.Struct, kw_only=True):
    elapsed_s: float = 0.0
    triggers: int = 0
    #: Node 0's broadcasts before the first Trigger of the run, in the window, in all.
    broadcasts_start: int = 0
    broadcasts_window: int = 0
    broadcasts_total: int = 0
    fanout_histogram: bytes = b""
    server_cpu_pct: float | None = None
    server_sys_pct: float | None = None
    node_members: list[int] = []
    node_cpu_pct: list[float | None] = []
    receiver_cpu_pct: float = 0.0
    driver_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None
    rss_before_kib: int | None = None
    rss_peak_kib: int | None = None
    rss_after_kib: int | None = None
    slow_consumer_closes: int = 0
    writes_paused: int = 0
    pending_bytes: int = 0
    pending_bytes_max: int = 0
    closing: int = 0
    #: The cluster's Redis before the first Trigger and at the window's two edges.
    redis_start: RedisCounters | None = None
    redis_from: RedisCounters | None = None
    redis_until: RedisCounters | None = None
    error: str | None = None


#: The room of the bench app (bench/serverside/fanout_app.py ROOM), whose channel
#: ``tw:<db>:r:<room>`` each node with a member subscribes (docs/scaling.md).
_ROOM = "fanout"
#: How long the nodes may take to subscribe the room's channel after the joins.
_SUBSCRIBE_S = 30.0


class ClusterRedis:
    """The cluster's Redis as the bench reads it: its counters, and who listens to the
    room. `pid` is that of the Redis the bench started (None for --cluster): its CPU is
    then taken out of "other"."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.client = counters_client(url)
        self.channel = f"tw:{database(url)}:r:{_ROOM}"
        self.pid = pid

    async def settled(self, nodes: int) -> None:
        """Return once `nodes` nodes subscribe the room's channel: a node hears the
        broadcasts of the others only from then on, and a member that missed one would
        read every later seq one short."""
        deadline = time.monotonic() + _SUBSCRIBE_S
        while (found := subscribers(self.client, self.channel)) < nodes:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{found} of {nodes} nodes subscribed {self.channel} within "
                    f"{_SUBSCRIBE_S:g} s of the joins"
                )
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.client.close()


def _sum(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


async def _drive(
    params: FanoutParams,
    servers: list[Endpoint],
    workers: Workers,
    members: int,
    log: Callable[[str], None],
    redis_watch: ClusterRedis | None,
) -> _Driven:
    """The driver connections, one per node: Triggers to node 0 in a closed loop, Stats
    at the window's edges, CPU, RSS and Redis readings around them."""
    driven = _Driven()
    clients: list[FrameClient] = []
    try:
        for server in servers:
            clients.append(await FrameClient.connect(server.host, server.port, registry=REGISTRY))
        client = clients[0]
        probe = FanoutTrigger(count=0, size=params.size)
        probes = [await c.call(probe, FanoutTriggerReply) for c in clients]
        here = driven.node_members = [p.members for p in probes]
        if sum(here) != members:
            raise BenchError(
                f"the room has {' + '.join(map(str, here))} members on the nodes, the "
                f"receivers joined {members}"
            )
        broadcasts = driven.broadcasts_start = probes[0].broadcasts
        if redis_watch is not None:
            await redis_watch.settled(sum(1 for count in here if count))
            driven.redis_start = read_counters(redis_watch.client)
        pids = [server.pid for server in servers if server.pid]

        def rss() -> int | None:
            """All nodes' RSS together."""
            readings = [rss_kib(pid) for pid in pids]
            if not readings or any(r is None for r in readings):
                return None
            return sum(r for r in readings if r is not None)

        driven.rss_before_kib = driven.rss_peak_kib = rss()
        peak_stop = asyncio.Event()

        async def watch_rss() -> None:
            while not peak_stop.is_set():
                now = rss()
                if now is not None and (driven.rss_peak_kib is None or now > driven.rss_peak_kib):
                    driven.rss_peak_kib = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(peak_stop.wait(), _RSS_EVERY_S)

        start_ns = time.monotonic_ns() + 100_000_000
        measure_from_ns = start_ns + int(params.warmup * 1e9)
        measure_until_ns = measure_from_ns + int(params.duration * 1e9)
        workers.send_all(("start", start_ns, measure_from_ns, measure_until_ns))
        node_cpu = [CpuSampler([s.pid], tree=True) if s.pid else None for s in servers]
        receiver_cpu = CpuSampler(workers.pids, tree=False)
        driver_cpu = CpuSampler([os.getpid()], tree=False)
        machine_cpu = MachineSampler()
        watcher = asyncio.create_task(watch_rss())
        await sleep_until(start_ns)
        log(f"broadcasting: {params.warmup:g} s warm-up, then {params.duration:g} s measured")
        trigger = FanoutTrigger(count=params.burst, size=params.size)
        measuring = False
        t0 = 0.0
        b0 = 0
        user_sys0: list[tuple[float, float] | None] = []
        while True:
            now = time.monotonic_ns()
            if not measuring and now >= measure_from_ns:
                await client.call(FanoutStats(reset=True), FanoutStatsReply)
                if redis_watch is not None:
                    driven.redis_from = read_counters(redis_watch.client)
                for sampler in (*node_cpu, receiver_cpu, driver_cpu, machine_cpu):
                    if sampler is not None:
                        sampler.start()
                t0 = time.monotonic()
                user_sys0 = [_user_sys_seconds(pid) for pid in pids]
                b0 = broadcasts
                measuring = True
            if now >= measure_until_ns:
                break
            reply = await client.call(trigger, FanoutTriggerReply)
            broadcasts = reply.broadcasts
            if measuring:
                driven.triggers += 1
        stats = await client.call(FanoutStats(reset=False), FanoutStatsReply)
        driven.elapsed_s = time.monotonic() - t0
        if redis_watch is not None:
            driven.redis_until = read_counters(redis_watch.client)
        user_sys1 = [_user_sys_seconds(pid) for pid in pids]
        if driven.elapsed_s > 0 and user_sys0 and all(user_sys0) and all(user_sys1):
            system = sum(
                after[1] - before[1]
                for before, after in zip(user_sys0, user_sys1, strict=True)
                if before is not None and after is not None
            )
            driven.server_sys_pct = 100.0 * system / driven.elapsed_s
        driven.node_cpu_pct = [s.stop() if s is not None else None for s in node_cpu]
        driven.server_cpu_pct = _sum(driven.node_cpu_pct)
        driven.receiver_cpu_pct = receiver_cpu.stop() or 0.0
        driven.driver_cpu_pct = driver_cpu.stop()
        driven.machine_cpu_pct = machine_cpu.stop()
        driven.rss_after_kib = rss()
        peak_stop.set()
        await watcher
        every = [stats] + [
            await c.call(FanoutStats(reset=False), FanoutStatsReply) for c in clients[1:]
        ]
        driven.broadcasts_window = stats.broadcasts - b0
        driven.broadcasts_total = stats.broadcasts
        driven.fanout_histogram = stats.fanout_us
        driven.pending_bytes = sum(s.pending_bytes for s in every)
        driven.pending_bytes_max = max(s.pending_bytes_max for s in every)
        driven.closing = sum(s.closing for s in every)
        workers.send_all(("final", stats.broadcasts))
        return driven
    finally:
        for c in clients:
            await c.close()


def _final_stats(servers: list[Endpoint]) -> list[FanoutStatsReply]:
    async def ask(server: Endpoint) -> FanoutStatsReply:
        client = await FrameClient.connect(server.host, server.port, registry=REGISTRY)
        try:
            return await client.call(FanoutStats(reset=False), FanoutStatsReply)
        finally:
            await client.close()

    async def ask_all() -> list[FanoutStatsReply]:
        return [await ask(server) for server in servers]

    return uvloop.run(ask_all())


class _RedisCost(msgspec.Struct, kw_only=True):
    """What the cluster's Redis did for the run's broadcasts (see FanoutReport)."""

    broadcasts: int = 0
    commands: int | None = None
    publishes: int | None = None
    out_bytes: int | None = None
    cpu_pct: float | None = None


def _redis_cost(driven: _Driven, end: RedisCounters | None) -> _RedisCost:
    """From the readings before the first Trigger and after the last member read the
    last broadcast (every PUBLISH of the run was handled by then): the bench's own
    INFOs in between (the first reading and the window's two) are taken out."""
    start, window_from, window_until = driven.redis_start, driven.redis_from, driven.redis_until
    if start is None or end is None:
        return _RedisCost()
    cost = _RedisCost(broadcasts=driven.broadcasts_total - driven.broadcasts_start)
    own = [r for r in (start, window_from, window_until) if r is not None]
    cost.commands = end.commands - start.commands - len(own)
    cost.publishes = end.publishes - start.publishes
    cost.out_bytes = end.out_bytes - start.out_bytes - sum(r.reply_bytes for r in own)
    if window_from is not None and window_until is not None and driven.elapsed_s > 0:
        cost.cpu_pct = 100.0 * (window_until.cpu_s - window_from.cpu_s) / driven.elapsed_s
    return cost


def _per(value: int | None, broadcasts: int) -> float | None:
    return None if value is None or not broadcasts else value / broadcasts


def run_fanout(
    params: FanoutParams,
    servers: list[Endpoint],
    *,
    slow_consumer_bytes: int,
    log: Callable[[str], None],
    redis_watch: ClusterRedis | None = None,
) -> FanoutReport:
    """One run against servers (one, or the nodes of a cluster on one host) that serve
    the bench app and know `params.users`; member i goes to ``servers[i % len]``, the
    Triggers to servers[0]. `redis_watch`: the cluster's Redis, to read what it did."""
    from bench.proc import available_cpus

    if len(params.users) < params.conns:
        raise BenchError(f"{params.conns} members need {params.conns} users")
    if len(servers) > 1:
        params = msgspec.structs.replace(params, ports=[s.port for s in servers])
    workers = Workers(fanout_worker, params, servers[0], cpus=None)
    redis_end: RedisCounters | None = None
    try:
        log(f"{params.conns:,} members logging in and joining from {len(workers.pids)} processes")
        ready = workers.recv_all("ready", timeout=60.0 + params.conns / 200)
        joined = sum(r[1] for r in ready)
        stalled = sum(r[2] for r in ready)
        if joined == 0:
            workers.send_all(("abort",))
            raise BenchError(f"no member could join at {servers[0].host}:{servers[0].port}")
        try:
            driven = uvloop.run(_drive(params, servers, workers, joined, log, redis_watch))
        except (WireError, OSError, TimeoutError) as exc:
            workers.send_all(("abort",))
            raise BenchError(f"the driver connection failed: {exc}") from None
        workers.recv_all("drained", timeout=_DRAIN_S + 30.0)
        if redis_watch is not None:
            redis_end = read_counters(redis_watch.client)
        workers.send_all(("close",))
        results: list[WorkerFanoutResult] = []
        for message in workers.recv_all("result", timeout=_STALLED_READ_S + 30.0):
            results.append(msgspec.msgpack.decode(message[1], type=WorkerFanoutResult))
    finally:
        workers.close()
    finals = _final_stats(servers)  # after the stalled members read again
    histogram = HdrHistogram(1, 60_000_000, 2)
    if driven.fanout_histogram:
        histogram = HdrHistogram.decode(driven.fanout_histogram)
    count = histogram.get_total_count()

    def pct(p: float) -> int:
        return int(histogram.get_value_at_percentile(p)) if count else 0

    reading = joined - stalled
    window_pushes = sum(r.window_pushes for r in results)
    bins = [0] * max((len(r.throughput) for r in results), default=0)
    for result in results:
        for i, value in enumerate(result.throughput):
            bins[i] += value
    cost = _redis_cost(driven, redis_end)
    other = None
    if driven.machine_cpu_pct is not None and driven.server_cpu_pct is not None:
        own_redis = (cost.cpu_pct or 0.0) if redis_watch is not None and redis_watch.pid else 0.0
        other = max(
            0.0,
            driven.machine_cpu_pct
            - driven.server_cpu_pct
            - driven.receiver_cpu_pct
            - (driven.driver_cpu_pct or 0.0)
            - own_redis,
        )
    elapsed = driven.elapsed_s or params.duration
    return FanoutReport(
        host=servers[0].host,
        members=params.conns,
        procs=len(results),
        burst=params.burst,
        size=params.size,
        ack_every=params.ack_every,
        stalled=stalled,
        warmup_s=params.warmup,
        duration_s=params.duration,
        elapsed_s=elapsed,
        joined=joined,
        connect_errors=sum(r.connect_errors for r in results),
        join_errors=sum(r.join_errors for r in results),
        triggers=driven.triggers,
        broadcasts_window=driven.broadcasts_window,
        broadcasts_total=driven.broadcasts_total,
        deliveries_window=window_pushes,
        deliveries_per_s=window_pushes / params.duration,
        expected_window=driven.broadcasts_window * reading,
        expected_total=driven.broadcasts_total * reading,
        delivered_total=sum(r.total_pushes for r in results),
        behind=sum(r.behind for r in results),
        lost=sum(r.lost for r in results),
        errors=sum(r.errors for r in results),
        throughput=bins,
        fanout_count=count,
        fanout_p50_us=pct(50),
        fanout_p90_us=pct(90),
        fanout_p99_us=pct(99),
        fanout_max_us=int(histogram.get_max_value()) if count else 0,
        fanout_histogram=driven.fanout_histogram.decode("ascii"),
        server_cpu_pct=driven.server_cpu_pct,
        server_sys_pct=driven.server_sys_pct,
        receiver_cpu_pct=driven.receiver_cpu_pct,
        driver_cpu_pct=driven.driver_cpu_pct,
        other_cpu_pct=other,
        machine_cpus=len(available_cpus()),
        rss_before_kib=driven.rss_before_kib,
        rss_peak_kib=driven.rss_peak_kib,
        rss_after_kib=driven.rss_after_kib,
        slow_consumer_bytes=slow_consumer_bytes,
        slow_consumer_closes=sum(s.slow_consumer_closes for s in finals),
        writes_paused=sum(s.writes_paused for s in finals),
        pending_bytes=driven.pending_bytes,
        pending_bytes_max=driven.pending_bytes_max,
        closing=driven.closing,
        stalled_cut=sum(r.stalled_cut for r in results),
        stalled_saw_slow_consumer=sum(r.stalled_saw_slow_consumer for r in results),
        stalled_pushes=sum(r.stalled_pushes for r in results),
        nodes=len(servers),
        cluster=redis_watch is not None,
        node_members=driven.node_members,
        node_cpu_pct=driven.node_cpu_pct,
        redis_broadcasts=cost.broadcasts,
        redis_commands=cost.commands,
        redis_publishes=cost.publishes,
        redis_out_bytes=cost.out_bytes,
        redis_commands_per_broadcast=_per(cost.commands, cost.broadcasts),
        redis_publishes_per_broadcast=_per(cost.publishes, cost.broadcasts),
        redis_out_bytes_per_broadcast=_per(cost.out_bytes, cost.broadcasts),
        redis_cpu_pct=cost.cpu_pct,
        error_samples=[s for r in results for s in r.error_samples][:ERROR_SAMPLES],
    )


class FanoutOptions(msgspec.Struct, frozen=True, kw_only=True):
    """`bench fanout`: `params.users` is left empty, `bench_fanout` makes the users."""

    params: FanoutParams
    host: str = "127.0.0.1"
    #: More config for the spawned servers, as ``KEY=VALUE`` for their ``--set``.
    settings: list[str] = []
    #: `tickwire serve` processes the members are spread over; more than one are the
    #: nodes of a cluster.
    nodes: int = 1
    #: The cluster's Redis; None: with more than one node, a private redis-server.
    cluster_url: str | None = None


#: The server's config for the run: members stay however long logging 10,000 in takes,
#: and are sent no heartbeat Pings (their raw connections would not answer).
FANOUT_SETTINGS = ["auth_timeout=0", "idle_timeout=0", "ping_interval=0"]


def fanout_command(
    host: str, users_file: Path, settings: list[str], cluster: tuple[str, str] | None = None
) -> list[str]:
    """`tickwire serve` with the bench app; `cluster`: (Redis URL, node id)."""
    import sys

    cmd = [sys.executable, "-m", "tools.cli", "serve", "--no-chat", "--app", APP]
    cmd += ["--host", host, "--port", "0"]
    if cluster is not None:
        cmd += ["--cluster", cluster[0], "--node-id", cluster[1]]
    for setting in [f"users_file={users_file}", *FANOUT_SETTINGS, *settings]:
        cmd += ["--set", setting]
    return cmd


def _run_on_nodes(
    opts: FanoutOptions,
    params: FanoutParams,
    users_file: Path,
    nodes: int,
    log: Callable[[str], None],
) -> FanoutReport:
    """One run on `nodes` spawned servers: one without a cluster (unless --cluster),
    else nodes `fanout-0` .. of a cluster on --cluster or a private Redis."""
    from bench.serverside.config import slow_consumer_limit

    with contextlib.ExitStack() as stack:
        url = opts.cluster_url
        redis_pid = None
        if url is None and nodes > 1:
            private = stack.enter_context(PrivateRedis())
            url, redis_pid = private.url, private.pid
            log(f"redis-server on port {private.port} (private, no persistence)")
        processes: list[ServerProcess] = []
        for i in range(nodes):
            cluster = (url, f"fanout-{i}") if url is not None else None
            cmd = fanout_command(opts.host, users_file, opts.settings, cluster)
            log(f"tickwire ({' '.join(cmd[1:])})")
            processes.append(stack.enter_context(ServerProcess(cmd, start_timeout=60.0)))
        redis_watch = None
        if url is not None:
            redis_watch = ClusterRedis(url, redis_pid)
            stack.callback(redis_watch.close)
        report = run_fanout(
            params,
            [p.endpoint for p in processes],
            slow_consumer_bytes=slow_consumer_limit(opts.settings),
            log=log,
            redis_watch=redis_watch,
        )
        for i, process in enumerate(processes):
            if not process.alive():
                raise BenchError(f"node {i} died during the run; its stderr:\n{process.tail()}")
        return report


def _runs(
    opts: FanoutOptions, layouts: list[int], log: Callable[[str], None]
) -> list[FanoutReport]:
    """The same workload on each number of nodes of `layouts`, one after the other, with
    one set of users."""
    from bench.serverside.users import make_users

    if opts.cluster_url is None and any(n > 1 for n in layouts):
        redis_server_binary()  # before the users, which take a while to make
    params = opts.params
    raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="tickwire-bench-fanout-") as tmp:
        users_file = Path(tmp) / "users"
        log(f"making {params.conns:,} users (scrypt n={SCRYPT_N})")
        users = make_users(params.conns, SCRYPT_N, users_file)
        params = msgspec.structs.replace(params, users=users)
        return [_run_on_nodes(opts, params, users_file, nodes, log) for nodes in layouts]


def bench_fanout(opts: FanoutOptions, console: Console, log: Callable[[str], None]) -> FanoutReport:
    """Write the users, spawn the server (or the nodes) with the bench app, run, print
    the table."""
    [report] = _runs(opts, [opts.nodes], log)
    console.print(fanout_table(report))
    for note in fanout_notes(report):
        console.print(note, highlight=False)
    return report


def bench_fanout_compare(
    opts: FanoutOptions, layouts: list[int], console: Console, log: Callable[[str], None]
) -> FanoutComparison:
    """The same workload on each number of nodes in turn, in one invocation (a noisy
    machine drifts between invocations): both tables, then the side-by-side one."""
    reports = _runs(opts, layouts, log)
    first = reports[0].deliveries_per_s
    comparison = FanoutComparison(
        runs=reports,
        ratios=[r.deliveries_per_s / first if first else 0.0 for r in reports],
    )
    for report in reports:
        console.print(fanout_table(report))
        for note in fanout_notes(report):
            console.print(note, highlight=False)
    console.print(compare_table(comparison))
    return comparison
