"""Timers owned by the server, and the runner of the apps' lifecycle hooks.

Why a registry instead of ``loop.call_later`` and ``create_task`` in app code: a task an
app starts by itself is invisible to the server. A stop cancels it at some point of its
body with nothing awaited, and a handler reload leaves it running the old module's code
against the old objects while the new handlers see new ones. Every timer made here
belongs to the server, so a stop (and a reload, for the generation it replaces) ends
them all at one known point, lets a body in progress finish, and counts what they do.

Timers never overlap themselves: a body still running (an awaited one) when its next
run is due makes that run skipped and counted as an overrun, and so does a run missed
because the loop was held past it. The schedule is fixed-rate (runs at ``start + k *
interval``), so lateness does not drift it.

An exception from a body is logged with its traceback at most once a minute per timer
name (the rest are counted and summed in the next line), and the timer goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("tickwire.timers")

#: Seconds a timer name stays quiet in the log after its body raised (the rest counted).
ERROR_LOG_INTERVAL = 60.0

#: Distinct timer names kept as metric labels; past it, new names count as "other", so a
#: name built per match or per user cannot grow the metrics without bound.
MAX_TIMER_NAMES = 1000

#: Seconds a body that was cancelled (it outran the stop's wait) gets to unwind.
CANCEL_GRACE = 1.0


class TimerError(Exception):
    """A timer cannot be made."""


class TooManyTimers(TimerError):
    """The server holds `max_timers` timers already."""


class TimersClosed(TimerError):
    """The server is stopping: no new timers."""


class ReloadRefused(Exception):
    """A handler reload would leave state or timers behind; the message says which app
    and why. Nothing changed."""


class HookError(Exception):
    """An on_start (or on_reload) hook raised or ran past `hook_timeout`; the message
    names the app and the hook."""


def describe(fn: Callable[..., Any]) -> str:
    """A function's name as logs and metric labels show it: module.qualname."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


