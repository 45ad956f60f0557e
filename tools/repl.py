"""The `tickwire client` session: what the user types, the connection, what comes back.

The first half of this module does no I/O (parsing commands and hex, building messages
from JSON, completion candidates, turning frames into events), so tests call it directly
and `tickwire decode` shares it. The second half (the printers, `Session`,
`run_lines`, `run_interactive`) owns the socket and the terminal.

Every result is an *event*: a plain dict that `--json` prints as one line and the human
printer renders with colour, so both outputs always say the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fnmatch
import json
import re
import signal
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from client_sdk.client import AsyncClient
from client_sdk.errors import ConnectionClosed, ServerError
from protocol.errors import (
    ErrorCode,
    ProtocolError,
    RegistryError,
    RemoteProtocolError,
    code_name,
)
from protocol.frame import RESERVED_FLAGS, Flags, Frame, FrameDecoder
from protocol.proto.system_pb2 import Error
from protocol.registry import MessageRegistry

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document
    from rich.console import RenderableType

#: Exit codes of `tickwire client` (docs/tools.md lists them).
EXIT_OK = 0
#: At least one command failed: an Error reply, a timeout, bad input, an unknown command.
EXIT_FAILED = 1
#: Bad arguments, or a script file that cannot be read.
EXIT_USAGE = 2
#: Could not connect or Describe failed, or the server closed the connection before
#: every command had run.
EXIT_CONNECTION = 3

ERROR_ID = 3
GOAWAY_ID = 30

#: Commands and their one-line help; anything else on a line is a message name.
COMMANDS: dict[str, str] = {
    "ping": "ping                      round trip to the server",
    "watch": "watch [TYPE ...]          show only pushes of these types (globs: demo.*); "
    "alone: show the filter",
    "unwatch": "unwatch [TYPE ...]        stop watching these types; alone: show every push",
    "raw": "raw HEX                   send bytes as they are, show what comes back",
    "notify": "notify TYPE {json}        send one-way (seq 0): no reply, failures still shown",
    "describe": "describe [TYPE]           the server's ID table, or one message's fields",
    "login": "login {json}              log in (needs the server's login message)",
    "resume": "resume {json}             resume a session (needs the server's resume message)",
    "sleep": "sleep SECONDS             wait, showing pushes (for scripts)",
    "help": "help                      this list",
    "quit": "quit                      leave (also exit, Ctrl-D)",
}
ALIASES = {"exit": "quit", "?": "help"}

#: Short names the sessions issue is expected to use for these messages (package
#: `system`, IDs 4-255). Until a server's schema has one, the commands say so.
SESSION_MESSAGES: dict[str, tuple[str, ...]] = {
    "login": ("Login", "LoginRequest"),
    "resume": ("Resume", "ResumeRequest"),
}

HELP_TEXT = (
    'Type a message by name with JSON fields:  system.EchoRequest {"data": "aGk="}\n'
    "(protobuf JSON: bytes as base64, 64-bit integers as numbers or strings; "
    "Tab completes names and fields)\n" + "\n".join(COMMANDS.values())
)


class InputError(Exception):
    """What the user typed cannot be sent; nothing went on the wire."""


# -- parsing ---------------------------------------------------------------------------

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
    """The server's login/resume message, if its schema has one (see SESSION_MESSAGES)."""
    wanted = SESSION_MESSAGES[verb]
    for name in registry.table().values():
        package, _, short = name.rpartition(".")
        if package == "system" and short in wanted:
            return name
    return None


# -- formatting ------------------------------------------------------------------------

_FLAG_BITS = (Flags.RESPONSE, Flags.ERROR, Flags.PUSH, Flags.COMPRESSED)


def flag_names(flags: int) -> list[str]:
    """Names of the set bits, lowest first; reserved bits as one hex value."""
    names = [str(bit.name) for bit in _FLAG_BITS if flags & bit]
    if flags & RESERVED_FLAGS:
        names.append(f"0x{flags & RESERVED_FLAGS:02x}")
    return names


def code_label(code: int) -> str:
    """`UNKNOWN_MESSAGE (4)`; application codes as `APPLICATION(150)` alone."""
    name = code_name(code)
    return name if name.endswith(")") else f"{name} ({code})"


