"""`tickwire decode`: a hex dump or a captured byte stream, as frames and messages.

For debugging captures (tcpdump, Wireshark's "copy as hex", a log line), it frames the
bytes with the same FrameDecoder the server and SDK use, so it judges a length exactly
as they do, and decodes each payload with the system registry or a live server's
schema (--server, via Describe). A bad length or a truncated tail is reported with its
byte offset; nothing here ends in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocol.frame import Frame
    from protocol.registry import MessageRegistry

#: Every frame framed and decoded.
EXIT_OK = 0
#: The bytes have a problem: bad length, truncated tail, a payload that does not decode.
EXIT_PROBLEM = 1
#: Bad arguments, bad hex, unreadable file.
EXIT_USAGE = 2
#: --server could not be reached or its Describe failed.
EXIT_SERVER = 3


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "decode",
        help="decode a hex dump or captured byte stream into frames and messages",
        description="Split bytes into tickwire frames and decode each payload. The hex "
        "may come as arguments, from a file (-f) or from stdin; spaces, newlines, colons, "
        "commas, 0x and \\x prefixes and # comments are ignored.",
        epilog="exit codes: 0 all decoded; 1 a bad length, truncated tail or undecodable "
        "payload; 2 bad arguments, bad hex or unreadable file; 3 --server failed.",
    )
    p.add_argument("hex", nargs="*", metavar="HEX", help="hex bytes (default: read stdin)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("-f", "--file", metavar="FILE", help="read the hex dump from FILE")
    source.add_argument(
        "--raw", metavar="FILE", help="FILE holds the raw bytes as captured ('-': stdin)"
    )
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="decode with this server's schema (Describe) instead of the system messages",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--max-frame",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest length accepted, as the server's max_frame (default 1 MiB)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="--server timeout"
    )
    p.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    p.set_defaults(func=decode)


@dataclass
class Problem:
    """Why framing stopped before the end of the bytes."""

    offset: int
    kind: str  # "bad_length" or "truncated"
    message: str
    code: int | None = None  # the wire code a receiver would send (bad_length only)


@dataclass
class Split:
    frames: list[tuple[int, Frame]]  # (byte offset, frame)
    problem: Problem | None
    size: int


def split_frames(data: bytes, max_frame: int | None = None) -> Split:
    """The frames in `data` with their offsets, and what stopped framing, if anything."""
    from protocol.frame import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder

    decoder = FrameDecoder(max_frame or DEFAULT_MAX_FRAME)
    frames = decoder.feed(data)
    located: list[tuple[int, Frame]] = []
    offset = 0
    for frame in frames:
        located.append((offset, frame))
        offset += HEADER_SIZE + len(frame.payload)
    problem = None
    if decoder.error is not None:
        error = decoder.error
        problem = Problem(offset, "bad_length", error.message, int(error.code))
    elif offset < len(data):
        rest = len(data) - offset
        if rest < 4:
            message = f"only {rest} of the 4 length bytes"
        else:
            length = int.from_bytes(data[offset : offset + 4], "big")
            message = f"length {length} needs {4 + length} bytes, only {rest} present"
        problem = Problem(offset, "truncated", f"truncated frame: {message}")
    return Split(located, problem, len(data))


def frame_events(split: Split, registry: MessageRegistry) -> list[dict[str, Any]]:
    """One event per frame, then the problem if any, then a summary."""
    from protocol.errors import code_name
    from tools.repl import describe_frame

    events: list[dict[str, Any]] = []
    for index, (offset, frame) in enumerate(split.frames):
        event: dict[str, Any] = {"type": "frame", "index": index, "offset": offset}
        event["length"] = 7 + len(frame.payload)
        event.update(describe_frame(registry, frame))
        event["payload_size"] = len(frame.payload)
        events.append(event)
    if split.problem is not None:
        p = split.problem
        problem: dict[str, Any] = {"type": p.kind, "offset": p.offset, "message": p.message}
        if p.code is not None:
            problem.update(code=p.code, code_name=code_name(p.code))
        events.append(problem)
    undecoded = sum(1 for e in events if "decode_error" in e)
    events.append(
        {
            "type": "summary",
            "frames": len(split.frames),
            "bytes": split.size,
            "undecoded": undecoded,
            "ok": split.problem is None and not undecoded,
        }
    )
    return events


def render(events: list[dict[str, Any]], *, color: bool | None, stream: IO[str] | None) -> None:
    from rich.console import Console
    from rich.json import JSON
    from rich.markup import escape
    from rich.padding import Padding

    console = Console(
        file=stream, force_terminal=color, no_color=color is False, highlight=False, soft_wrap=True
    )
    for e in events:
        if e["type"] == "frame":
            name = escape(e["name"] or "(not in the schema)")
            flags = "|".join(e["flags"]) or "NONE"
            console.print(
                f"[bold]#{e['index']}[/] [dim]offset[/] {e['offset']}  [dim]length[/] "
                f"{e['length']}  [dim]msg_id[/] {e['msg_id']} [bold cyan]{name}[/]  "
                f"[dim]flags[/] {flags}  [dim]seq[/] {e['seq']}  "
                f"[dim]payload[/] {e['payload_size']} bytes"
            )
            if "error" in e:
                err = e["error"]
                console.print(
                    f"  [red]{err['code_name']} ({err['code']}): {escape(err['message'])}[/]"
                    + (f" [dim](request msg_id {err['request_msg_id']})[/]")
                )
            if e["message"] is not None:
                import json

                text = json.dumps(e["message"], ensure_ascii=False)
                console.print(Padding(JSON(text, indent=None), (0, 0, 0, 2), expand=False))
            else:
                problem = e["decode_error"]
                console.print(
                    f"  [yellow]not decoded: {problem['code_name']} ({problem['code']}): "
                    f"{escape(problem['message'])}[/]"
                )
                console.print(f"  [dim]payload {e['payload_hex'] or '(empty)'}[/]")
        elif e["type"] in ("bad_length", "truncated"):
            code = f"{e['code_name']} ({e['code']}): " if "code" in e else ""
            console.print(
                f"[bold red]error at offset {e['offset']}[/]: {code}{escape(e['message'])}"
            )
        elif e["type"] == "summary":
            extra = f", {e['undecoded']} not decoded" if e["undecoded"] else ""
            plural = "" if e["frames"] == 1 else "s"
            console.print(f"[dim]{e['frames']} frame{plural} in {e['bytes']} bytes{extra}[/]")


def read_input(args: argparse.Namespace) -> bytes:
    """The bytes to decode. Raises ValueError (bad hex) or OSError (unreadable file)."""
    from tools.repl import InputError, parse_hex

    if args.raw is not None:
        if args.hex:
            raise ValueError("give either HEX arguments or --raw, not both")
        if args.raw == "-":
            return sys.stdin.buffer.read()
        with open(args.raw, "rb") as f:
            return f.read()
    if args.file is not None:
        if args.hex:
            raise ValueError("give either HEX arguments or --file, not both")
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                text = f.read()
    elif args.hex:
        text = " ".join(args.hex)
    else:
        text = sys.stdin.read()
    try:
        return parse_hex(text)
    except InputError as exc:
        raise ValueError(f"bad hex: {exc}") from None


async def fetch_registry(address: str, timeout: float) -> MessageRegistry:
    """The schema of a live server, via Describe. Raises ConnectionError with why not."""
    import asyncio

    from client_sdk import AsyncClient, ClientError
    from protocol.errors import ProtocolError
    from tools.repl import parse_address

    host, port = parse_address(address)
    try:
        client = await AsyncClient.connect(host, port, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot connect to {address}: {exc or 'timed out'}") from None
    try:
        async with asyncio.timeout(timeout):
            return await client.describe()
    except (ClientError, ProtocolError, TimeoutError) as exc:
        raise ConnectionError(f"Describe failed on {address}: {exc or 'timed out'}") from None
    finally:
        await client.close()


def decode(args: argparse.Namespace) -> int:
    import json

    from protocol.errors import ErrorCode
    from protocol.frame import MIN_LENGTH
    from protocol.registry import system_registry

    if args.max_frame is not None and args.max_frame < MIN_LENGTH:
        print(f"tickwire decode: --max-frame must be at least {MIN_LENGTH}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = read_input(args)
    except (ValueError, OSError) as exc:
        print(f"tickwire decode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    registry = system_registry()
    if args.server is not None:
        import asyncio

        try:
            registry = asyncio.run(fetch_registry(args.server, args.timeout))
        except ValueError as exc:  # a malformed HOST:PORT
            print(f"tickwire decode: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ConnectionError as exc:
            print(f"tickwire decode: {exc}", file=sys.stderr)
            return EXIT_SERVER
    events = frame_events(split_frames(data, args.max_frame), registry)
    if args.json:
        for event in events:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    else:
        render(events, color=False if args.no_color else None, stream=None)
        unknown = ErrorCode.UNKNOWN_MESSAGE
        if args.server is None and any(
            e.get("decode_error", {}).get("code") == unknown for e in events
        ):
            print(
                "hint: frames of an application's messages decode with --server HOST:PORT",
                file=sys.stderr,
            )
    return EXIT_OK if events[-1]["ok"] else EXIT_PROBLEM
