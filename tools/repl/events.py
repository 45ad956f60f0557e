"""Frames and failures as events.

Every result is an *event*: a plain dict that `--json` prints as one line and the human
printer renders with colour, so both outputs always say the same thing. No I/O here;
`tickwire decode` describes its frames with `describe_frame` too.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from protocol.errors import ErrorCode, RemoteProtocolError, code_name
from protocol.frame import RESERVED_FLAGS, Flags, Frame
from protocol.proto.system_pb2 import Error
from protocol.registry import MessageRegistry
from protocol.system import ERROR_ID
from tools.repl.parsing import descriptor_of, resolve_name

if TYPE_CHECKING:
    from client_sdk.client import Session as ClientSession
    from client_sdk.errors import ConnectionClosed, ServerError


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
        nested = json_object_type(f)
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


def session_event(
    action: str, session: ClientSession | None, *, rtt: float | None = None
) -> dict[str, Any]:
    """What a session command left: `action` (login, logout, refresh, resume, show) and
    the client's session afterwards, token included (this is a debugging tool: the
    token is what `resume` takes on another connection), or None."""
    event: dict[str, Any] = {"type": "session", "action": action, "session": None}
    if session is not None:
        event["session"] = {
            "user_id": session.user_id,
            "session_id": session.session_id,
            "token": session.token,
            "expires_at_ms": session.expires_at_ms,
            "session_ttl_s": session.session_ttl_s,
        }
    if rtt is not None:
        event["rtt_ms"] = round(rtt * 1000, 3)
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


def is_map(f: FieldDescriptor) -> bool:
    """A `map<K, V>` field (on the wire: a repeated message of `key` and `value`)."""
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def json_object_type(f: FieldDescriptor | None) -> Descriptor | None:
    """The message whose fields a JSON object for `f` has; None when free-form (maps,
    the well-known types with their own JSON forms, scalars)."""
    if f is None or f.message_type is None or is_map(f):
        return None
    if f.message_type.full_name.startswith("google.protobuf."):
        return None
    return f.message_type


def type_name(f: FieldDescriptor) -> str:
    """`repeated string`, `map<string, demo.Player>`, `bytes`: as the .proto says it."""
    if is_map(f):
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
