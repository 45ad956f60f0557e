"""Result records of `tickwire bench`, as msgspec Structs.

They are the JSON that `--json` writes, so a later run (or CI) can compare against an
earlier one without scraping the terminal tables.
"""

from __future__ import annotations

import msgspec


class WorkerResult(msgspec.Struct, frozen=True, kw_only=True):
    """What every load-generator process hands back to the parent: how many of its
    connections could not be opened, and the first few errors it saw."""

    connect_errors: int
    error_samples: list[str] = []


class WorkerEchoResult(WorkerResult, frozen=True, kw_only=True):
    """What one request/reply load-generator process (echo or scenario) hands back.

    The histograms travel encoded (HdrHistogram's compressed V2 form) so that the parent
    merges exact distributions instead of averaging percentiles, which would be wrong.
    """

    connections: int
    sent: int
    replies: int
    errors: int
    histogram: bytes
    #: Replies counted in each second of the measured window (index 0: the first second).
    throughput: list[int] = []
    #: CLOCK_MONOTONIC ns at which this process stopped counting: the end of the window,
    #: or the moment its share of --requests was reached. 0: unknown (the window's end).
    finished_ns: int = 0
    #: Open loop only: how late each batch of sends went out after its scheduled time (µs).
    send_lag_histogram: bytes = b""


class EchoRun(msgspec.Struct, frozen=True, kw_only=True):
    """One measured request/reply run against one server: echo (closed or open loop), a
    scenario (`scenario` set; `depth` is then 1 and `size` 0), or logins (`mode` "login":
    a reply is a checked LoginReply, `store` and `scrypt_n` set)."""

    target: str
    round: int
    conns: int
    depth: int
    procs: int
    size: int
    warmup_s: float
    #: The measured seconds asked for: --duration, or with --requests the --time-limit.
    duration_s: float
    cpu_pin: bool
    connections: int
    connect_errors: int
    replies: int
    replies_per_s: float
    errors: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    mean_us: float
    #: CPU time of the server process tree over the measured window / wall time, in % of
    #: one core; None when the server's pid is unknown.
    server_cpu_pct: float | None
    #: The same for all load-generator processes together (can exceed 100).
    client_cpu_pct: float
    #: CPU used by every other process on the machine in the window: anything well above
    #: 0 means the run competed with other work and is not comparable to a quiet one.
    #: None when the server's pid is unknown (it would be counted here).
    other_cpu_pct: float | None = None
    #: CPUs this process may run on: 100% x machine_cpus is a saturated machine.
    machine_cpus: int = 0
    error_samples: list[str] = []
    #: "closed": `depth` requests in flight per connection, a new one per reply.
    #: "open": requests sent on a fixed schedule at `rate`, whatever the replies.
    #: "login": `bench login`, every connection logging in again and again (closed loop).
    mode: str = "closed"
    #: Open loop: the requests/s asked for, over all processes and connections.
    rate: float | None = None
    #: --requests N: the run stopped counting after N replies (None: it ran `duration_s`).
    requests: int | None = None
    #: MODULE:FUNC of a scenario run; None for echo.
    scenario: str | None = None
    #: Seconds the measured window really lasted: `duration_s`, or until N replies came.
    #: `replies_per_s` is `replies / elapsed_s`.
    elapsed_s: float = 0.0
    #: Requests sent over the whole run (warm-up included; scenario: iterations started).
    sent: int = 0
    #: Open loop: how late the generator sent its requests after their scheduled time
    #: (per send batch, the oldest request in it), µs. Latency includes this lag.
    send_lag_p50_us: int | None = None
    send_lag_p99_us: int | None = None
    send_lag_max_us: int | None = None
    #: Replies per `throughput_interval_s` of the measured window, all processes summed;
    #: the last interval may be shorter (elapsed_s - its start).
    throughput_interval_s: float = 1.0
    throughput: list[int] = []
    #: The same per load-generator process, in process order.
    throughput_by_proc: list[list[int]] = []
    #: (percentile, latency µs) points of the merged histogram, spaced evenly on the
    #: log(1 / (1 - percentile)) axis of HdrHistogram plots, ending at 100 (the max).
    latency_curve: list[tuple[float, int]] = []
    #: The merged latency histogram, HdrHistogram's base64 compressed form
    #: (`HdrHistogram.decode(...)`), to merge or re-plot later.
    histogram: str = ""
    #: Login runs: the server's store ("memory" or "redis") and the scrypt cost (n) of the
    #: users' password hashes. None for other runs.
    store: str | None = None
    scrypt_n: int | None = None
    #: Login runs on Redis: CPU% of the redis-server over the window, when it runs on
    #: this machine and its pid could be read (INFO server); it is then not in
    #: `other_cpu_pct`.
    store_cpu_pct: float | None = None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """tickwire against the inline baseline, over interleaved rounds."""

    rounds: int
    #: Per round, tickwire / baseline.
    rps_ratios: list[float]
    p99_ratios: list[float]
    rps_ratio_median: float
    p99_ratio_median: float
    tickwire_rps_median: float
    baseline_rps_median: float
    tickwire_p99_median_us: float
    baseline_p99_median_us: float


