"""`Session`: one connection to a server and the commands run on it.

It owns the socket: requests and their replies, pushes and the other frames nobody
waits for (shown as they arrive), `raw` bytes, and the close. Every outcome goes to a
`Printer` as an event; failures are counted in `Session.failures`, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import math
import ssl
import time
from typing import Any

from google.protobuf.message import Message

from client_sdk.client import AsyncClient
from client_sdk.errors import ClientError, ConnectionClosed, ServerError
from protocol.errors import ProtocolError, RegistryError
from protocol.frame import Flags, Frame, FrameDecoder
from protocol.registry import MessageRegistry
from protocol.system import GOAWAY_ID, PING_ID
from tools.repl.events import (
    client_error,
    closed_event,
    fields_event,
    frame_event,
    server_error_event,
    session_event,
)
from tools.repl.parsing import (
    HELP_TEXT,
    SESSION_MESSAGES,
    InputError,
    build_message,
    descriptor_of,
    parse_hex,
    resolve_name,
    session_message,
    split_command,
    split_message,
    split_words,
)
from tools.repl.printers import Printer

#: How the session commands are typed, for their errors.
COMMANDS_USAGE = {
    "login": "login USER PASSWORD [DEVICE], or login {json}",
    "resume": "resume TOKEN [LAST_PUSH_SEQ], or resume {json}",
}


def _push_seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"LAST_PUSH_SEQ is a number, got {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise InputError(f"LAST_PUSH_SEQ must be 0 to 2**64-1, got {text}")
    return value


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
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Session:
        """Connect and learn the server's schema; raises ConnectionError with why not
        (a failed TLS handshake included: TLSError is one)."""
        try:
            client = await AsyncClient.connect(
                host,
                port,
                timeout=timeout,
                tls=tls if tls is not None else False,
                server_hostname=server_hostname,
            )
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
            if frame.msg_id == PING_ID and not frame.seq:
                return  # a server heartbeat, which the SDK answers on its own
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
        except ClientError as exc:  # a reply of the wrong type, say
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
                        f"not available: this server has no {verb} message (no sessions)",
                        line=lineno,
                    )
                )
                return False
            event = await self._session_command(verb, target, rest)
        elif verb == "session":
            if rest:
                raise InputError("usage: session")
            event = session_event("show", self.client.session)
        elif verb == "sleep":
            try:
                seconds = float(rest)
            except ValueError:
                raise InputError(f"sleep takes seconds, got {rest!r}") from None
            if not math.isfinite(seconds):
                raise InputError(f"sleep takes a finite number of seconds, got {rest!r}")
            await asyncio.sleep(max(seconds, 0.0))
            return True
        else:  # help
            event = {"type": "help", "text": HELP_TEXT}
        if lineno is not None:
            event["line"] = lineno
        self.printer.event(event)
        return True

    async def _session_command(self, verb: str, target: str, rest: str) -> dict[str, Any]:
        """login, logout, refresh, resume through the SDK, so the client keeps the
        session it shows. Arguments as words, or as the message's JSON."""
        client, timeout = self.client, self.timeout
        as_json = rest.startswith("{")
        # A dynamic class from Describe: its fields are read by name.
        fields: Any = build_message(self.registry, target, rest) if as_json else None
        start = time.perf_counter()
        if verb == "login":
            if fields is not None:
                args = [getattr(fields, f) for f in ("user", "password", "device")]
            else:
                args = split_words(rest, COMMANDS_USAGE["login"], 2, 3)
            await client.login(*args, timeout=timeout)
        elif verb == "resume":
            if fields is not None:
                token, last = fields.token, fields.last_push_seq
            else:
                words = split_words(rest, COMMANDS_USAGE["resume"], 1, 2)
                token, last = words[0], _push_seq(words[1] if len(words) > 1 else "0")
            await client.resume(token, last, timeout=timeout)
        elif verb == "refresh":
            if rest and fields is None:
                raise InputError("usage: refresh")
            await client.refresh_token(timeout=timeout)
        else:
            if rest and fields is None:
                raise InputError("usage: logout")
            await client.logout(timeout=timeout)
        return session_event(verb, client.session, rtt=time.perf_counter() - start)

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
