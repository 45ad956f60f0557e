"""The server as a long-running process: signals, drain, pid file, zero-downtime restart.

Restart (SIGHUP, or `tickwire restart --pid-file F`) keeps the listening socket open the
whole time, so no connection attempt is ever refused:

1. the running process starts its successor with the same command line, handing it the
   listening socket (inherited fd, ``_TICKWIRE_LISTEN_FD``) and the write end of a pipe
   (``_TICKWIRE_READY_FD``); the leading underscore keeps both out of the ``TICKWIRE_*``
   config namespace;
2. the successor builds its apps, starts serving on that socket (both processes now accept
   from the same kernel queue) and writes ``ready`` to the pipe;
3. only then does the old process drain (GoAway with a short reconnect_after_ms) and exit.

A successor that exits or stays silent (bad config, import error, crash) never takes over:
the old process logs why and goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from server.app import App
from server.auth import UsersFileError
from server.cluster import ClusterError
from server.config import ServerConfig
from server.reload import AppLoader, reload_into, watch
from server.server import Server
from server.store import StoreError
from server.timers import HookError

log = logging.getLogger("tickwire.lifecycle")

LISTEN_FD_ENV = "_TICKWIRE_LISTEN_FD"
READY_FD_ENV = "_TICKWIRE_READY_FD"
#: How long a successor may take to report ready before the restart is abandoned.
SUCCESSOR_TIMEOUT = 30.0
#: What clients of the old process are told: the successor is already accepting.
RESTART_RECONNECT_MS = 50


def inherited_socket() -> socket.socket | None:
    """The listening socket a predecessor handed over, if this process is a successor."""
    fd = os.environ.pop(LISTEN_FD_ENV, None)
    if fd is None:
        return None
    return socket.socket(fileno=int(fd))


def report_ready() -> None:
    """Tell the predecessor (if any) that this process serves now."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"ready\n")
    with contextlib.suppress(OSError):
        os.close(int(fd))


def write_pid_file(path: str) -> None:
    if path:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(path)  # atomic: a reader never sees half a pid


def remove_pid_file(path: str) -> None:
    """Remove the pid file only if it is still ours: after a restart it names the successor."""
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(Path(path).read_text().strip()) == os.getpid():
            Path(path).unlink()


class Restarter:
    """Starts a successor on the same listening socket and waits for it to be ready."""

    def __init__(self, server: Server, argv: list[str]) -> None:
        self.server = server
        self.argv = argv
        self.running = False

    async def restart(self) -> bool:
        """True when a successor reported ready (this process should now drain and exit)."""
        if self.running:
            log.warning("restart already in progress; SIGHUP ignored")
            return False
        self.running = True
        try:
            return await self._restart()
        finally:
            self.running = False

    async def _restart(self) -> bool:
        try:
            await self.server.before_handover()
        except StoreError as exc:
            log.error("restart: cannot write the store snapshot (%s); still serving", exc)
            return False
        listen_fd = self.server.listening_socket().fileno()
        ready_r, ready_w = os.pipe()
        env = dict(os.environ, **{LISTEN_FD_ENV: str(listen_fd), READY_FD_ENV: str(ready_w)})
        command = [sys.executable, "-m", "tools.cli", *self.argv]
        log.info("restart: starting successor", extra={"command": " ".join(command)})
        try:
            proc = subprocess.Popen(command, env=env, pass_fds=(listen_fd, ready_w))
        except OSError as exc:
            os.close(ready_r)
            os.close(ready_w)
            log.error("restart: cannot start successor: %s; still serving", exc)
            return False
        os.close(ready_w)  # only the successor holds the write end: EOF means it died
        try:
            line = await read_ready(ready_r)
        except asyncio.CancelledError:
            # This process is stopping mid-restart: the operator asked for no server,
            # so the successor must not come up and take over.
            proc.kill()
            proc.wait()
            log.warning("restart abandoned: stopping; successor %d killed", proc.pid)
            raise
        finally:
            os.close(ready_r)
        if line == b"ready\n":
            log.info("restart: successor %d is serving; draining this process", proc.pid)
            self.server.after_handover()
            return True
        code = proc.poll()
        if code is None:
            proc.kill()
            proc.wait()
            reason = f"no ready signal within {SUCCESSOR_TIMEOUT:g} s"
        else:
            reason = f"it exited with code {code} (its stderr says why)"
        log.error("restart: successor %d failed: %s; still serving", proc.pid, reason)
        return False


