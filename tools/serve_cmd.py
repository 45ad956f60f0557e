"""`tickwire serve`: run a server in the foreground, logging to stderr."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from server.app import App
from server.config import ConfigError, load_config
from server.server import run


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="run a tickwire server")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default 7000)")
    p.add_argument("--config", help="TOML config file (keys of server.config.ServerConfig)")
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an App to serve besides the system handlers (repeatable)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=serve)


def load_app(spec: str) -> App:
    # Like uvicorn's --app-dir default: modules in the working directory are importable
    # even though the console script's sys.path does not include it.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app")
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise TypeError(f"{spec} is not a tickwire App")
    return app


def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, host=args.host, port=args.port, log_level=args.log_level)
    except ConfigError as exc:
        print(f"tickwire serve: bad config: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        apps = [load_app(spec) for spec in args.app]
    except Exception as exc:
        print(f"tickwire serve: cannot load app: {exc}", file=sys.stderr)
        return 2
    return run(*apps, config=config)
