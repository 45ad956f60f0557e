"""`tickwire config`: the effective config (`--print`) or a commented example (`--example`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from server.config import ConfigError, ServerConfig, render_toml
from tools.serve_cmd import add_config_args, config_from_args


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "config", help="print the effective config, or a commented example"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--print",
        dest="show",
        action="store_true",
        help="the config `tickwire serve` would run with, from the same file, environment "
        "and flags",
    )
    what.add_argument(
        "--example", action="store_true", help="every key with its default and meaning"
    )
    add_config_args(p)
    p.set_defaults(func=config)


def config(args: argparse.Namespace) -> int:
    if args.example:
        sys.stdout.write(render_toml(ServerConfig(), commented=True))
        return 0
    try:
        effective = config_from_args(args)
    except ConfigError as exc:
        print(f"tickwire config: bad config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_toml(effective))
    return 0