async def read_ready(fd: int) -> bytes:
    """What a starting process wrote to its ready pipe (b"ready\\n"), or b"" if it
    exited or stayed silent for SUCCESSOR_TIMEOUT seconds."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not done.done():
            done.set_result(data)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(SUCCESSOR_TIMEOUT):
            return await done
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(fd)


def run(
    *apps: App,
    config: ServerConfig | None = None,
    argv: list[str] | None = None,
    loader: AppLoader | None = None,
    autoreload: bool = False,
    on_started: Callable[[Server], Awaitable[None] | None] | None = None,
) -> int:
    """Run a server in the foreground on uvloop until SIGINT or SIGTERM; returns the exit
    code. `argv` (the command line after the program name) is what SIGHUP restarts with;
    without it, SIGHUP is ignored with a warning. With a `loader` (the apps' sources),
    SIGUSR1 reloads the handlers, and `autoreload` also reloads when their files change."""
    import uvloop

    config = config or ServerConfig()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        try:
            server = Server(*apps, config=config)
        except UsersFileError as exc:
            log.error("cannot start: %s", exc)
            return 2
        try:
            await server.start(sock=inherited_socket())
        except (StoreError, ClusterError) as exc:
            log.error("cannot start: %s", exc)
            return 2
        except HookError as exc:
            # The app's own error: its traceback is what the operator needs.
            log.error("cannot start: %s", exc, exc_info=exc.__cause__)
            return 2
        stop = asyncio.Event()
        reconnect_after_ms = 0
        restarter = Restarter(server, argv) if argv is not None else None
        tasks: set[asyncio.Task[None]] = set()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set() and sig == signal.SIGINT:
                # A second Ctrl-C: the operator does not want to wait for the drain.
                log.warning("second SIGINT: exiting without finishing the drain")
                os._exit(130)
            stop.set()

        async def restart() -> None:
            nonlocal reconnect_after_ms
            assert restarter is not None
            if await restarter.restart():
                reconnect_after_ms = RESTART_RECONNECT_MS
                stop.set()

        def on_hup() -> None:
            if stop.is_set():
                log.warning("SIGHUP while stopping: ignored")
                return
            if restarter is None:
                log.warning("SIGHUP: this server was not started from the command line; no restart")
                return
            tasks.add(task := loop.create_task(restart()))
            task.add_done_callback(tasks.discard)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        async def reload() -> None:
            assert loader is not None
            await reload_into(server, loader)

        def on_usr1() -> None:
            tasks.add(task := loop.create_task(reload()))
            task.add_done_callback(tasks.discard)

        if loader is not None:
            loop.add_signal_handler(signal.SIGUSR1, on_usr1)
            if autoreload:
                tasks.add(loop.create_task(watch(server, loader)))
        # Only now that every signal has its handler: a SIGHUP or SIGTERM sent the moment
        # the pid file or the listening line appears must not meet the default action.
        write_pid_file(config.pid_file)
        report_ready()
        host, port = server.address
        log.info("read fast path: %s", server.dispatcher.build)
        # Last: whoever waits for this line may rely on the pid file being written.
        log.info("tickwire listening on %s:%d", host, port)
        if on_started is not None:
            result = on_started(server)
            if result is not None:
                await result
        await stop.wait()
        log.info(
            "stopping: draining %d connections (up to %g s)",
            len(server.connections),
            config.drain_timeout,
        )
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a restart kills its successor
        await server.stop(timeout=config.drain_timeout, reconnect_after_ms=reconnect_after_ms)
        remove_pid_file(config.pid_file)
        log.info("stopped")
        return 0

    return uvloop.run(main())
