"""The server's config defaults that a bench needs to know: read from `ServerConfig`, so a
changed default reaches the bench's reports without a copy to keep in step."""

from __future__ import annotations

import contextlib

from server.config import ServerConfig


def default_redis_url() -> str:
    """The Redis a spawned `tickwire serve --set store=redis` uses without a redis_url."""
    return ServerConfig().redis_url


def slow_consumer_limit(settings: list[str]) -> int:
    """The server's slow_consumer_bytes for these ``KEY=VALUE`` --set settings."""
    limit = ServerConfig().slow_consumer_bytes
    for setting in settings:
        key, _, value = setting.partition("=")
        if key.strip() == "slow_consumer_bytes":
            with contextlib.suppress(ValueError):
                limit = int(value)
    return limit