def message_to_dict(message: Message) -> dict[str, Any]:
    """protobuf JSON with the .proto field names (what the user types back) and every
    field shown, since a debugging tool that hides zeros hides the interesting bits."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return _in_field_order(cast(Descriptor, message.DESCRIPTOR), data)


def _in_field_order(desc: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """Keys in .proto order: MessageToDict puts the fields left at their defaults last,
    so Pong would read `server_time_ns, client_time_ns`."""
    out: dict[str, Any] = {}
    for f in desc.fields:
        if f.name not in data:
            continue
        value = data[f.name]
        nested = _message_type(f)
        if nested is not None and isinstance(value, dict):
            value = _in_field_order(nested, value)
        elif nested is not None and isinstance(value, list):
            value = [_in_field_order(nested, v) if isinstance(v, dict) else v for v in value]
        out[f.name] = value
    out.update((k, v) for k, v in data.items() if k not in out)  # extensions, if any
    return out


def decode_payload(
    registry: MessageRegistry, msg_id: int, flags: int, payload: bytes
) -> tuple[Message | None, RemoteProtocolError | None]:
    """The payload's message, or the protocol error that stopped it (never raises)."""
    if flags & Flags.COMPRESSED:
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            return None, RemoteProtocolError(
                ErrorCode.DECODE_ERROR, f"COMPRESSED payload does not inflate: {exc}"
            )
    try:
        return registry.decode(msg_id, payload), None
    except RemoteProtocolError as exc:
        return None, exc


def describe_frame(registry: MessageRegistry, frame: Frame) -> dict[str, Any]:
    """A frame's header and decoded payload as a JSON-ready dict.

    An Error payload also gets `error` with the code's name, because "4" means nothing
    at a glance; a payload that does not decode keeps its bytes as hex.
    """
    cls = registry.class_of(frame.msg_id)
    out: dict[str, Any] = {
        "msg_id": frame.msg_id,
        "name": descriptor_of(cls).full_name if cls is not None else None,
        "flags": flag_names(frame.flags),
        "seq": frame.seq,
    }
    message, problem = decode_payload(registry, frame.msg_id, frame.flags, frame.payload)
    if problem is not None:
        out["message"] = None
        out["payload_hex"] = frame.payload.hex()
        out["decode_error"] = {
            "code": int(problem.code),
            "code_name": problem.code.name,
            "message": problem.message,
        }
        return out
    assert message is not None
    out["message"] = message_to_dict(message)
    if frame.msg_id == ERROR_ID:
        # A dynamic class when the registry came from Describe, so no isinstance check.
        err = cast(Error, message)
        out["error"] = {
            "code": err.code,
            "code_name": code_name(err.code),
            "message": err.message,
            "request_msg_id": err.request_msg_id,
        }
    return out


def frame_event(
    registry: MessageRegistry,
    frame: Frame,
    kind: str,
    *,
    rtt: float | None = None,
    line: int | None = None,
) -> dict[str, Any]:
    """The event for a frame the server sent: `kind` ("reply", "push", "frame") unless it
    carries an Error, which becomes an "error" event with the code at the top level."""
    info = describe_frame(registry, frame)
    error = info.pop("error", None)
    if frame.flags & Flags.ERROR:
        if error is None:  # an Error frame whose payload does not decode
            error = {"code": None, "code_name": None, "message": "(undecodable Error payload)"}
            error.update(payload_hex=info["payload_hex"], decode_error=info["decode_error"])
        event: dict[str, Any] = {"type": "error", "source": "server", **error}
        event.update(msg_id=info["msg_id"], name=info["name"], flags=info["flags"])
        event["seq"] = info["seq"]
        if not frame.flags & Flags.RESPONSE:
            event["unsolicited"] = True
    else:
        event = {"type": kind, **info}
    if rtt is not None:
        event["rtt_ms"] = round(rtt * 1000, 3)
    if line is not None:
        event["line"] = line
    return event


def client_error(reason: str, message: str, *, line: int | None = None) -> dict[str, Any]:
    """A failure on this side: bad input, a timeout, a closed connection..."""
    event: dict[str, Any] = {"type": "error", "source": "client", "reason": reason}
    event["message"] = message
    if line is not None:
        event["line"] = line
    return event


def server_error_event(exc: ServerError, *, line: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "source": "server", "code": exc.code}
    event.update(code_name=code_name(exc.code), message=exc.message)
    event["request_msg_id"] = exc.request_msg_id
    if line is not None:
        event["line"] = line
    return event


def closed_event(closed: ConnectionClosed) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "closed", "code": closed.code}
    if closed.error is not None:
        event["code_name"] = code_name(closed.error.code)
        event["message"] = closed.error.message
    else:
        event["code_name"] = None
        event["message"] = str(closed)
    return event


