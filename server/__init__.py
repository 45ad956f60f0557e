"""tickwire's server: apps and handlers, the connection adapter, the dispatch pool.

The names below load on first use (PEP 562), so importing one small module such as
``server.config`` (the CLI does, for every command) does not import the whole server,
asyncio machinery and prometheus_client included.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.app import App, Context, Kind, Route
    from server.config import ConfigError, ServerConfig, load_config
    from server.connection import CloseReason, Connection
    from server.errors import HandlerError
    from server.lifecycle import run
    from server.middleware import Counters, Deadline, ErrorRecovery, Middleware
    from server.server import Server

_WHERE = {
    "App": "server.app",
    "Context": "server.app",
    "Kind": "server.app",
    "Route": "server.app",
    "ConfigError": "server.config",
    "ServerConfig": "server.config",
    "load_config": "server.config",
    "CloseReason": "server.connection",
    "Connection": "server.connection",
    "HandlerError": "server.errors",
    "run": "server.lifecycle",
    "Counters": "server.middleware",
    "Deadline": "server.middleware",
    "ErrorRecovery": "server.middleware",
    "Middleware": "server.middleware",
    "Server": "server.server",
}

__all__ = [
    "App",
    "CloseReason",
    "ConfigError",
    "Connection",
    "Context",
    "Counters",
    "Deadline",
    "ErrorRecovery",
    "HandlerError",
    "Kind",
    "Middleware",
    "Route",
    "Server",
    "ServerConfig",
    "load_config",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time, a plain attribute
    return value
