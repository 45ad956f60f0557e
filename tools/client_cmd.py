"""`tickwire client HOST:PORT`: talk to any tickwire server from a terminal or a script.

The session logic is in the tools/repl/ package; this module only turns arguments into
a session. Its imports stay light because `tickwire --help` imports every subcommand's
module.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

EPILOG = """\
input: one command per line; blank lines and lines starting with # are skipped.
  NAME {json}          send a message by full name (protobuf JSON, bytes as base64)
  ping | watch [TYPE] | unwatch [TYPE] | raw HEX | notify NAME {json}
  describe [TYPE] | sleep SECONDS | help | quit
  login USER PASSWORD [DEVICE] | logout | refresh | resume TOKEN [LAST_SEQ] | session

exit codes: 0 every command succeeded; 1 a command failed (Error reply, timeout,
bad input); 2 bad arguments or unreadable script; 3 could not connect, Describe
failed, or the server closed the connection before every command had run.
An interactive session exits 0 on quit/Ctrl-D (3 if the server closed it)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "client",
        help="interactive client: send messages by name, see replies and pushes",
        description="Connect to a tickwire server, learn its schema with Describe, and\n"
        "send messages by name. Interactive when stdin is a terminal; otherwise\n"
        "(or with --script) runs one command per line and exits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="HOST:PORT", help="the server, e.g. 127.0.0.1:7000")
    p.add_argument(
        "--script", metavar="FILE", help="run the commands in FILE ('-': stdin), then exit"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line for every reply, push, error and result",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="connect timeout and how long to wait for each reply (default 10)",
    )
    p.add_argument(
        "--raw-wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long `raw` listens when the bytes expect no reply (default 0.5)",
    )
    p.add_argument(
        "--stop-on-error",
        action="store_true",
        help="script mode: stop at the first failed command",
    )
    p.add_argument(
        "--history",
        metavar="FILE",
        help="history file (default $TICKWIRE_HISTORY, else ~/.tickwire_history)",
    )
    p.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--tls", action="store_true", help="speak TLS, trusting the system's CAs (or --tls-ca)"
    )
    tls.add_argument(
        "--tls-ca", metavar="PEM", help="trust only the CAs in this file (implies --tls)"
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="client certificate, for a server that requires one (implies --tls)",
    )
    tls.add_argument("--tls-key", metavar="PEM", help="its private key, if not in --tls-cert")
    tls.add_argument(
        "--server-hostname",
        metavar="NAME",
        help="the name the server's certificate must carry (default: HOST)",
    )
    p.set_defaults(func=client)


def client(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tools import repl

    try:
        host, port = repl.parse_address(args.address)
    except ValueError as exc:
        print(f"tickwire client: {exc}", file=sys.stderr)
        return repl.EXIT_USAGE
    try:
        tls = tls_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"tickwire client: {exc}", file=sys.stderr)
        return repl.EXIT_USAGE
    script = None
    if args.script not in (None, "-"):
        try:
            script = open(args.script, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            print(f"tickwire client: cannot read script: {exc}", file=sys.stderr)
            return repl.EXIT_USAGE
    # The REPL shows pushes it cannot decode itself; the SDK's warning would only repeat it.
    logging.getLogger("tickwire.client").setLevel(logging.ERROR)
    interactive = args.script is None and sys.stdin.isatty()
    try:
        return asyncio.run(_main(args, host, port, script, interactive, tls))
    except KeyboardInterrupt:
        return 130
    finally:
        if script is not None:
            script.close()


def tls_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the flags ask for, None for plaintext. An unreadable or invalid
    file raises OSError or ValueError (ssl.SSLError is an OSError) naming it."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        if args.server_hostname:
            raise ValueError("--server-hostname is for TLS; add --tls")
        return None
    import ssl

    from client_sdk.tls import tls_context

    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    try:
        return tls_context(args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot load the TLS files: {exc}") from None


async def _main(
    args: argparse.Namespace,
    host: str,
    port: int,
    script: Any,
    interactive: bool,
    tls: ssl.SSLContext | None,
) -> int:
    from tools import repl

    printer: repl.Printer
    if args.json:
        printer = repl.JsonPrinter()
    else:
        printer = repl.HumanPrinter(color=False if args.no_color else None)
    try:
        session = await repl.Session.connect(
            host,
            port,
            printer,
            timeout=args.timeout,
            raw_wait=args.raw_wait,
            tls=tls,
            server_hostname=args.server_hostname,
        )
    except ConnectionError as exc:
        if args.json:
            printer.event(repl.client_error("connect", str(exc)))
        else:
            print(f"tickwire client: {exc}", file=sys.stderr)
        return repl.EXIT_CONNECTION
    try:
        if interactive:
            return await repl.run_interactive(session, repl.history_path(args.history))
        lines = script if script is not None else repl.read_lines_async(sys.stdin)
        return await repl.run_lines(
            session, lines, echo=not args.json, stop_on_error=args.stop_on_error
        )
    finally:
        await session.close()
