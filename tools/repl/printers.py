"""Where events go: one JSON object per line (`--json`), or coloured text with rich.

rich is imported when a HumanPrinter is made and used, not with this module.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, Protocol

from tools.repl.events import code_label

if TYPE_CHECKING:
    from rich.console import RenderableType


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
        elif kind == "session":
            add(_session_line(event))
            if event["session"] is not None:
                add(f"[dim]token {escape(event['session']['token'])}[/]")
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


_SESSION_ACTIONS = {
    "login": "logged in",
    "resume": "resumed",
    "refresh": "token refreshed",
    "logout": "logged out",
    "show": "session",
}


def _session_line(event: dict[str, Any]) -> str:
    from rich.markup import escape

    label = _SESSION_ACTIONS.get(event["action"], event["action"])
    session = event["session"]
    rtt = f"  [dim]{event['rtt_ms']:.3f} ms[/]" if "rtt_ms" in event else ""
    if session is None:
        what = "" if event["action"] == "logout" else " [dim]not logged in[/]"
        return f"[bold green]{label}[/]{what}{rtt}"
    expires = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(session["expires_at_ms"] / 1000))
    return (
        f"[bold green]{label}[/] [bold]{escape(session['user_id'])}[/]  "
        f"session={escape(session['session_id'])}  token expires {expires}  "
        f"session ttl {session['session_ttl_s']} s{rtt}"
    )


def _header(event: dict[str, Any]) -> str:
    from rich.markup import escape

    name = event.get("name") or "(not in the schema)"
    parts = [f"{event['msg_id']} [bold]{escape(name)}[/]", "|".join(event["flags"]) or "NONE"]
    parts.append(f"seq={event['seq']}")
    if "rtt_ms" in event:
        parts.append(f"[dim]{event['rtt_ms']:.3f} ms[/]")
    return "  ".join(parts)
