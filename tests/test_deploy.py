"""The deploy files call the command line as it is: a renamed flag fails here, not at 3 am."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from tools.cli import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def tickwire_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0].endswith("/tickwire"), command
    return words[1:]


def systemd_commands() -> list[str]:
    commands = []
    for line in (DEPLOY / "tickwire.service").read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStart", "ExecReload"):
            commands.append(value)
    return commands


def supervisord_commands() -> list[str]:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(DEPLOY / "supervisord.conf")
    return [parser["program:tickwire"]["command"]]


@pytest.mark.parametrize("command", systemd_commands() + supervisord_commands())
def test_deploy_commands_parse(command: str) -> None:
    args = build_parser().parse_args(tickwire_args(command))
    assert args.command in ("serve", "restart")
    if args.command == "serve":
        assert args.pid_file and args.config and args.app


def test_stop_timeouts_outlast_the_default_drain() -> None:
    from server.config import ServerConfig

    drain = ServerConfig().drain_timeout
    unit = (DEPLOY / "tickwire.service").read_text()
    assert float(unit.split("TimeoutStopSec=")[1].split()[0]) > drain
    conf = (DEPLOY / "supervisord.conf").read_text()
    assert float(conf.split("stopwaitsecs=")[1].split()[0]) > drain
