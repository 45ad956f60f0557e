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
    """What one echo load-generator process hands back to the parent.

    The histogram travels encoded (HdrHistogram's compressed V2 form) so that the parent
    merges exact distributions instead of averaging percentiles, which would be wrong.
    """

    connections: int
    sent: int
    replies: int
    errors: int
    histogram: bytes


class EchoRun(msgspec.Struct, frozen=True, kw_only=True):
    """One measured run against one server."""

    target: str
    round: int
    conns: int
    depth: int
    procs: int
    size: int
    warmup_s: float
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
