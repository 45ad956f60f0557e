"""tickwire's server: apps and handlers, the connection adapter, the dispatch pool."""

from server.app import App, Context, Kind, Route
from server.config import ConfigError, ServerConfig, load_config
from server.connection import CloseReason, Connection
from server.errors import HandlerError
from server.lifecycle import run
from server.middleware import Counters, Deadline, ErrorRecovery, Middleware
from server.server import Server

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