_SCALAR_TYPES = {
    getattr(FieldDescriptor, n): n[5:].lower() for n in dir(FieldDescriptor) if n[:5] == "TYPE_"
}


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def type_name(f: FieldDescriptor) -> str:
    """`repeated string`, `map<string, demo.Player>`, `bytes`: as the .proto says it."""
    if _is_map(f):
        assert f.message_type is not None
        key, value = (f.message_type.fields_by_name[n] for n in ("key", "value"))
        return f"map<{type_name(key)}, {type_name(value)}>"
    if f.message_type is not None:
        base = f.message_type.full_name
    elif f.enum_type is not None:
        base = f.enum_type.full_name
    else:
        base = _SCALAR_TYPES.get(f.type, "?")
    return f"repeated {base}" if f.is_repeated else base


def fields_event(registry: MessageRegistry, name: str) -> dict[str, Any]:
    full = resolve_name(registry, name)
    cls = registry.by_name(full)
    desc = descriptor_of(cls)
    return {
        "type": "fields",
        "name": full,
        "msg_id": registry.id_of(cls),
        "fields": [{"name": f.name, "number": f.number, "type": type_name(f)} for f in desc.fields],
    }


# -- completion ------------------------------------------------------------------------


class Candidate(NamedTuple):
    """One completion: replace the `-start` characters before the cursor with `text`."""

    text: str
    start: int
    display: str = ""
    meta: str = ""


def candidates(text: str, registry: MessageRegistry) -> list[Candidate]:
    """What Tab offers for the line typed so far (`text` ends at the cursor).

    Pure (no prompt_toolkit), so tests call it directly; the REPL's Completer only
    wraps the result.
    """
    stripped = text.lstrip()
    head = re.match(r"\S*", stripped)
    assert head is not None
    first = head.group()
    rest = stripped[len(first) :]
    if not rest:  # still typing the first word: a command or a message name
        words = [
            Candidate(f"{c} ", -len(first), display=c, meta="command")
            for c in sorted([*COMMANDS, *ALIASES])
            if c.startswith(first.lower())
        ]
        return words + _name_candidates(first, registry)
    verb = ALIASES.get(first.lower(), first.lower())
    if verb in ("watch", "unwatch", "describe"):
        word = re.search(r"\S*$", rest)
        assert word is not None
        return _name_candidates(word.group(), registry)
    if verb == "notify":
        body = rest.lstrip()
        name_match = re.match(r"\S*", body)
        assert name_match is not None
        name = name_match.group()
        if len(body) == len(name):
            return _name_candidates(name, registry)
        return _json_candidates(registry, name, body[len(name) :])
    if verb in SESSION_MESSAGES:
        login = session_message(registry, verb)
        return _json_candidates(registry, login, rest) if login else []
    if verb in COMMANDS:
        return []
    return _json_candidates(registry, first, rest)


def _name_candidates(word: str, registry: MessageRegistry) -> list[Candidate]:
    table = registry.table()
    ids = {name: msg_id for msg_id, name in table.items()}
    low = word.lower()
    prefix = sorted(n for n in ids if n.lower().startswith(low))
    # Then names that merely contain it: "Echo" finds system.EchoRequest.
    inside = sorted(n for n in ids if low and low in n.lower() and n not in prefix)
    # The trailing space ends the word, so the next Tab goes on to the fields.
    return [Candidate(f"{n} ", -len(word), n, f"id {ids[n]}") for n in prefix + inside]


@dataclass
class _Level:
    """One open `{` or `[` of the JSON typed so far."""

    kind: str  # "obj" or "arr"
    desc: Descriptor | None = None  # obj: the message whose fields are the keys
    value_field: FieldDescriptor | None = None  # map obj / arr: what each value is
    state: str = "key"  # obj: key, colon, value, after; arr: value, after
    key: str | None = None
    seen: set[str] = field(default_factory=set)


def _field(desc: Descriptor | None, key: str | None) -> FieldDescriptor | None:
    if desc is None or key is None:
        return None
    found = desc.fields_by_name.get(key)
    if found is None:
        found = next((f for f in desc.fields if f.json_name == key), None)
    return found


def _message_type(f: FieldDescriptor | None) -> Descriptor | None:
    """The message whose fields a JSON object for `f` has; None when free-form (maps,
    the well-known types with their own JSON forms, scalars)."""
    if f is None or f.message_type is None or _is_map(f):
        return None
    if f.message_type.full_name.startswith("google.protobuf."):
        return None
    return f.message_type


def _value_field(level: _Level) -> FieldDescriptor | None:
    if level.kind == "arr" or level.value_field is not None:
        return level.value_field
    return _field(level.desc, level.key)


def _child_object(parent: _Level) -> _Level:
    f = _value_field(parent)
    if f is not None and _is_map(f) and parent.kind == "obj" and parent.value_field is None:
        assert f.message_type is not None
        return _Level("obj", value_field=f.message_type.fields_by_name["value"])
    return _Level("obj", desc=_message_type(f))


