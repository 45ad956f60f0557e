"""What the user types: commands, HOST:PORT, hex dumps, messages as `NAME {json}`.

No I/O here, so tests call it directly and `tickwire decode` shares `parse_hex` and
`parse_address`.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from typing import cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from protocol.registry import MessageRegistry

#: Commands and their one-line help; anything else on a line is a message name.
COMMANDS: dict[str, str] = {
    "ping": "ping                      round trip to the server",
    "watch": "watch [TYPE ...]          show only pushes of these types (globs: demo.*); "
    "alone: show the filter",
    "unwatch": "unwatch [TYPE ...]        stop watching these types; alone: show every push",
    "raw": "raw HEX                   send bytes as they are, show what comes back",
    "notify": "notify TYPE {json}        send one-way (seq 0): no reply, failures still shown",
    "describe": "describe [TYPE]           the server's ID table, or one message's fields",
    "login": "login USER PASS [DEVICE]  log in (or login {json}); shows the session",
    "logout": "logout                    end the session; the connection stays open",
    "refresh": "refresh                   a new token for the session (the old one is refused)",
    "resume": "resume TOKEN [LAST_SEQ]   continue a session on this connection (or resume {json})",
    "session": "session                   the session this connection is logged in to",
    "sleep": "sleep SECONDS             wait, showing pushes (for scripts)",
    "help": "help                      this list",
    "quit": "quit                      leave (also exit, Ctrl-D)",
}
ALIASES = {"exit": "quit", "?": "help"}

#: The session commands and the `system` messages they need in the server's schema
#: (the older short names too). A server without one says so instead of sending.
SESSION_MESSAGES: dict[str, tuple[str, ...]] = {
    "login": ("LoginRequest", "Login"),
    "logout": ("LogoutRequest", "Logout"),
    "refresh": ("RefreshTokenRequest", "RefreshToken"),
    "resume": ("ResumeRequest", "Resume"),
}

HELP_TEXT = (
    'Type a message by name with JSON fields:  system.EchoRequest {"data": "aGk="}\n'
    "(protobuf JSON: bytes as base64, 64-bit integers as numbers or strings; "
    "Tab completes names and fields)\n" + "\n".join(COMMANDS.values())
)


class InputError(Exception):
    """What the user typed cannot be sent; nothing went on the wire."""


def split_words(text: str, usage: str, least: int, most: int) -> list[str]:
    """Arguments as a shell splits them (quotes keep a password with spaces in one),
    between `least` and `most` of them; InputError naming `usage` otherwise."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InputError(f"{exc}; usage: {usage}") from None
    if not least <= len(words) <= most:
        raise InputError(f"usage: {usage}")
    return words


_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d+)$")


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT. Raises ValueError with what is wrong."""
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return match["v6"] or match["host"], port


_HEX_SEPARATORS = re.compile(r"[\s:,]+")
_COMMENT = re.compile(r"#[^\n]*")
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")


def parse_hex(text: str) -> bytes:
    """Bytes from a hex dump as people paste them: `00 0a`, `00:0a`, `0x00 0x0a`, `000a`.

    Each token must have an even number of digits: `0xa 0x0b` silently becoming `a0b`
    would shift every byte after it, which is worse than refusing.
    """
    digits: list[str] = []
    for token in _HEX_SEPARATORS.split(_COMMENT.sub(" ", text)):
        if not token:
            continue
        raw = token
        if token[:2] in ("0x", "0X", "\\x"):
            token = token[2:]
        # `\x00\x0a` pasted from a Python bytes repr: split on the escapes.
        pieces = token.split("\\x") if "\\x" in token else [token]
        for piece in pieces:
            bad = _NOT_HEX.search(piece)
            if bad is not None:
                raise InputError(f"{bad.group()!r} in {raw!r} is not a hex digit")
            if len(piece) % 2:
                raise InputError(f"{raw!r} has an odd number of hex digits")
            digits.append(piece)
    return bytes.fromhex("".join(digits))


def split_command(line: str) -> tuple[str, str] | None:
    """(command, rest of the line), ("send", line) for a message, None for blank/comment."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    word, _, rest = stripped.partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = f"{more} {rest}"
    key = ALIASES.get(word.lower(), word.lower())
    if key in COMMANDS:
        return key, rest.strip()
    return "send", stripped


def split_message(text: str) -> tuple[str, str]:
    """`NAME {json}` -> (NAME, json text); the JSON may be absent."""
    parts = text.strip().split(None, 1)
    if not parts:
        raise InputError("expected a message name")
    return parts[0], parts[1] if len(parts) > 1 else ""


def descriptor_of(cls: type[Message]) -> Descriptor:
    return cast(Descriptor, cls.DESCRIPTOR)


def resolve_name(registry: MessageRegistry, name: str) -> str:
    """The full name `name` stands for: itself, or a short name unique in the schema.

    Raises InputError naming the closest matches, since a typo is the usual cause.
    """
    names = list(registry.table().values())
    if name in names:
        return name
    short = [n for n in names if n.rpartition(".")[2] == name]
    if len(short) == 1:
        return short[0]
    if len(short) > 1:
        raise InputError(f"{name!r} is ambiguous: {', '.join(sorted(short))}")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    close += [n for n in names if name.lower() in n.lower() and n not in close][: 3 - len(close)]
    hint = f"; did you mean {' or '.join(close)}?" if close else " (describe lists them)"
    raise InputError(f"no message named {name!r} in the server's schema{hint}")


def build_message(registry: MessageRegistry, name: str, json_text: str) -> Message:
    """A message of type `name` from protobuf JSON (json_format: bytes are base64)."""
    cls = registry.by_name(resolve_name(registry, name))
    text = json_text.strip() or "{}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"bad JSON for {name}: {exc.msg} (character {exc.pos + 1} of the JSON)"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"the fields of {name} must be a JSON object, got {text}")
    try:
        return json_format.ParseDict(data, cls())
    except json_format.ParseError as exc:
        raise InputError(f"{descriptor_of(cls).full_name}: {exc}") from None


def session_message(registry: MessageRegistry, verb: str) -> str | None:
    """The server's message for a session command, if its schema has one (see
    SESSION_MESSAGES)."""
    wanted = SESSION_MESSAGES[verb]
    for name in registry.table().values():
        package, _, short = name.rpartition(".")
        if package == "system" and short in wanted:
            return name
    return None