class Timer:
    """The handle of a timer: `cancel()` stops its future runs."""

    __slots__ = (
        "_handle",
        "_timers",
        "args",
        "cancelled",
        "declared",
        "due",
        "fn",
        "generation",
        "interval",
        "jitter",
        "label",
        "name",
        "repeat",
        "task",
    )

    def __init__(
        self,
        timers: Timers,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        name: str,
        interval: float,
        jitter: float,
        repeat: bool,
        declared: bool,
    ) -> None:
        self._timers = timers
        self.fn = fn
        self.args = args
        self.name = name
        #: The metric label: the name, or "other" past MAX_TIMER_NAMES names.
        self.label = timers.label_for(name)
        self.interval = interval
        self.jitter = jitter
        self.repeat = repeat
        #: Made from an `@app.every` declaration (the server restarts those at a reload).
        self.declared = declared
        #: The app generation it belongs to: a reload ends the ones of the old generation.
        self.generation = timers.generation
        self.cancelled = False
        #: The nominal time (loop clock) of the next run, before jitter.
        self.due = 0.0
        #: The running body of an async timer, None between runs.
        self.task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        """No more runs. A body already running is not interrupted: it finishes (a stop
        awaits it)."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.task is None:
            self._timers.forget(self)

    @property
    def running(self) -> bool:
        """Whether its body is being awaited now."""
        return self.task is not None

    def __repr__(self) -> str:
        kind = f"every {self.interval:g} s" if self.repeat else "once"
        state = "cancelled" if self.cancelled else "running" if self.running else "waiting"
        return f"<Timer {self.name} {kind} {state}>"


class Timers:
    """The server's timers: scheduling, the bound on their number, counters, and stop."""

    def __init__(self, max_timers: int = 100_000) -> None:
        self.max_timers = max_timers
        #: Timers that are scheduled or have a body running.
        self.live: set[Timer] = set()
        #: Bumped by a handler reload; timers are tagged with the one in force.
        self.generation = 0
        self.closed = False
        #: Per metric label: bodies run, runs skipped, bodies that raised.
        self.runs: dict[str, int] = {}
        self.overruns: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._quiet_until: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.closed = False

    def label_for(self, name: str) -> str:
        if name in self.runs or len(self.runs) < MAX_TIMER_NAMES:
            self.runs.setdefault(name, 0)
            self.overruns.setdefault(name, 0)
            self.errors.setdefault(name, 0)
            return name
        self.runs.setdefault("other", 0)
        self.overruns.setdefault("other", 0)
        self.errors.setdefault("other", 0)
        return "other"

    # -- making timers ----------------------------------------------------------------

    def call_later(
        self, delay: float, fn: Callable[..., Any], *args: Any, name: str | None = None
    ) -> Timer:
        """Run `fn(*args)` once, `delay` seconds from now (sync or async)."""
        if not delay >= 0 or math.isinf(delay):
            raise ValueError(f"delay must be a finite number >= 0, not {delay!r}")
        timer = self._add(fn, args, name, interval=0.0, jitter=0.0, repeat=False)
        loop = self._running_loop()
        timer.due = loop.time() + delay
        self._schedule(timer, timer.due)
        return timer

    def every(
        self,
        interval: float,
        fn: Callable[..., Any],
        *args: Any,
        jitter: float = 0.0,
        align: bool = False,
        name: str | None = None,
        declared: bool = False,
    ) -> Timer:
        """Run `fn(*args)` every `interval` seconds, the first run one interval from now
        (with `align`, at the next multiple of `interval` on the wall clock), each run
        up to `jitter` seconds after its nominal time."""
        check_every(interval, jitter)
        timer = self._add(fn, args, name, interval=interval, jitter=jitter, repeat=True)
        timer.declared = declared
        loop = self._running_loop()
        now = loop.time()
        if align:
            timer.due = now + (interval - time.time() % interval)
        else:
            timer.due = now + interval
        self._schedule(timer, timer.due + self._jitter(timer))
        return timer

    def _add(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        name: str | None,
        *,
        interval: float,
        jitter: float,
        repeat: bool,
    ) -> Timer:
        if self.closed:
            raise TimersClosed("the server is stopping: no new timers")
        if len(self.live) >= self.max_timers:
            raise TooManyTimers(
                f"the server holds {len(self.live)} timers, its limit (max_timers); "
                "cancel the ones no longer needed"
            )
        timer = Timer(
            self,
            fn,
            args,
            name=name or describe(fn),
            interval=interval,
            jitter=jitter,
            repeat=repeat,
            declared=False,
        )
        self.live.add(timer)
        return timer

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise TimerError("the server has not started: timers need its loop")
        return self._loop

    @staticmethod
    def _jitter(timer: Timer) -> float:
        return random.uniform(0.0, timer.jitter) if timer.jitter else 0.0

    def _schedule(self, timer: Timer, when: float) -> None:
        timer._handle = self._running_loop().call_at(when, self._fire, timer)

    def forget(self, timer: Timer) -> None:
        self.live.discard(timer)

    # -- running them -----------------------------------------------------------------

    def _fire(self, timer: Timer) -> None:
        timer._handle = None
        if timer.cancelled:
            return
        if timer.repeat:
            # Next first, so a body that cancels its own timer cancels this.
            now = self._running_loop().time()
            timer.due += timer.interval
            if timer.due <= now:
                missed = math.floor((now - timer.due) / timer.interval) + 1
                timer.due += missed * timer.interval
                self.overruns[timer.label] += missed
            self._schedule(timer, timer.due + self._jitter(timer))
        if timer.task is not None:
            self.overruns[timer.label] += 1
            return
        self.runs[timer.label] += 1
        try:
            result = timer.fn(*timer.args)
        except Exception as exc:
            self._failed(timer, exc)
            result = None
        if inspect.isawaitable(result):
            timer.task = self._running_loop().create_task(
                self._await(timer, result), name=f"tickwire-timer {timer.name}"
            )
        elif not timer.repeat:
            timer.cancelled = True
            self.forget(timer)

    async def _await(self, timer: Timer, body: Awaitable[Any]) -> None:
        try:
            await body
        except Exception as exc:
            self._failed(timer, exc)
        finally:
            timer.task = None
            if timer.cancelled or not timer.repeat:
                timer.cancelled = True
                self.forget(timer)

    def _failed(self, timer: Timer, exc: Exception) -> None:
        label = timer.label
        self.errors[label] += 1
        now = time.monotonic()
        if now < self._quiet_until.get(label, 0.0):
            self._suppressed[label] = self._suppressed.get(label, 0) + 1
            return
        more = self._suppressed.pop(label, 0)
        self._quiet_until[label] = now + ERROR_LOG_INTERVAL
        log.error(
            "timer %s raised; it goes on%s; its next error is logged in %g s at the soonest",
            timer.name,
            f" ({more} more errors since the last report)" if more else "",
            ERROR_LOG_INTERVAL,
            exc_info=exc,
        )

    # -- stopping ---------------------------------------------------------------------

    async def stop(self, timeout: float, *, generation: int | None = None) -> None:
        """Cancel every timer (of `generation` and older, or all of them and refuse new
        ones), then await the bodies still running, up to `timeout` seconds, and cancel
        what outlasts it. Timers the bodies make meanwhile are cancelled as well."""
        if generation is None:
            self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            doomed = [t for t in self.live if generation is None or t.generation <= generation]
            if not doomed:
                return
            for timer in doomed:
                timer.cancel()
            running = {t.task for t in doomed if t.task is not None}
            if not running:
                continue
            left = deadline - loop.time()
            _, pending = await asyncio.wait(running, timeout=max(0.0, left))
            if pending:
                self._abandon(pending, doomed, timeout)
                await asyncio.wait(pending, timeout=CANCEL_GRACE)
                for timer in doomed:
                    self.forget(timer)

    def _abandon(
        self, pending: Iterable[asyncio.Task[None]], doomed: list[Timer], timeout: float
    ) -> None:
        tasks = set(pending)
        names = sorted({t.name for t in doomed if t.task in tasks})
        log.warning(
            "%d timer bodies still running %g s after the stop asked them to end; cancelled: %s",
            len(tasks),
            timeout,
            ", ".join(names),
        )
        for task in tasks:
            task.cancel()


def check_every(interval: float, jitter: float) -> None:
    """Refuse a period or jitter no schedule can keep, at the call that makes it."""
    if not interval > 0 or math.isinf(interval):
        raise ValueError(f"interval must be a finite number > 0, not {interval!r}")
    if not 0 <= jitter <= interval:
        raise ValueError(
            f"jitter must be between 0 and the interval ({interval:g}), not {jitter!r}"
        )


async def run_hook(
    hook: Callable[..., Any], args: tuple[Any, ...], *, app: str, kind: str, timeout: float
) -> None:
    """Call one lifecycle hook; raise HookError naming `app` and the hook when it raises
    or its awaitable outlasts `timeout` (a plain function runs inline, unbounded: it
    holds the loop, so nothing could time it out)."""
    what = f"{kind} hook {describe(hook)} of app {app!r}"
    scope: asyncio.Timeout | None = None
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            async with asyncio.timeout(timeout) as scope:
                await result
    except Exception as exc:
        if scope is not None and scope.expired():
            raise HookError(f"{what} did not finish within {timeout:g} s (hook_timeout)") from exc
        raise HookError(f"{what} failed: {exc!r}") from exc
