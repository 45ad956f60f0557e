"""`tickwire serve`: run a server in the foreground, logging to stderr."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from server.config import ConfigError, ServerConfig, load_config, parse_assignments

#: What `tickwire serve` runs when no --app is given (docs/chat.md).
DEFAULT_APP = "examples.chat.service:app"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run a tickwire server",
        description="Run a tickwire server in the foreground. Without --app it serves the "
        "example chat app (examples/chat, docs/chat.md) beside the system handlers; --app "
        "replaces it, --no-chat leaves it out.",
    )
    add_config_args(p)
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an App to serve besides the system handlers (repeatable); any --app replaces "
        f"the default example chat app (add --app {DEFAULT_APP} to keep it)",
    )
    p.add_argument(
        "--no-chat",
        action="store_true",
        help="without --app, serve the system handlers only: no example chat app",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="development: re-import edited handler modules and swap them in (SIGUSR1 "
        "does the same once)",
    )
    p.set_defaults(func=serve)


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The config flags `serve` and `config` share, so both resolve the same config."""
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default 7000)")
    p.add_argument("--config", help="TOML config file (keys of server.config.ServerConfig)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--pid-file", help="write the serving process's pid here")
    p.add_argument(
        "--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (with --tls-key)"
    )
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="require client certificates signed by these CAs (mutual TLS)",
    )
    p.add_argument(
        "--cluster",
        metavar="URL",
        help="join the cluster on this Redis (redis://HOST:PORT/DB; docs/scaling.md)",
    )
    p.add_argument("--node-id", metavar="NAME", help="this node's name (default host:pid)")
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N worker processes on one port, each a node of --cluster",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key (see `tickwire config --example`); repeatable; wins over all",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """File < environment < the named flags < --set, as the docs promise."""
    return load_config(
        args.config,
        **{
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "log_format": args.log_format,
            "pid_file": args.pid_file,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "tls_ca": args.tls_ca,
            "cluster_url": args.cluster,
            "node_id": args.node_id,
            "processes": args.processes,
            **parse_assignments(args.set),
        },
    )


def app_specs(args: argparse.Namespace) -> list[str]:
    """The --app apps; without any, the example chat app unless --no-chat."""
    if args.app:
        return list(args.app)
    return [] if args.no_chat else [DEFAULT_APP]


def serve(args: argparse.Namespace) -> int:
    # Here, not at the top: every `tickwire` command imports this module for its flags.
    from server.tls import server_context

    try:
        config = config_from_args(args)
        # The TLS files are read now, so a bad one is a bad config, not a failed start.
        server_context(config.tls_cert, config.tls_key, config.tls_ca)
    except ConfigError as exc:
        print(f"tickwire serve: bad config: {exc}", file=sys.stderr)
        return 2
    from server.lifecycle import run
    from server.logs import configure_logging
    from server.reload import AppLoader

    configure_logging(config.log_level, config.log_format)
    if config.processes > 1:
        from server.supervisor import supervise

        return supervise(config, getattr(args, "argv", None) or sys.argv[1:])
    loader = AppLoader(app_specs(args))
    try:
        apps = loader.load()
    except Exception as exc:
        print(f"tickwire serve: cannot load app: {exc!r}", file=sys.stderr)
        return 2
    return run(
        *apps,
        config=config,
        argv=getattr(args, "argv", None),
        loader=loader,
        autoreload=args.reload,
    )
