"""tickwire's Python client SDK. It imports `protocol`, never `server`."""

from client_sdk.blocking import Client
from client_sdk.client import AsyncClient, Push
from client_sdk.errors import (
    BadFlags,
    BadFrame,
    ClientError,
    ConnectionClosed,
    DecodeFailed,
    FrameTooLarge,
    HandlerTimeout,
    IdleTimeout,
    InternalError,
    Overloaded,
    ServerError,
    ServerShutdown,
    SlowConsumer,
    TooManyConnections,
    UnknownMessage,
    server_error,
)

__all__ = [
    "AsyncClient",
    "BadFlags",
    "BadFrame",
    "Client",
    "ClientError",
    "ConnectionClosed",
    "DecodeFailed",
    "FrameTooLarge",
    "HandlerTimeout",
    "IdleTimeout",
    "InternalError",
    "Overloaded",
    "Push",
    "ServerError",
    "ServerShutdown",
    "SlowConsumer",
    "TooManyConnections",
    "UnknownMessage",
    "server_error",
]