class EchoReport(msgspec.Struct, frozen=True, kw_only=True):
    #: "echo", "scenario" or "login" (the same record; scenario runs carry their
    #: MODULE:FUNC, login runs their store and scrypt cost).
    kind: str = "echo"
    host: str
    runs: list[EchoRun]
    comparison: Comparison | None = None


class WorkerIdleResult(WorkerResult, frozen=True, kw_only=True):
    opened: int
    pinged: int
    answered: int
    dropped: int


class IdleReport(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = "idle"
    target: str
    conns: int
    procs: int
    opened: int
    connect_errors: int
    connect_s: float
    #: VmRSS of the server before any bench connection, after all are open and idle, and
    #: after every connection has exchanged one Ping/Pong. None without a server pid.
    rss_before_kib: int | None
    rss_idle_kib: int | None
    rss_after_ping_kib: int | None
    kib_per_conn_idle: float | None
    kib_per_conn_after_ping: float | None
    pinged: int
    answered: int
    #: Connections the server closed while they sat idle or waited for their Pong.
    dropped: int
    error_samples: list[str] = []


class RestoreReport(msgspec.Struct, frozen=True, kw_only=True):
    """`bench restore`: a restart of `tickwire serve` on a memory-store snapshot holding
    `sessions` sessions, timed, and a sample of them resumed over the wire."""

    kind: str = "restore"
    host: str
    sessions: int
    #: The snapshot file: its size and the keys in it (3 per session: the session hash,
    #: its token and the user's set of sessions).
    snapshot_bytes: int
    snapshot_keys: int
    #: Seconds the in-process SessionManager took to make the sessions, and to write the
    #: snapshot.
    build_s: float
    write_s: float
    #: Per round: seconds from starting `tickwire serve` to its "listening" line, with the
    #: snapshot, and with a snapshot path that holds no file (interpreter start, imports
    #: and binding: the part of a start that is not the restore).
    start_s: list[float]
    empty_start_s: list[float]
    start_median_s: float
    empty_start_median_s: float
    #: What the server logged it restored ("store snapshot restored keys=... expired=..."),
    #: on the last round; None when it logged no such line.
    restored_keys: int | None
    expired_keys: int | None
    #: VmRSS of the restored server when it started listening, and of the empty one.
    rss_kib: int | None
    empty_rss_kib: int | None
    #: ResumeRequests sent with sampled tokens (over all rounds), and how many got the
    #: ResumeReply of their own session.
    resume_sample: int
    resumed: int
    #: A made-up token was refused with UNAUTHENTICATED in every round (the control: a
    #: server that accepted any token would resume the sample too).
    bogus_refused: bool
    #: The issue's target: a restart with the sessions back within this many seconds.
    target_s: float = 2.0
    error_samples: list[str] = []


#: The fan-out bench's target (deliveries/s to a 10,000-member room), shown next to the
#: measured rate.
TARGET_DELIVERIES_PER_S = 500_000


class FanoutReport(msgspec.Struct, frozen=True, kw_only=True):
    """One `tickwire bench fanout` run: the JSON of --json."""

    kind: str = "fanout"
    host: str
    members: int
    procs: int
    burst: int
    size: int
    ack_every: int
    stalled: int
    warmup_s: float
    duration_s: float
    #: The window as the driver saw it: from its Stats reset to its last Stats, which
    #: follows the Trigger in flight at the end of `duration_s` (receivers count pushes
    #: read within `duration_s` exactly).
    elapsed_s: float
    joined: int
    connect_errors: int
    join_errors: int
    triggers: int
    #: Broadcasts in the window (between the two Stats) and over the whole run.
    broadcasts_window: int
    broadcasts_total: int
    #: Pushes the reading members read inside the window, and that over `duration_s`.
    deliveries_window: int
    deliveries_per_s: float
    #: Broadcasts in the window x reading members (approximate: a push in flight at either
    #: edge of the window counts on the side its member read it).
    expected_window: int
    #: Over the whole run: broadcasts x reading members, and what they read (exact).
    expected_total: int
    delivered_total: int
    behind: int
    lost: int
    errors: int
    throughput: list[int]
    #: Server side, from its fan-out histogram for the window: microseconds from a
    #: broadcast call to the write of its last member.
    fanout_count: int
    fanout_p50_us: int
    fanout_p90_us: int
    fanout_p99_us: int
    fanout_max_us: int
    fanout_histogram: str
    server_cpu_pct: float | None
    #: The part of it spent in the kernel (system time): the writes, and on loopback
    #: the TCP work of delivering them, which Linux charges to the sender.
    server_sys_pct: float | None = None
    receiver_cpu_pct: float
    driver_cpu_pct: float | None
    other_cpu_pct: float | None
    machine_cpus: int
    rss_before_kib: int | None
    rss_peak_kib: int | None
    rss_after_kib: int | None
    slow_consumer_bytes: int
    slow_consumer_closes: int
    writes_paused: int
    #: At the end of the window, from the server: bytes waiting in all its transports,
    #: the most in one, and connections it had closed whose socket was not gone yet.
    pending_bytes: int = 0
    pending_bytes_max: int = 0
    closing: int = 0
    stalled_cut: int
    stalled_saw_slow_consumer: int
    stalled_pushes: int
    #: `tickwire serve` processes the members were spread over (member i on node
    #: i % nodes; Triggers to node 0), and whether they were nodes of a cluster. With
    #: several, the fan-out histogram and `broadcasts_*` are node 0's, the CPU, RSS and
    #: pending figures all nodes' together; `node_members` and `node_cpu_pct` per node.
    nodes: int = 1
    cluster: bool = False
    node_members: list[int] = []
    node_cpu_pct: list[float | None] = []
    #: The cluster's Redis (INFO), from before the first Trigger to every member having
    #: read the last broadcast, the bench's own INFOs taken out: broadcasts made then,
    #: commands it processed (heartbeats included), PUBLISHes, bytes it sent, and those
    #: per broadcast; its CPU over the window. None without a cluster.
    redis_broadcasts: int = 0
    redis_commands: int | None = None
    redis_publishes: int | None = None
    redis_out_bytes: int | None = None
    redis_commands_per_broadcast: float | None = None
    redis_publishes_per_broadcast: float | None = None
    redis_out_bytes_per_broadcast: float | None = None
    redis_cpu_pct: float | None = None
    error_samples: list[str] = []

    @property
    def lossless(self) -> bool:
        return self.delivered_total == self.expected_total and not self.behind

    @property
    def clean(self) -> bool:
        return (
            self.lossless
            and not self.errors
            and not self.lost
            and not self.connect_errors
            and not self.join_errors
            and self.joined == self.members
            and self.deliveries_window > 0
        )


class FanoutComparison(msgspec.Struct, frozen=True, kw_only=True):
    """`tickwire bench fanout --compare-nodes 1,3`: the same workload on each number of
    nodes, one invocation; the JSON of --json."""

    kind: str = "fanout-compare"
    runs: list[FanoutReport]
    #: Each run's deliveries/s over the first run's.
    ratios: list[float]

    @property
    def clean(self) -> bool:
        return all(run.clean for run in self.runs)
