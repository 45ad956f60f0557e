"""Running a session: commands from a script or a pipe (`run_lines`), or the
interactive prompt (`run_interactive`); and the exit codes of `tickwire client`.

prompt_toolkit is imported only when `run_interactive` runs, which keeps script mode
quick to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO

from tools.repl.completion import make_completer
from tools.repl.events import client_error
from tools.repl.parsing import split_command
from tools.repl.session import Session

#: Exit codes of `tickwire client` (docs/tools.md lists them).
EXIT_OK = 0
#: At least one command failed: an Error reply, a timeout, bad input, an unknown command.
EXIT_FAILED = 1
#: Bad arguments, or a script file that cannot be read.
EXIT_USAGE = 2
#: Could not connect or Describe failed, or the server closed the connection before
#: every command had run.
EXIT_CONNECTION = 3


async def run_lines(
    session: Session,
    lines: AsyncIterator[str] | Iterable[str],
    *,
    echo: bool = True,
    stop_on_error: bool = False,
) -> int:
    """Run commands one by one; the exit code (EXIT_*) for what happened."""
    lineno = 0
    remaining = False

    async def each() -> AsyncIterator[str]:
        if isinstance(lines, AsyncIterator):
            async for item in lines:
                yield item
        else:
            for item in lines:
                yield item

    async for line in each():
        lineno += 1
        if split_command(line) is None:
            continue
        if session.client.closed:
            remaining = True
            session.failures += 1
            message = f"the connection is closed: line {lineno} and after were not run"
            session.printer.event(client_error("closed", message, line=lineno))
            break
        if echo:
            session.printer.echo(line.strip(), lineno)
        before = session.failures
        if not await session.execute(line, lineno):
            break
        if stop_on_error and session.failures > before:
            break
    return exit_code(session, remaining)


def exit_code(session: Session, commands_left: bool = False) -> int:
    if session.lost and commands_left:
        return EXIT_CONNECTION
    return EXIT_FAILED if session.failures else EXIT_OK


def read_lines_async(stream: IO[str]) -> AsyncIterator[str]:
    """Lines of a file or pipe as they come (a reader thread), so `producer | tickwire
    client` runs each command when it arrives instead of after the producer ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                loop.call_soon_threadsafe(queue.put_nowait, None)

    # A daemon thread: a pipe that never closes must not keep the process alive.
    threading.Thread(target=reader, name="tickwire-stdin", daemon=True).start()

    async def lines() -> AsyncIterator[str]:
        while (line := await queue.get()) is not None:
            yield line

    return lines()


def history_path(option: str | None, environ: dict[str, str] | None = None) -> Path:
    """--history FILE, else $TICKWIRE_HISTORY, else ~/.tickwire_history."""
    import os

    env = os.environ if environ is None else environ
    chosen = option or env.get("TICKWIRE_HISTORY") or "~/.tickwire_history"
    return Path(chosen).expanduser()


def prompt_text(session: Session) -> str:
    """`HOST:PORT> `, with `USER@` in front while the connection is logged in."""
    logged_in = session.client.session
    who = f"{logged_in.user_id}@" if logged_in is not None else ""
    return f"{who}{session.address}> "


async def run_interactive(session: Session, history: Path) -> int:
    """The prompt_toolkit REPL. Pushes print above the prompt while the user types
    (patch_stdout); Ctrl-C abandons the running command, not the session."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    store: History
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.touch(exist_ok=True)
        store = FileHistory(str(history))
    except OSError as exc:
        session.printer.event({"type": "info", "message": f"no history file: {exc}"})
        store = InMemoryHistory()
    prompt: PromptSession[str] = PromptSession(
        history=store,
        completer=make_completer(lambda: session.registry),
        auto_suggest=AutoSuggestFromHistory(),
        complete_while_typing=False,
    )
    loop = asyncio.get_running_loop()

    async def end_prompt_when_closed() -> None:
        await session.client.wait_closed()
        if prompt.app.is_running:
            prompt.app.exit(exception=EOFError())

    watcher = asyncio.ensure_future(end_prompt_when_closed())
    try:
        with patch_stdout(raw=True):
            while not session.client.closed:
                try:
                    line = await prompt.prompt_async(prompt_text(session))
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                task = asyncio.ensure_future(session.execute(line))
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signal.SIGINT, task.cancel)
                try:
                    if not await task:
                        break
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    session.printer.event(
                        {
                            "type": "info",
                            "message": "interrupted; a reply that still comes shows as late",
                        }
                    )
                finally:
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(signal.SIGINT)
    finally:
        watcher.cancel()
    return EXIT_CONNECTION if session.lost else EXIT_OK
