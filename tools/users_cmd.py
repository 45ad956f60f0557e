"""`tickwire users`: manage the demo authenticator's users file (server.auth.UsersFile)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from server.auth import DEFAULT_N, UsersFileError, add_user, load_users_file


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "users", help="add users to, or list, a users file (the users_file config key)"
    )
    actions = p.add_subparsers(dest="users_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user, or set a new password for one")
    add.add_argument("file", help="the users file (created when missing)")
    add.add_argument("name", help="user name, which is also the user id")
    add.add_argument(
        "--password",
        help="the password (default: asked on the terminal; a flag shows in `ps` and history)",
    )
    add.add_argument(
        "--scrypt-n",
        type=int,
        default=DEFAULT_N,
        help="scrypt cost, a power of two (default %(default)s; lower only for load tests)",
    )
    add.set_defaults(func=run_add)
    show = actions.add_parser("list", help="list the users of a file (and check every line)")
    show.add_argument("file")
    show.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("tickwire users add: the passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("tickwire users add: empty password", file=sys.stderr)
        return 2
    try:
        new = add_user(Path(args.file), args.name, password, n=args.scrypt_n)
        load_users_file(Path(args.file))  # what the server will read must still parse
    except (UsersFileError, ValueError, OSError) as exc:
        print(f"tickwire users add: {exc}", file=sys.stderr)
        return 2
    print(f"{'added' if new else 'updated'} {args.name} in {args.file}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        users = load_users_file(Path(args.file))
    except UsersFileError as exc:
        print(f"tickwire users list: {exc}", file=sys.stderr)
        return 2
    for name in users:
        print(name)
    return 0
