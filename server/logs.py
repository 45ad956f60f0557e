"""Logging setup: readable text or one JSON object per line, to stderr.

Log calls put their structured fields in ``extra`` (``log.info("connection closed",
extra={"peer": ..., "reason": ...})``); the text format appends them as ``key=value``, the
JSON format as keys of the object. Nothing on the per-frame path logs unless debug is on.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


#: A field value longer than this is cut (a peer-chosen user name may be 1 MiB).
MAX_FIELD = 200


def _field(value: Any) -> str:
    """A field as one safe token: values that came from peers (user names, say) may hold
    newlines or spaces that would forge or split log lines, so such a value is quoted
    with its control characters escaped, and any value is cut at MAX_FIELD characters."""
    text = str(value)
    if len(text) > MAX_FIELD:
        text = text[:MAX_FIELD] + f"...({len(text)} chars)"
    if not text.isprintable() or " " in text or '"' in text or not text:
        return repr(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_field(v)}" for k, v in _extra(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # JSON escapes control characters itself; only the length needs a bound.
        entry.update(
            {
                k: v[:MAX_FIELD] + f"...({len(v)} chars)"
                if isinstance(v, str) and len(v) > MAX_FIELD
                else v
                for k, v in _extra(record).items()
            }
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return self._encoder.encode(entry).decode()
        except TypeError:
            # A field msgspec cannot encode: write it as its str() rather than lose the line.
            safe = {
                k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in entry.items()
            }
            return self._encoder.encode(safe).decode()


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one writing `fmt` lines to `stream`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _address(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "?"


class ConnectionLog:
    """The "connection open" and "connection closed" lines, bounded under a flood.

    One line per connection helps while connections come one at a time; a flood of
    short connections would otherwise write two lines each and turn the log into the
    bottleneck (and the disk into the victim). Up to `per_second` lines are written in
    each one-second window; past that the rest are only counted, and the first call
    after the window (or the sweep's `flush`) writes one summary line with the counts
    and the close reasons. So at most `per_second + 1` lines a second, whatever comes.
    """

    __slots__ = ("_closed", "_lines", "_log", "_opened", "_reasons", "_window", "per_second")

    def __init__(self, logger: logging.Logger, per_second: int) -> None:
        self._log = logger
        #: Lines written one by one per window; 0: every connection gets its lines.
        self.per_second = per_second
        self._window = time.monotonic()
        self._lines = 0
        self._opened = 0
        self._closed = 0
        self._reasons: dict[str, int] = {}

    def opened(self, conn_id: int, peer: Any) -> None:
        if self._room():
            self._log.info("connection open", extra={"conn": conn_id, "peer": _address(peer)})
        else:
            self._opened += 1

    def closed(self, conn_id: int, peer: Any, reason: str) -> None:
        if self._room():
            self._log.info(
                "connection closed",
                extra={"conn": conn_id, "peer": _address(peer), "reason": str(reason)},
            )
        else:
            self._closed += 1
            key = str(reason)
            self._reasons[key] = self._reasons.get(key, 0) + 1

    def _room(self) -> bool:
        if not self.per_second:
            return True
        if time.monotonic() - self._window >= 1.0:
            self.flush()
        if self._lines < self.per_second:
            self._lines += 1
            return True
        return False

    def flush(self) -> None:
        """End the window if it is over: write the summary of what was only counted."""
        now = time.monotonic()
        if now - self._window < 1.0:
            return
        if self._opened or self._closed:
            reasons = ",".join(f"{k}:{v}" for k, v in sorted(self._reasons.items()))
            self._log.warning(
                "connection flood: %d opened and %d closed in %.1f s past %d lines a second, "
                "counted here instead",
                self._opened,
                self._closed,
                now - self._window,
                self.per_second,
                extra={"opened": self._opened, "closed": self._closed, "reasons": reasons or "-"},
            )
        self._window = now
        self._lines = 0
        self._opened = self._closed = 0
        self._reasons = {}
