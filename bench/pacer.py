"""A wake-up at an absolute CLOCK_MONOTONIC time, precise to tens of microseconds.

The open-loop generator sends every request at its own scheduled time and measures its
latency from that time, so a generator that wakes late adds its lateness to every
latency it reports. The event loop's own timers are too coarse for that: uvloop (libuv)
counts time in whole milliseconds, so `asyncio.sleep(0.0004)` returns at once and
`asyncio.sleep(0.0015)` on a whole millisecond. Spinning on `sleep(0)` would be
precise but would burn a core that the server under test needs.

On Linux a timerfd armed with an absolute time becomes readable when that time passes,
and the event loop watches it like a socket: one epoll wake-up, tens of µs late at the
median (docs/bench.md, "Open loop", has the figures). Python
3.11 has no `os.timerfd_*` (3.13 has), so it is reached through ctypes. Elsewhere the
pacer falls back to `loop.call_at`, with the loop's millisecond granularity.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        create = libc.timerfd_create
        settime = libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.c_void_p,
    ]
    settime.restype = ctypes.c_int
    return libc


class Pacer:
    """Calls `callback()` in the event loop once CLOCK_MONOTONIC (`time.monotonic_ns`)
    reaches the time given to `arm_at`. One pending wake-up at a time; arming again
    replaces it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        self._spec = _Itimerspec()
        libc = _libc()
        self._libc = libc
        if libc is not None:
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        """True when wake-ups come from a timerfd, False on the loop's ms timers."""
        return self._fd >= 0

    def arm_at(self, when_ns: int) -> None:
        if self._fd >= 0:
            assert self._libc is not None
            # An absolute time of 0 would disarm the timer; anything in the past fires now.
            sec, nsec = divmod(max(1, when_ns), 1_000_000_000)
            value = self._spec.it_value
            value.tv_sec = sec
            value.tv_nsec = nsec
            if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec, None) == 0:
                return
            # Should not happen; if it does, keep pacing on the loop's timers.
            self._close_fd()
        if self._handle is not None:
            self._handle.cancel()
        delay = (when_ns - time.monotonic_ns()) / 1e9
        self._handle = self._loop.call_at(self._loop.time() + max(0.0, delay), self._callback)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return  # re-armed in between; the new time has not come yet
        self._callback()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._close_fd()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
