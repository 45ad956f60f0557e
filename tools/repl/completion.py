"""Tab completion: what to offer for the line typed so far.

`candidates` is pure (no prompt_toolkit), so tests call it directly; `make_completer`
wraps it for the interactive prompt and imports prompt_toolkit only when called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from protocol.errors import RegistryError
from protocol.registry import MessageRegistry
from tools.repl.events import is_map, json_object_type, type_name
from tools.repl.parsing import (
    ALIASES,
    COMMANDS,
    SESSION_MESSAGES,
    InputError,
    descriptor_of,
    resolve_name,
    session_message,
)

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document


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
        # Words (login USER PASSWORD) have nothing to complete; the {json} form does.
        body = rest.lstrip()
        if body and not body.startswith("{"):
            return []
        target = session_message(registry, verb)
        return _json_candidates(registry, target, rest) if target else []
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


def _value_field(level: _Level) -> FieldDescriptor | None:
    if level.kind == "arr" or level.value_field is not None:
        return level.value_field
    return _field(level.desc, level.key)


def _child_object(parent: _Level) -> _Level:
    f = _value_field(parent)
    if f is not None and is_map(f) and parent.kind == "obj" and parent.value_field is None:
        assert f.message_type is not None
        return _Level("obj", value_field=f.message_type.fields_by_name["value"])
    return _Level("obj", desc=json_object_type(f))


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
    if f is None or (f.is_repeated and level.kind == "obj" and not is_map(f)):
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
