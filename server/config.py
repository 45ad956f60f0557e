"""The server's typed configuration: one flat msgspec Struct with defaults (as uvicorn's Config).

A TOML file is decoded straight into `ServerConfig`; an unknown key, a wrong type or an
out-of-range value fails at start with the key's path, never later at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.frame import DEFAULT_MAX_FRAME, MIN_LENGTH

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(ge=0)]


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 7000
    #: Largest `length` a frame may announce (PROTOCOL.md); above it: FRAME_TOO_LARGE, close.
    max_frame: Annotated[int, Meta(ge=MIN_LENGTH, le=0xFFFFFFFF)] = DEFAULT_MAX_FRAME
    #: Long-lived consumer tasks that await async and blocking handlers (bounded concurrency).
    consumers: Annotated[int, Meta(ge=1, le=100_000)] = 64
    #: Threads for handlers declared blocking.
    blocking_threads: Annotated[int, Meta(ge=1, le=1024)] = 16
    #: Frames queued on one connection before the server stops reading it (pause_reading).
    mailbox_limit: Positive = 512
    #: Frames queued across the server before new ones are answered OVERLOADED.
    max_pending: Positive = 200_000
    #: Connections the server holds; one more gets TOO_MANY_CONNECTIONS and is closed.
    max_connections: Positive = 100_000
    #: Close a connection that sent nothing for this long (IDLE_TIMEOUT); 0 disables.
    idle_timeout: Seconds = 300.0
    #: Deadline for async and blocking handlers (TIMEOUT); 0 disables.
    handler_timeout: Seconds = 30.0
    #: Bytes waiting in a connection's send buffer before it is cut off (SLOW_CONSUMER).
    slow_consumer_bytes: Positive = 8 * 1024 * 1024
    #: A connection whose peer has not read what we sent for this long is cut off
    #: (SLOW_CONSUMER), even if its buffered bytes stay under slow_consumer_bytes.
    slow_consumer_timeout: Annotated[float, Meta(gt=0)] = 30.0
    #: After a closing frame, how long a peer that reads nothing keeps its socket before abort.
    close_grace: Annotated[float, Meta(gt=0)] = 5.0
    #: Connections from one IP address; one more gets TOO_MANY_CONNECTIONS. 0: no limit.
    max_connections_per_ip: Annotated[int, Meta(ge=0)] = 0
    #: Period of the one sweep (for all connections) that applies idle_timeout,
    #: slow_consumer_timeout and close_grace; each is judged in whole periods.
    sweep_interval: Annotated[float, Meta(gt=0)] = 1.0
    backlog: Positive = 2048
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key path and what was expected."""


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Decode a TOML file (if given) into a ServerConfig, then apply non-None overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            data = msgspec.toml.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a TOML table at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, ServerConfig)
    except msgspec.ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