@dataclass
class _JsonState:
    stack: list[_Level]
    started: bool
    string: str | None  # the unterminated string's raw text after its quote
    string_is_key: bool
    bare: str  # an unquoted token being typed


def _scan_json(text: str, root: Descriptor) -> _JsonState | None:
    """Where the cursor is in a JSON prefix: which object, key or value. None when the
    prefix is not the start of a JSON object (no candidate makes sense then)."""
    stack: list[_Level] = []
    started = False
    string: list[str] | None = None
    string_is_key = False
    escaped = False
    bare = ""
    for ch in text:
        if string is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                level = stack[-1]
                if string_is_key:
                    level.key = "".join(string)
                    level.seen.add(level.key)
                    level.state = "colon"
                else:
                    level.state = "after"
                string = None
                continue
            string.append(ch)
            continue
        if ch in ' \t\r\n{}[]:,"' and bare:
            if stack and stack[-1].state == "value":
                stack[-1].state = "after"
            bare = ""
        if ch in " \t\r\n":
            continue
        top = stack[-1] if stack else None
        if ch == "{":
            if top is None:
                if started:
                    return None
                started = True
                stack.append(_Level("obj", desc=root))
            elif top.state == "value":
                stack.append(_child_object(top))
            else:
                return None
        elif top is None:
            return None
        elif ch == '"':
            if top.state not in ("key", "value"):
                return None
            string = []
            string_is_key = top.kind == "obj" and top.state == "key"
        elif ch == "[":
            if top.state != "value":
                return None
            stack.append(_Level("arr", value_field=_value_field(top), state="value"))
        elif ch in "}]":
            stack.pop()
            if stack:
                stack[-1].state = "after"
        elif ch == ":":
            top.state = "value"
        elif ch == ",":
            if top.kind == "obj":
                top.state, top.key = "key", None
            else:
                top.state = "value"
        else:
            bare += ch
    return _JsonState(
        stack, started, None if string is None else "".join(string), string_is_key, bare
    )


def _key_candidates(level: _Level, partial: str, start: int, prefix: str = "") -> list[Candidate]:
    if level.desc is None:
        return []
    low = partial.lower()
    return [
        Candidate(f'{prefix}"{f.name}": ', start, display=f.name, meta=type_name(f))
        for f in level.desc.fields
        if f.name not in level.seen
        and f.json_name not in level.seen
        and f.name.lower().startswith(low)
    ]


def _value_candidates(level: _Level, partial: str, start: int) -> list[Candidate]:
    f = _value_field(level)
    if f is None or (f.is_repeated and level.kind == "obj" and not _is_map(f)):
        return []  # a repeated field's value is a list: nothing to offer before `[`
    if f.enum_type is not None:
        return [
            Candidate(f'"{v.name}"', start, display=v.name, meta=f"= {v.number}")
            for v in f.enum_type.values
            if v.name.lower().startswith(partial.lower())
        ]
    if f.type == FieldDescriptor.TYPE_BOOL:
        return [Candidate(v, start) for v in ("true", "false") if v.startswith(partial)]
    return []


def _json_candidates(registry: MessageRegistry, name: str, json_text: str) -> list[Candidate]:
    try:
        root = descriptor_of(registry.by_name(resolve_name(registry, name)))
    except (InputError, RegistryError):
        return []
    state = _scan_json(json_text, root)
    if state is None:
        return []
    if not state.stack:
        if state.started or json_text.strip():
            return []
        # Nothing typed after the name yet: offer the fields with the opening brace.
        return _key_candidates(_Level("obj", desc=root), "", 0, prefix="{")
    top = state.stack[-1]
    if state.string is not None:
        start = -(len(state.string) + 1)  # replace the opening quote too
        if state.string_is_key:
            return _key_candidates(top, state.string, start)
        return _value_candidates(top, state.string, start)
    if top.kind == "obj" and top.state == "key":
        return _key_candidates(top, state.bare, -len(state.bare))
    if top.state == "value":
        return _value_candidates(top, state.bare, -len(state.bare))
    return []


# -- the connection --------------------------------------------------------------------


class Printer(Protocol):
    def event(self, event: dict[str, Any]) -> None: ...

    def echo(self, line: str, lineno: int) -> None: ...


