"""`tickwire bench compare A.json B.json`: what changed between two bench results.

Both files are `--json` outputs of `bench echo` or `bench scenario`. Runs are grouped by
target (tickwire, baseline, external); a report with several rounds of one target stands
for the median of them. Targets present in both files are compared; when each file
holds exactly one target and they differ (a tickwire run against an external server's),
those two are compared. Load shapes that differ (connections, depth, rate, size,
processes, scenario) are listed: a difference in latency between an open-loop run at
500/s and a closed-loop run at depth 8 says nothing about the server.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import msgspec

from bench.results import EchoReport, EchoRun
from bench.workers import BenchError


class NotABenchResult(BenchError):
    """The file is not a `bench echo` or `bench scenario` JSON result."""


class Metric(msgspec.Struct, frozen=True):
    name: str
    a: float
    b: float
    #: True when larger is better (replies/s); False for latency and errors; None for
    #: context that is neither (CPU use: it says what was saturated, not who won).
    higher_is_better: bool | None

    @property
    def ratio(self) -> float | None:
        return self.b / self.a if self.a else None

    @property
    def change_pct(self) -> float | None:
        return 100.0 * (self.b - self.a) / self.a if self.a else None

    @property
    def better(self) -> bool | None:
        """Whether B is better than A on this metric; None when they are equal."""
        if self.a == self.b or self.higher_is_better is None:
            return None
        return (self.b > self.a) == self.higher_is_better


class TargetDiff(msgspec.Struct, frozen=True):
    label: str
    runs_a: int
    runs_b: int
    metrics: list[Metric]
    #: "what: A vs B" for every load parameter that differs.
    shape_differences: list[str]
    #: Highest "other CPU" % of A's and of B's runs (None: unknown): a busy machine
    #: makes its numbers incomparable to a quiet one's.
    other_cpu_a: float | None = None
    other_cpu_b: float | None = None


def load_report(path: str | Path) -> EchoReport:
    """An echo, scenario or login report from `path`, or NotABenchResult saying why not."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise NotABenchResult(f"{path}: {exc.strerror or exc}") from None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise NotABenchResult(f"{path} is not JSON ({exc})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "idle":
        raise NotABenchResult(
            f"{path} is an idle bench result; compare works on echo, scenario and login results"
        )
    if kind == "restore":
        raise NotABenchResult(
            f"{path} is a restore bench result; compare works on echo, scenario and login results"
        )
    if kind not in ("echo", "scenario", "login"):
        raise NotABenchResult(
            f'{path} is not a tickwire bench result (no "kind": "echo", "scenario" or "login"; '
            "write one with `tickwire bench echo --json FILE`)"
        )
    try:
        report = msgspec.convert(data, EchoReport)
    except msgspec.ValidationError as exc:
        raise NotABenchResult(f"{path} is not a valid {kind} bench result: {exc}") from None
    if not report.runs:
        raise NotABenchResult(f"{path} holds no runs")
    return report


def _by_target(report: EchoReport) -> dict[str, list[EchoRun]]:
    groups: dict[str, list[EchoRun]] = {}
    for run in report.runs:
        groups.setdefault(run.target, []).append(run)
    return groups


def _median(runs: list[EchoRun], field: str) -> float | None:
    values = [getattr(r, field) for r in runs]
    known = [float(v) for v in values if v is not None]
    return float(statistics.median(known)) if known else None


def _highest(runs: list[EchoRun], field: str) -> float | None:
    known = [float(v) for r in runs if (v := getattr(r, field)) is not None]
    return max(known) if known else None


_METRICS: list[tuple[str, str, bool | None]] = [
    ("replies/s", "replies_per_s", True),
    ("p50 µs", "p50_us", False),
    ("p90 µs", "p90_us", False),
    ("p99 µs", "p99_us", False),
    ("p99.9 µs", "p999_us", False),
    ("max µs", "max_us", False),
    ("errors", "errors", False),
    ("server CPU %", "server_cpu_pct", None),
    ("loadgen CPU %", "client_cpu_pct", None),
    ("other CPU %", "other_cpu_pct", None),
]

_SHAPE = [
    ("mode", "mode"),
    ("scenario", "scenario"),
    ("conns", "conns"),
    ("depth", "depth"),
    ("rate", "rate"),
    ("size", "size"),
    ("procs", "procs"),
    ("duration", "duration_s"),
    ("requests", "requests"),
    ("cpu pin", "cpu_pin"),
    ("store", "store"),
    ("scrypt n", "scrypt_n"),
]


def diff_runs(label: str, a: list[EchoRun], b: list[EchoRun]) -> TargetDiff:
    metrics = []
    for name, field, higher_is_better in _METRICS:
        va, vb = _median(a, field), _median(b, field)
        if va is not None and vb is not None:
            metrics.append(Metric(name, va, vb, higher_is_better))
    shape = []
    for name, field in _SHAPE:
        in_a: set[object] = {getattr(r, field) for r in a}
        in_b: set[object] = {getattr(r, field) for r in b}
        if in_a != in_b:
            shape.append(f"{name}: {_show(in_a)} vs {_show(in_b)}")
    return TargetDiff(
        label,
        len(a),
        len(b),
        metrics,
        shape,
        other_cpu_a=_highest(a, "other_cpu_pct"),
        other_cpu_b=_highest(b, "other_cpu_pct"),
    )


def _show(values: set[object]) -> str:
    return "/".join(sorted(str(v) for v in values))


def diff_reports(a: EchoReport, b: EchoReport) -> list[TargetDiff]:
    ta, tb = _by_target(a), _by_target(b)
    common = [t for t in ta if t in tb]
    if common:
        return [diff_runs(t, ta[t], tb[t]) for t in common]
    if len(ta) == 1 and len(tb) == 1:
        [(name_a, runs_a)] = ta.items()
        [(name_b, runs_b)] = tb.items()
        return [diff_runs(f"{name_a} vs {name_b}", runs_a, runs_b)]
    raise BenchError(
        f"the results share no target (A: {', '.join(ta)}; B: {', '.join(tb)}), "
        "and one of them holds several"
    )
