"""`tickwire serve --processes N`: a parent that runs N worker processes on one listening
socket, each a node of the cluster (docs/scaling.md, "Many processes on one box").

The parent binds the socket once and hands it to every worker as an inherited descriptor
(the same ``_TICKWIRE_LISTEN_FD`` a zero-downtime restart uses), so all of them accept
from one kernel queue and the port never stops answering. The parent serves no client
itself; it only:

- starts the workers, each told (by the ready pipe a restart's successor uses) to report
  when it serves;
- restarts a worker that exits when nobody asked it to, after a back-off that starts at
  0.5 s and doubles up to 30 s while workers keep dying young (a worker that served for
  30 s resets it), so a worker that cannot start does not spin the box;
- on SIGTERM or SIGINT, passes it to every worker and exits once they have drained;
- on SIGHUP, restarts the workers one at a time: a new worker on the same socket reports
  ready before the old one is told to drain, so capacity never drops by more than one
  worker and no connection attempt is refused. ``tickwire restart --pid-file`` waits for
  it through ``<pid_file>.workers``, the workers' pids, rewritten at every change.

Workers are named ``<node_id or hostname>-<slot>.<generation>``: unique, even while an
old worker drains beside its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from server.config import ServerConfig
from server.lifecycle import LISTEN_FD_ENV, READY_FD_ENV, read_ready, remove_pid_file

log = logging.getLogger("tickwire.supervisor")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that served this long before exiting resets the back-off.
HEALTHY_AFTER = 30.0


def worker_argv(argv: list[str]) -> list[str]:
    """The serve command line of a worker: the parent's, without --processes."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


class Worker:
    def __init__(self, slot: int, generation: int, proc: asyncio.subprocess.Process) -> None:
        self.slot = slot
        self.generation = generation
        self.proc = proc
        self.started = asyncio.get_running_loop().time()
        #: Asked to stop (a drain or a rolling restart): its exit is not a crash.
        self.retiring = False


class Supervisor:
    def __init__(self, config: ServerConfig, argv: list[str]) -> None:
        self.config = config
        self.argv = worker_argv(argv)
        self.base = config.node_id or socket.gethostname()
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.stopping = False
        self.sock: socket.socket | None = None
        self._backoff = BACKOFF_FIRST
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarting = False

    # -- workers ------------------------------------------------------------------------

    async def _spawn(self, slot: int) -> Worker | None:
        """Start a worker in `slot` and wait until it serves; None if it did not."""
        assert self.sock is not None
        self.generation += 1
        generation = self.generation
        listen_fd = self.sock.fileno()
        ready_r, ready_w = os.pipe()
        env = dict(os.environ, **{LISTEN_FD_ENV: str(listen_fd), READY_FD_ENV: str(ready_w)})
        command = [
            *self.argv,
            "--set",
            "processes=1",
            "--set",
            "pid_file=",
            "--set",
            f"node_id={self.base}-{slot}.{generation}",
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.cli", *command, env=env, pass_fds=(listen_fd, ready_w)
            )
        except OSError as exc:
            os.close(ready_r)
            os.close(ready_w)
            log.error("cannot start worker %d: %s", slot, exc)
            return None
        os.close(ready_w)
        try:
            line = await read_ready(ready_r)
        finally:
            os.close(ready_r)
        if line != b"ready\n":
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            log.error("worker %d did not start (exit code %s)", slot, code)
            return None
        worker = Worker(slot, generation, proc)
        self.workers[slot] = worker
        self._write_workers()
        log.info("worker %d serving (pid %d)", slot, proc.pid)
        task = asyncio.get_running_loop().create_task(self._watch(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return worker

    async def _watch(self, worker: Worker) -> None:
        code = await worker.proc.wait()
        if worker.retiring or self.stopping:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - worker.started >= HEALTHY_AFTER:
            self._backoff = BACKOFF_FIRST
        log.warning(
            "worker %d (pid %d) exited with code %s; restarting it in %g s",
            worker.slot,
            worker.proc.pid,
            code,
            self._backoff,
        )
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
            self._write_workers()
        await self._start_slot(worker.slot)

    async def _start_slot(self, slot: int) -> None:
        while not self.stopping:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            if self.stopping or await self._spawn(slot) is not None:
                return

    async def rolling_restart(self) -> None:
        """A new worker per slot, ready before the old one drains; one slot at a time."""
        if self._restarting:
            log.warning("restart already in progress; SIGHUP ignored")
            return
        self._restarting = True
        try:
            for slot in sorted(self.workers):
                old = self.workers.get(slot)
                if old is None or self.stopping:
                    continue
                old.retiring = True
                if await self._spawn(slot) is None:
                    old.retiring = False
                    log.error("restart: worker %d's successor failed; the old one serves on", slot)
                    return
                old.proc.send_signal(signal.SIGTERM)
                await old.proc.wait()
            log.info("restart: every worker replaced")
        finally:
            self._restarting = False

    def _write_workers(self) -> None:
        path = self.config.pid_file
        if path:
            pids = " ".join(str(w.proc.pid) for _, w in sorted(self.workers.items()))
            tmp = Path(f"{path}.workers.tmp")
            tmp.write_text(pids + "\n")
            tmp.replace(f"{path}.workers")

    # -- the parent ----------------------------------------------------------------------

    async def run(self) -> int:
        config = self.config
        self.sock = socket.create_server(
            (config.host, config.port), backlog=config.backlog, reuse_port=False
        )
        self.sock.set_inheritable(True)
        host, port = self.sock.getsockname()[:2]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop() -> None:
            stop.set()

        def on_hup() -> None:
            if not self.stopping:
                task = loop.create_task(self.rolling_restart())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if config.pid_file:
            tmp = Path(f"{config.pid_file}.tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(config.pid_file)
        log.info("supervising %d workers on %s:%d", config.processes, host, port)
        for slot in range(1, config.processes + 1):
            if await self._spawn(slot) is None:
                task = loop.create_task(self._start_slot(slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await stop.wait()
        self.stopping = True
        log.info("stopping: draining %d workers", len(self.workers))
        workers = list(self.workers.values())
        for worker in workers:
            worker.retiring = True
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(w.proc.wait() for w in workers))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close()
        if config.pid_file:
            with contextlib.suppress(OSError):
                Path(f"{config.pid_file}.workers").unlink()
        remove_pid_file(config.pid_file)
        log.info("stopped")
        return 0


def supervise(config: ServerConfig, argv: list[str]) -> int:
    """Run the parent of `config.processes` workers until SIGTERM or SIGINT."""
    return asyncio.run(Supervisor(config, argv).run())
