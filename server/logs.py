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