class JsonPrinter:
    """One JSON object per line, flushed at once so a pipe reader sees it immediately."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def event(self, event: dict[str, Any]) -> None:
        stream = self._stream or sys.stdout  # looked up late: patch_stdout replaces it
        stream.write(json.dumps(event, ensure_ascii=False) + "\n")
        stream.flush()

    def echo(self, line: str, lineno: int) -> None:
        pass  # every event already carries its `line`


class HumanPrinter:
    """Coloured output with rich: a header line per frame, then its fields as JSON."""

    def __init__(self, stream: IO[str] | None = None, *, color: bool | None = None) -> None:
        from rich.console import Console

        self._stream = stream
        self.console = Console(
            file=stream,
            force_terminal=color,
            no_color=color is False,
            highlight=False,
            soft_wrap=True,
        )

    def echo(self, line: str, lineno: int) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]{lineno}> {escape(line)}[/]")

    def event(self, event: dict[str, Any]) -> None:
        from rich.console import Group
        from rich.markup import escape

        kind = event["type"]
        # Collected, then printed in one write: under patch_stdout every write redraws
        # the prompt, which would otherwise land between a header and its JSON.
        parts: list[RenderableType] = []
        add = parts.append
        if kind in ("reply", "push", "frame"):
            label = {"reply": "[bold green]reply[/]", "push": "[bold magenta]push[/]"}.get(
                kind, "[bold]frame[/]"
            )
            late = " [yellow](late: nobody waits for this seq)[/]" if event.get("late") else ""
            add(f"{label} {_header(event)}{late}")
            parts.extend(self._payload(event))
        elif kind == "error":
            where = f"line {event['line']}: " if "line" in event else ""
            if event["source"] == "server":
                code = code_label(event["code"]) if event["code"] is not None else "?"
                what = f"{code}: {escape(event['message'])}"
                frame = f" [dim]({_header(event)})[/]" if "msg_id" in event else ""
                unsolicited = " [yellow]unsolicited[/]" if event.get("unsolicited") else ""
                add(f"[bold red]error[/] {where}{what}{frame}{unsolicited}")
            else:
                reason = _REASONS.get(event["reason"], "")
                add(f"[bold red]error[/] {where}{reason}{escape(event['message'])}")
        elif kind == "pong":
            add(f"[bold green]pong[/] {event['rtt_ms']:.3f} ms")
        elif kind == "watch":
            shown = ", ".join(event["filter"]) or "every push"
            add(f"[bold]watching[/] {escape(shown)}")
        elif kind == "sent":
            n = event["frames"]
            add(f"[dim]sent {event['bytes']} bytes ({n} whole frame{'s' * (n != 1)})[/]")
        elif kind == "describe":
            add(_table(("id", "message"), [(str(r["id"]), r["name"]) for r in event["ids"]]))
        elif kind == "fields":
            add(f"[bold]{event['name']}[/] (id {event['msg_id']})")
            rows = [(str(f["number"]), f["name"], f["type"]) for f in event["fields"]]
            add(_table(("#", "field", "type"), rows) if rows else "[dim]no fields[/]")
        elif kind == "closed":
            code = f"{code_label(event['code'])}: " if event["code"] else ""
            add(f"[bold red]closed[/] {code}{escape(event['message'])}")
        elif kind == "connected":
            add(
                f"[dim]connected to {event['address']}, {event['messages']} message types "
                "(describe: the ID table; help: the commands)[/]"
            )
        elif kind == "help":
            add(escape(event["text"]))
        elif kind == "info":
            add(f"[dim]{escape(event['message'])}[/]")
        else:
            add(escape(json.dumps(event)))
        self.console.print(Group(*parts))

    @staticmethod
    def _payload(event: dict[str, Any]) -> list[RenderableType]:
        from rich.json import JSON
        from rich.markup import escape

        if event.get("message") is not None:
            text = json.dumps(event["message"], ensure_ascii=False)
            return [JSON(text, indent=None if len(text) <= 100 else 2)]
        if "decode_error" in event:
            problem = event["decode_error"]
            return [
                f"[yellow]payload not decoded: {problem['code_name']}: "
                f"{escape(problem['message'])}[/]",
                f"[dim]payload {event['payload_hex'] or '(empty)'}[/]",
            ]
        return []


def _table(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> RenderableType:
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    return table


#: How the human output introduces a client-side failure (the message says the rest).
_REASONS = {"bad_input": "bad input: ", "timeout": "timeout: ", "protocol": "protocol: "}


def _header(event: dict[str, Any]) -> str:
    from rich.markup import escape

    name = event.get("name") or "(not in the schema)"
    parts = [f"{event['msg_id']} [bold]{escape(name)}[/]", "|".join(event["flags"]) or "NONE"]
    parts.append(f"seq={event['seq']}")
    if "rtt_ms" in event:
        parts.append(f"[dim]{event['rtt_ms']:.3f} ms[/]")
    return "  ".join(parts)


class Session:
    """One connection and the commands run on it, interactive or from a script."""

    def __init__(
        self,
        client: AsyncClient,
        printer: Printer,
        *,
        address: str = "",
        timeout: float = 10.0,
        raw_wait: float = 0.5,
    ) -> None:
        self.client = client
        self.printer = printer
        self.address = address
        self.timeout = timeout
        self.raw_wait = raw_wait
        #: Push types shown (fnmatch patterns); empty shows every push.
        self.watching: list[str] = []
        self.failures = 0
        self._raw: list[Frame] | None = None
        self._raw_line: int | None = None
        self._raw_arrived = asyncio.Event()
        self._closing = False
        self._reported = False
        self._watcher: asyncio.Task[None] | None = None
        # Every frame no request waits for: pushes, unsolicited Errors, late replies.
        client.on_frame(self._on_frame)

    @property
    def registry(self) -> MessageRegistry:
        return self.client.registry

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        printer: Printer,
        *,
        timeout: float = 10.0,
        raw_wait: float = 0.5,
    ) -> Session:
        """Connect and learn the server's schema; raises ConnectionError with why not."""
        try:
            client = await AsyncClient.connect(host, port, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot connect to {host}:{port}: {exc or 'timed out'}"
            ) from None
        try:
            async with asyncio.timeout(timeout):
                await client.describe(adopt=True)
        except (ServerError, ConnectionClosed, TimeoutError, RegistryError) as exc:
            await client.close()
            raise ConnectionError(
                f"Describe failed on {host}:{port}: {exc or 'timed out'}"
            ) from None
        session = cls(client, printer, address=f"{host}:{port}", timeout=timeout, raw_wait=raw_wait)
        session.start()
        return session

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._report_close())
        self.printer.event(
            {"type": "connected", "address": self.address, "messages": len(self.registry)}
        )

    @property
    def lost(self) -> bool:
        """The server ended the connection (as opposed to us closing it)."""
        return self.client.closed and not self._closing

    async def close(self) -> None:
        if self.lost:
            # Say why it ended before going, even if the watcher has not run yet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._report_close()
        self._closing = True
        await self.client.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _report_close(self) -> None:
        closed = await self.client.wait_closed()
        if not self._closing and not self._reported:
            self._reported = True
            self.printer.event(closed_event(closed))

    # -- frames nobody waits for ---------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.flags & Flags.PUSH:
            if frame.msg_id == GOAWAY_ID or self._watched(frame.msg_id):
                self.printer.event(frame_event(self.registry, frame, "push"))
            return
        event = frame_event(self.registry, frame, "reply" if frame.flags else "frame")
        if self._raw is not None:
            # Printed here, as it arrives, so it comes out before the close it may cause.
            if self._raw_line is not None:
                event["line"] = self._raw_line
            self._raw.append(frame)
            self._raw_arrived.set()
        elif event["type"] == "error":
            self.failures += 1  # a failed notification is a failed request too
        elif frame.flags & Flags.RESPONSE:
            event["late"] = True
        self.printer.event(event)

    def _watched(self, msg_id: int) -> bool:
        if not self.watching:
            return True
        cls = self.registry.class_of(msg_id)
        name = descriptor_of(cls).full_name if cls is not None else str(msg_id)
        return any(fnmatch.fnmatchcase(name, p) for p in self.watching)

    # -- commands --------------------------------------------------------------------

    async def execute(self, line: str, lineno: int | None = None) -> bool:
        """Run one line; False when the session should end. Failures are counted in
        `failures` and shown, never raised: a script goes on after a failed line."""
        parsed = split_command(line)
        if parsed is None:
            return True
        verb, rest = parsed
        if verb == "quit":
            return False
        if self.client.closed:
            self.failures += 1
            self.printer.event(client_error("closed", "the connection is closed", line=lineno))
            return False
        try:
            ok = await self._run(verb, rest, lineno)
        except InputError as exc:
            self.printer.event(client_error("bad_input", str(exc), line=lineno))
            ok = False
        except TimeoutError as exc:
            message = str(exc) or "no reply"
            self.printer.event(
                client_error("timeout", f"{message} within {self.timeout:g} s", line=lineno)
            )
            ok = False
        except ServerError as exc:
            self.printer.event(server_error_event(exc, line=lineno))
            ok = False
        except ConnectionClosed as exc:
            self.printer.event(client_error("closed", str(exc), line=lineno))
            ok = False
        except ProtocolError as exc:  # e.g. a message too large for a frame
            self.printer.event(client_error("protocol", str(exc), line=lineno))
            ok = False
        if not ok:
            self.failures += 1
        return True

    async def _run(self, verb: str, rest: str, lineno: int | None) -> bool:
        event: dict[str, Any]
        if verb == "send":
            name, json_text = split_message(rest)
            return await self._request(build_message(self.registry, name, json_text), lineno)
        if verb == "ping":
            rtt = await self.client.ping(timeout=self.timeout)
            event = {"type": "pong", "rtt_ms": round(rtt * 1000, 3)}
        elif verb == "notify":
            name, json_text = split_message(rest)
            message = build_message(self.registry, name, json_text)
            self.client.notify(message)
            event = {"type": "sent", "bytes": 11 + message.ByteSize(), "frames": 1}
        elif verb in ("watch", "unwatch"):
            self._update_watch(verb, rest.split())
            event = {"type": "watch", "filter": list(self.watching)}
        elif verb == "raw":
            return await self._raw_send(rest, lineno)
        elif verb == "describe":
            if rest:
                event = fields_event(self.registry, rest.split()[0])
            else:
                async with asyncio.timeout(self.timeout):
                    await self.client.describe(adopt=True)
                ids = [{"id": i, "name": n} for i, n in self.registry.table().items()]
                event = {"type": "describe", "ids": ids}
        elif verb in SESSION_MESSAGES:
            target = session_message(self.registry, verb)
            if target is None:
                self.printer.event(
                    client_error(
                        "unavailable",
                        f"not available: this server has no {verb} message (sessions issue)",
                        line=lineno,
                    )
                )
                return False
            return await self._request(build_message(self.registry, target, rest), lineno)
        elif verb == "sleep":
            try:
                seconds = float(rest)
            except ValueError:
                raise InputError(f"sleep takes seconds, got {rest!r}") from None
            await asyncio.sleep(max(seconds, 0.0))
            return True
        else:  # help
            event = {"type": "help", "text": HELP_TEXT}
        if lineno is not None:
            event["line"] = lineno
        self.printer.event(event)
        return True

    async def _request(self, message: Message, lineno: int | None) -> bool:
        msg_id, payload = self.registry.encode(message)
        start = time.perf_counter()
        frame = await self.client.roundtrip(
            msg_id, payload, timeout=self.timeout, raise_errors=False
        )
        rtt = time.perf_counter() - start
        event = frame_event(self.registry, frame, "reply", rtt=rtt, line=lineno)
        self.printer.event(event)
        return event["type"] != "error" and "decode_error" not in event

    def _update_watch(self, verb: str, names: list[str]) -> None:
        if verb == "unwatch":
            if not names:
                self.watching.clear()
            for name in names:
                if name in self.watching:
                    self.watching.remove(name)
                else:
                    with contextlib.suppress(InputError):
                        full = resolve_name(self.registry, name)
                        if full in self.watching:
                            self.watching.remove(full)
            return
        for name in names:
            # Globs are kept as typed; a plain name must exist, so a typo is caught now
            # rather than silently hiding every push.
            full = name if any(c in name for c in "*?[") else resolve_name(self.registry, name)
            if full not in self.watching:
                self.watching.append(full)

    async def _raw_send(self, text: str, lineno: int | None) -> bool:
        data = parse_hex(text)
        if not data:
            raise InputError("raw needs hex bytes, e.g. raw 00000007 0001 00 00000001")
        # What the bytes say, so we know which replies to wait for.
        probe = FrameDecoder(max_frame=0xFFFFFFFF)
        sent = probe.feed(data)
        expected = {f.seq for f in sent if f.seq}
        event: dict[str, Any] = {"type": "sent", "bytes": len(data), "frames": len(sent)}
        if lineno is not None:
            event["line"] = lineno
        self.printer.event(event)
        received: list[Frame] = []
        self._raw, self._raw_line, self._raw_arrived = received, lineno, asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            await self.client.send_raw(data)
            deadline = loop.time() + (self.timeout if expected else self.raw_wait)
            closed = asyncio.ensure_future(self.client.wait_closed())
            try:
                while loop.time() < deadline and not closed.done():
                    answered = {f.seq for f in received if f.flags & Flags.RESPONSE}
                    if expected and expected <= answered:
                        break
                    self._raw_arrived.clear()
                    arrived = asyncio.ensure_future(self._raw_arrived.wait())
                    await asyncio.wait(
                        (arrived, closed),
                        timeout=deadline - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    arrived.cancel()
            finally:
                closed.cancel()
        finally:
            self._raw = None
        ok = not any(f.flags & Flags.ERROR for f in received)
        missing = expected - {f.seq for f in received if f.flags & Flags.RESPONSE}
        if missing and not self.client.closed:
            seqs = ", ".join(str(s) for s in sorted(missing))
            raise TimeoutError(f"no reply to seq {seqs}")
        if not received and not self.client.closed:
            note = f"nothing came back within {self.raw_wait:g} s"
            if probe.buffered:
                note += (
                    f"; the last {probe.buffered} bytes are an incomplete frame, "
                    "which the server holds until the rest arrives"
                )
            info: dict[str, Any] = {"type": "info", "message": note}
            if lineno is not None:
                info["line"] = lineno
            self.printer.event(info)
        return ok and not missing


# -- running ---------------------------------------------------------------------------


async def run_lines(
    session: Session,
    lines: AsyncIterator[str] | Iterable[str],
    *,
    echo: bool = True,
    stop_on_error: bool = False,
) -> int:
    """Run commands one by one; the exit code (EXIT_*) for what happened."""
    lineno = 0
    remaining = False

    async def each() -> AsyncIterator[str]:
        if isinstance(lines, AsyncIterator):
            async for item in lines:
                yield item
        else:
            for item in lines:
                yield item

    async for line in each():
        lineno += 1
        if split_command(line) is None:
            continue
        if session.client.closed:
            remaining = True
            session.failures += 1
            message = f"the connection is closed: line {lineno} and after were not run"
            session.printer.event(client_error("closed", message, line=lineno))
            break
        if echo:
            session.printer.echo(line.strip(), lineno)
        before = session.failures
        if not await session.execute(line, lineno):
            break
        if stop_on_error and session.failures > before:
            break
    return exit_code(session, remaining)


def exit_code(session: Session, commands_left: bool = False) -> int:
    if session.lost and commands_left:
        return EXIT_CONNECTION
    return EXIT_FAILED if session.failures else EXIT_OK


def read_lines_async(stream: IO[str]) -> AsyncIterator[str]:
    """Lines of a file or pipe as they come (a reader thread), so `producer | tickwire
    client` runs each command when it arrives instead of after the producer ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                loop.call_soon_threadsafe(queue.put_nowait, None)

    # A daemon thread: a pipe that never closes must not keep the process alive.
    threading.Thread(target=reader, name="tickwire-stdin", daemon=True).start()

    async def lines() -> AsyncIterator[str]:
        while (line := await queue.get()) is not None:
            yield line

    return lines()


def make_completer(registry: Callable[[], MessageRegistry]) -> Completer:
    """A prompt_toolkit Completer over `candidates`. Built on demand: prompt_toolkit is
    imported only for interactive sessions, which keeps script mode quick to start."""
    from prompt_toolkit.completion import Completer, Completion

    class ReplCompleter(Completer):
        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterator[Completion]:
            for c in candidates(document.text_before_cursor, registry()):
                yield Completion(c.text, c.start, display=c.display or None, display_meta=c.meta)

    return ReplCompleter()


def history_path(option: str | None, environ: dict[str, str] | None = None) -> Path:
    """--history FILE, else $TICKWIRE_HISTORY, else ~/.tickwire_history."""
    import os

    env = os.environ if environ is None else environ
    chosen = option or env.get("TICKWIRE_HISTORY") or "~/.tickwire_history"
    return Path(chosen).expanduser()


async def run_interactive(session: Session, history: Path) -> int:
    """The prompt_toolkit REPL. Pushes print above the prompt while the user types
    (patch_stdout); Ctrl-C abandons the running command, not the session."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    store: History
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.touch(exist_ok=True)
        store = FileHistory(str(history))
    except OSError as exc:
        session.printer.event({"type": "info", "message": f"no history file: {exc}"})
        store = InMemoryHistory()
    prompt: PromptSession[str] = PromptSession(
        history=store,
        completer=make_completer(lambda: session.registry),
        auto_suggest=AutoSuggestFromHistory(),
        complete_while_typing=False,
    )
    loop = asyncio.get_running_loop()

    async def end_prompt_when_closed() -> None:
        await session.client.wait_closed()
        if prompt.app.is_running:
            prompt.app.exit(exception=EOFError())

    watcher = asyncio.ensure_future(end_prompt_when_closed())
    try:
        with patch_stdout(raw=True):
            while not session.client.closed:
                try:
                    line = await prompt.prompt_async(f"{session.address}> ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                task = asyncio.ensure_future(session.execute(line))
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signal.SIGINT, task.cancel)
                try:
                    if not await task:
                        break
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    session.printer.event(
                        {
                            "type": "info",
                            "message": "interrupted; a reply that still comes shows as late",
                        }
                    )
                finally:
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(signal.SIGINT)
    finally:
        watcher.cancel()
    return EXIT_CONNECTION if session.lost else EXIT_OK
