"""The server under test as a process: start it, find its port, watch its CPU and memory.

A benchmark number means little unless we know what was saturated. Reading the server's
CPU time from /proc over the measured window tells whether the server ran at (close to)
one full core, i.e. it was the bottleneck, or sat waiting on a load generator that could
not keep up. Everything here is Linux-only (/proc, sched_setaffinity); elsewhere the
numbers come back as None and pinning is refused.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_LISTENING = re.compile(r"listening on (\S+):(\d+)\s*$")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_command(target: str, host: str) -> list[str]:
    """The command line that starts `target` on an ephemeral port.

    Both print ``tickwire listening on HOST:PORT`` to stderr once they accept connections;
    that line, not a guessed port, is how the bench finds them.

    ``--no-chat``: the system handlers only. `tickwire serve` runs the example chat app by
    default; no bench calls it, and the server under test carries no handlers the load
    does not use.
    """
    if target == "tickwire":
        serve = [sys.executable, "-m", "tools.cli", "serve", "--no-chat"]
        return [*serve, "--host", host, "--port", "0"]
    if target == "baseline":
        return [sys.executable, "-m", "bench.baseline", "--host", host, "--port", "0"]
    raise ValueError(f"unknown target {target!r}")


def subprocess_env() -> dict[str, str]:
    """Our environment with the project root importable, whatever the caller's cwd."""
    env = dict(os.environ)
    root = str(PROJECT_ROOT)
    paths = env.get("PYTHONPATH", "")
    if root not in paths.split(os.pathsep):
        env["PYTHONPATH"] = root + (os.pathsep + paths if paths else "")
    return env


class Endpoint(NamedTuple):
    """A server to load: where it listens, and its pid when known (to read /proc)."""

    host: str
    port: int
    pid: int | None


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    """A server subprocess whose stderr is drained by a thread.

    Draining matters: a server that logs to a pipe nobody reads blocks once the pipe's
    buffer is full, and the bench would measure that stall. The last lines are kept so a
    server that dies can be explained.
    """

    def __init__(self, cmd: list[str], *, start_timeout: float = 30.0) -> None:
        self.cmd = cmd
        self.start_timeout = start_timeout
        self.host = ""
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self._found: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        #: Lines the server wrote to stderr so far, and how many began a traceback.
        self.lines = 0
        self.tracebacks = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.pid)

    def tail(self) -> str:
        return "\n".join(self._tail)

    def start(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
            cwd=PROJECT_ROOT,
        )
        self._reader = threading.Thread(target=self._drain, name="server-stderr", daemon=True)
        self._reader.start()
        try:
            found = self._found.get(timeout=self.start_timeout)
        except queue.Empty:
            self.stop()
            raise ServerStartError(
                f"{' '.join(self.cmd)} printed no 'listening on HOST:PORT' line within "
                f"{self.start_timeout:.0f} s; its stderr:\n{self.tail()}"
            ) from None
        if found is None:
            code = self._proc.wait()
            raise ServerStartError(
                f"{' '.join(self.cmd)} exited with code {code} before listening; "
                f"its stderr:\n{self.tail()}"
            )
        self.host, self.port = found
        return self

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        announced = False
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            self.lines += 1
            if line.startswith("Traceback"):
                self.tracebacks += 1
            if not announced:
                match = _LISTENING.search(line)
                if match:
                    announced = True
                    host = match.group(1).strip("[]")
                    self._found.put((host, int(match.group(2))))
        if not announced:
            self._found.put(None)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=1.0)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- /proc readings -------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, so a server that forks workers is measured whole."""
    pids = [pid]
    i = 0
    while i < len(pids):
        task_dir = Path(f"/proc/{pids[i]}/task")
        with contextlib.suppress(OSError):
            for task in task_dir.iterdir():
                with contextlib.suppress(OSError):
                    pids.extend(int(c) for c in (task / "children").read_text().split())
        i += 1
    return pids


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process (all its threads), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; the fields after its last ')' are
    # state, ppid, ... with utime and stime at positions 14 and 15 of the full line.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float | None:
    total = None
    for p in process_tree(pid):
        seconds = cpu_seconds(p)
        if seconds is not None:
            total = (total or 0.0) + seconds
    return total


def rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB (the kernel reports kB, which are KiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuSampler:
    """CPU% of a set of processes between `start()` and `stop()`.

    100% is one core. A process that exits in between is counted up to its last sample.
    """

    def __init__(self, pids: list[int], *, tree: bool) -> None:
        self._pids = pids
        self._read = tree_cpu_seconds if tree else cpu_seconds
        self._t0 = 0.0
        self._cpu0: dict[int, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {}
        for pid in self._pids:
            seconds = self._read(pid)
            if seconds is not None:
                self._cpu0[pid] = seconds

    def stop(self) -> float | None:
        wall = time.monotonic() - self._t0
        if not self._cpu0 or wall <= 0:
            return None
        used = 0.0
        for pid, before in self._cpu0.items():
            after = self._read(pid)
            if after is not None:
                used += after - before
        return 100.0 * used / wall


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine spent busy: user + nice + system + irq + softirq.

    irq and softirq count because the utime + stime of our own processes can include
    interrupt work (loopback TCP is mostly softirq) that /proc/stat files under those
    columns; without them "other" can read 0% next to a busy process.
    What remains after our processes is other processes, plus interrupt work not charged
    to ours. steal (time the hypervisor gave to someone else) is not ours to count.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


class MachineSampler:
    """CPU% of the whole machine between `start()` and `stop()` (100% = one core)."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._busy0: float | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()

    def stop(self) -> float | None:
        wall = time.monotonic() - self._t0
        busy = machine_busy_seconds()
        if busy is None or self._busy0 is None or wall <= 0:
            return None
        return 100.0 * (busy - self._busy0) / wall


# -- placement and limits ---------------------------------------------------------------


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every existing thread of `pid`; threads it starts later inherit the mask."""
    tids = [pid]
    with contextlib.suppress(OSError):
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def raise_nofile_limit() -> int:
    """Lift the soft fd limit to the hard one: the idle bench holds thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
