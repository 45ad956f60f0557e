"""`tickwire client` against real servers: script mode, --json, exit codes, pushes, and
the interactive REPL through a pseudo-terminal. Completion is tested as a pure function."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import pty
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameDecoder, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, GoAway, Pong
from protocol.registry import MessageRegistry, system_registry
from tests.conftest import StartServer
from tests.integration.testapp import app_registry, make_app
from tools.repl import (
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_OK,
    JsonPrinter,
    Session,
    candidates,
    flag_names,
    history_path,
    parse_address,
    parse_hex,
    run_lines,
    split_command,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------


async def run_session(
    address: tuple[str, int], script: str, *, timeout: float = 5.0, raw_wait: float = 0.2
) -> tuple[int, list[dict[str, Any]]]:
    """Script mode in-process, with --json output parsed."""
    out = io.StringIO()
    session = await Session.connect(*address, JsonPrinter(out), timeout=timeout, raw_wait=raw_wait)
    try:
        code = await run_lines(session, script.splitlines(), echo=False)
    finally:
        await session.close()
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


async def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """`python -m tools.cli ARGS` as a user runs it (stdin a pipe, never a terminal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate((stdin or "").encode()), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def address_of(server: Any) -> str:
    host, port = server.address
    return f"{host}:{port}"


# -- script mode against a real server -------------------------------------------------


async def test_script_sends_by_name_with_the_schema_from_describe(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app())
    code, events = await run_session(
        server.address,
        """
        # testapp's messages are not in this process's registry: only Describe knows them
        testapp.NoteRequest {"text": "abcd"}
        system.EchoRequest {"data": "aGk="}
        ping
        describe
        """,
    )
    assert code == EXIT_OK
    connected, note, echo, pong, table = events
    assert connected["type"] == "connected" and connected["messages"] >= 20
    assert note["type"] == "reply" and note["name"] == "testapp.SleepReply"
    assert note["message"] == {"tag": 4} and note["flags"] == ["RESPONSE"]
    assert note["msg_id"] == 1001 and note["seq"] > 0 and note["line"] == 3
    assert echo["message"] == {"data": "aGk="} and echo["name"] == "system.EchoReply"
    assert pong["type"] == "pong" and pong["rtt_ms"] > 0
    assert {"id": 1000, "name": "testapp.SleepRequest"} in table["ids"]


async def test_error_replies_show_the_code_by_name_and_fail_the_exit_code(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app())
    code, events = await run_session(
        server.address,
        """
        testapp.AppErrorRequest {"code": 150}
        raw 0000000b 03e7 00 00000009 0a026869
        ping
        """,
    )
    assert code == EXIT_FAILED
    app_error, sent, unknown, pong = events[1:]
    assert app_error["type"] == "error" and app_error["source"] == "server"
    assert app_error["code"] == 150 and app_error["code_name"] == "APPLICATION(150)"
    assert app_error["flags"] == ["RESPONSE", "ERROR"]
    assert sent == {"type": "sent", "bytes": 15, "frames": 1, "line": 3}
    assert unknown["code_name"] == "UNKNOWN_MESSAGE" and unknown["code"] == 4
    assert unknown["message"] == "no handler for message id 999" and unknown["seq"] == 9
    assert pong["type"] == "pong"  # the connection stays usable after errors


async def test_bad_input_and_timeouts_fail_without_sending(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app())
    code, events = await run_session(
        server.address,
        """
        system.EchoRequst {}
        system.EchoRequest {"data": 5}
        system.EchoRequest {"data":
        raw 0x0g
        login ann
        resume
        testapp.SleepRequest {"ms": 400, "tag": 1}
        sleep 0.5
        """,
        timeout=0.1,
    )
    assert code == EXIT_FAILED
    typo, bad_type, bad_json, bad_hex, login, resume, timeout, late = events[1:]
    assert typo["reason"] == "bad_input" and "did you mean system.EchoRequest" in typo["message"]
    assert bad_type["reason"] == "bad_input" and "data" in bad_type["message"]
    assert bad_json["reason"] == "bad_input" and "bad JSON" in bad_json["message"]
    assert bad_hex["reason"] == "bad_input" and "'g'" in bad_hex["message"]
    # Session commands check their arguments before anything goes out.
    assert login["reason"] == "bad_input"
    assert login["message"] == "usage: login USER PASSWORD [DEVICE], or login {json}"
    assert resume["reason"] == "bad_input" and resume["message"].startswith("usage: resume")
    assert timeout["reason"] == "timeout" and timeout["line"] == 8
    # The reply that came after the timeout is still shown, marked as late.
    assert late["type"] == "reply" and late["late"] is True and late["message"] == {"tag": 1}


async def test_sleep_refuses_nan(start_server: StartServer) -> None:
    server = await start_server()
    code, out, err = await run_cli(
        "client", address_of(server), "--json", stdin="ping\nsleep nan\nping\n"
    )
    assert code == 1, out + err
    assert "finite" in out


async def test_cli_script_file_human_output_and_exit_codes(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(make_app())
    good = tmp_path / "good.tw"
    good.write_text('# comment\n\nsystem.EchoRequest {"data": "aGk="}\nping\nquit\nping\n')
    code, out, err = await run_cli("client", address_of(server), "--script", str(good))
    assert code == 0, err
    assert "reply 11 system.EchoReply  RESPONSE  seq=" in out
    assert '{"data": "aGk="}' in out
    assert "3> system.EchoRequest" in out and "4> ping" in out and "6> ping" not in out
    assert "Traceback" not in err

    bad = tmp_path / "bad.tw"
    bad.write_text("system.Pong {}\nping\n")
    code, out, err = await run_cli("client", address_of(server), "--script", str(bad))
    assert code == 1
    assert "UNKNOWN_MESSAGE (4): no handler for message id 2" in out
    assert "pong " in out  # the script goes on after a failure...
    code, out, _ = await run_cli(
        "client", address_of(server), "--script", str(bad), "--stop-on-error"
    )
    assert code == 1 and "pong " not in out  # ...unless told to stop


async def test_cli_reads_stdin_when_it_is_not_a_terminal_and_json_parses(
    start_server: StartServer,
) -> None:
    server = await start_server(make_app())
    script = 'system.EchoRequest {"data": "AAE="}\ntestapp.FailRequest {}\n'
    code, out, err = await run_cli("client", address_of(server), "--json", stdin=script)
    assert code == 1, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["connected", "reply", "error"]
    assert events[1]["message"] == {"data": "AAE="}
    assert events[2]["code_name"] == "INTERNAL" and events[2]["line"] == 2


async def test_cli_connection_and_usage_failures() -> None:
    # A port nothing listens on: bind one, then close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    code, _, err = await run_cli("client", f"127.0.0.1:{port}", "--script", "-", stdin="ping\n")
    assert code == EXIT_CONNECTION and "cannot connect" in err and "Traceback" not in err
    code, _, err = await run_cli("client", "no-port-here", stdin="")
    assert code == 2 and "HOST:PORT" in err
    code, _, err = await run_cli("client", "127.0.0.1:1", "--script", "/does/not/exist")
    assert code == 2 and "cannot read script" in err


# -- pushes, from a scripted peer (the server has no push API yet) -----------------------


class ScriptedServer:
    """Answers Describe with the real system schema, Ping with Pong (after writing the
    pushes queued in `on_ping`), Echo with EchoReply; `push` writes to every client."""

    def __init__(self) -> None:
        self.on_ping: list[bytes] = []
        self.on_echo_goaway = False
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = self._server.sockets[0].getsockname()[:2]

    def push(self, data: bytes) -> None:
        for writer in self.writers:
            writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    self._answer(frame.msg_id, frame.seq, frame.payload, writer)

    def _answer(self, msg_id: int, seq: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        if msg_id == 20:
            describe = system_registry().describe().SerializeToString()
            writer.write(encode_frame(21, Flags.RESPONSE, seq, describe))
            self.connected.set()
        elif msg_id == 1:
            for frame in self.on_ping:
                writer.write(frame)
            writer.write(encode_frame(2, Flags.RESPONSE, seq, Pong().SerializeToString()))
        elif msg_id == 10:
            if self.on_echo_goaway:
                goaway = GoAway(reason=ErrorCode.SERVER_SHUTDOWN, message="draining")
                writer.write(encode_frame(30, Flags.PUSH, 0, goaway.SerializeToString()))
                writer.close()
                return
            data = EchoRequest.FromString(payload).data
            writer.write(
                encode_frame(11, Flags.RESPONSE, seq, EchoReply(data=data).SerializeToString())
            )

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


def echo_push(seq: int, data: bytes) -> bytes:
    return encode_frame(11, Flags.PUSH, seq, EchoReply(data=data).SerializeToString())


async def test_pushes_are_shown_and_filtered_by_watch(scripted: ScriptedServer) -> None:
    scripted.on_ping = [
        echo_push(1, b"one"),
        encode_frame(2, Flags.PUSH, 2, Pong(server_time_ns=5).SerializeToString()),
        encode_frame(999, Flags.PUSH, 3, b"\x08\x01"),  # a type this schema lacks
    ]
    code, events = await run_session(
        scripted.address,
        """
        watch system.EchoReply
        ping
        watch
        unwatch
        ping
        watch system.Ec*
        """,
    )
    assert code == EXIT_OK
    types = [e["type"] for e in events]
    assert types == [
        "connected", "watch", "push", "pong", "watch", "watch", "push", "push", "push",
        "pong", "watch",
    ]  # fmt: skip
    first = events[2]
    assert first["name"] == "system.EchoReply" and first["flags"] == ["PUSH"]
    assert first["seq"] == 1 and first["message"] == {"data": "b25l"}
    assert events[4]["filter"] == ["system.EchoReply"] and events[5]["filter"] == []
    pong_push, unknown = events[7], events[8]
    assert pong_push["name"] == "system.Pong" and pong_push["seq"] == 2
    assert pong_push["message"]["server_time_ns"] == 5
    assert unknown["name"] is None and unknown["payload_hex"] == "0801"
    assert unknown["decode_error"]["code_name"] == "UNKNOWN_MESSAGE"
    assert events[10]["filter"] == ["system.Ec*"]


async def test_goaway_is_shown_and_a_closed_connection_ends_the_script(
    scripted: ScriptedServer,
) -> None:
    scripted.on_echo_goaway = True
    code, events = await run_session(scripted.address, "system.EchoRequest {}\nping\nping\n")
    assert code == EXIT_CONNECTION
    kinds = [e["type"] for e in events]
    assert "push" in kinds and "closed" in kinds
    goaway = next(e for e in events if e["type"] == "push")
    assert goaway["name"] == "system.GoAway" and goaway["message"]["message"] == "draining"
    closed = next(e for e in events if e["type"] == "closed")
    assert closed["code"] == ErrorCode.SERVER_SHUTDOWN and closed["code_name"] == "SERVER_SHUTDOWN"
    assert not any(e["type"] == "pong" for e in events)


# -- the interactive REPL through a pseudo-terminal -------------------------------------

_ESCAPES = re.compile(
    rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])"
)


_CURSOR_RIGHT = re.compile(rb"\x1b\[(\d*)C")


class Terminal:
    """A child process on a pty, read without blocking the event loop (the server under
    test runs on the same loop)."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        import subprocess

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        os.set_blocking(master, False)
        self.raw = b""
        self._data = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the child closed its side
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.raw += chunk
        self._data.set()

    @property
    def text(self) -> str:
        """What was written, escapes removed; prompt_toolkit moves the cursor right
        (CSI n C) instead of writing spaces, so those become spaces again."""
        spaced = _CURSOR_RIGHT.sub(lambda m: b" " * int(m.group(1) or 1), self.raw)
        return _ESCAPES.sub(b"", spaced).replace(b"\r", b"").decode(errors="replace")

    async def expect(self, needle: str, timeout: float = 15.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while needle not in self.text:
                    self._data.clear()
                    await self._data.wait()
        except TimeoutError:
            raise AssertionError(f"{needle!r} not shown; the screen had:\n{self.text}") from None

    async def expect_after(self, marker: str, needle: str, timeout: float = 15.0) -> None:
        """`needle` shown after the last `marker`: a new prompt after a reply, say."""
        try:
            async with asyncio.timeout(timeout):
                while needle not in self.text.rpartition(marker)[2]:
                    self._data.clear()
                    await self._data.wait()
        except TimeoutError:
            raise AssertionError(
                f"{needle!r} not shown after {marker!r}; the screen had:\n{self.text}"
            ) from None

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    async def wait(self, timeout: float = 15.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still running; the screen had:\n{self.text}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.fd)


def terminal_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKWIRE")}
    # No cursor-position queries to answer, and a history file of the test's own.
    env.update(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", HOME=str(tmp_path))
    env["TICKWIRE_HISTORY"] = str(tmp_path / "env_history")
    return env


async def test_repl_typing_a_message_and_enter_prints_the_reply(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(make_app())
    history = tmp_path / "history"
    term = Terminal(
        "client", address_of(server), "--history", str(history), env=terminal_env(tmp_path)
    )
    try:
        await term.expect(f"{address_of(server)}>")
        # Tab completes the name (unique), then the first field inside the JSON.
        term.type("testapp.NoteReq\t")
        await term.expect("testapp.NoteRequest")
        term.type("\t")
        await term.expect('"text": ')
        term.type('"hello"}\r')
        await term.expect("reply 1001 testapp.SleepReply  RESPONSE  seq=")
        await term.expect('{"tag": 5}')
        term.type("system.Pong {}\r")
        await term.expect("UNKNOWN_MESSAGE (4): no handler for message id 2")
        term.type("quit\r")
        assert await term.wait() == 0
    finally:
        term.close()
    saved = history.read_text()
    assert 'testapp.NoteRequest {"text": "hello"}' in saved and "quit" in saved
    assert not (tmp_path / "env_history").exists()  # --history wins over the variable


async def test_repl_shows_a_push_while_the_user_is_typing(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    host, port = scripted.address
    term = Terminal("client", f"{host}:{port}", env=terminal_env(tmp_path))
    try:
        await term.expect(f"{host}:{port}>")
        await asyncio.wait_for(scripted.connected.wait(), 10)
        term.type("system.EchoRequest {")  # half a line, no Enter
        await term.expect("system.EchoRequest {")
        scripted.push(echo_push(7, b"while typing"))
        await term.expect("push 11 system.EchoReply  PUSH  seq=7")
        await term.expect('{"data": "d2hpbGUgdHlwaW5n"}')
        # The half-typed line survived the push; finish it.
        term.type('"data": "aGk="}\r')
        await term.expect("reply 11 system.EchoReply  RESPONSE  seq=")
        # Ctrl-D only once the next prompt reads the keys: between prompts the terminal
        # is in cooked mode, where the line discipline swallows it as end-of-file.
        await term.expect_after("RESPONSE  seq=", f"{host}:{port}>")
        term.type("\x04")  # Ctrl-D
        assert await term.wait() == 0
    finally:
        term.close()
    # No --history: the variable chose the file.
    assert "system.EchoRequest" in (tmp_path / "env_history").read_text()


# -- pure functions ----------------------------------------------------------------------


def demo_registry() -> MessageRegistry:
    """A schema with the field kinds completion must handle: nested and repeated
    messages, a map, an enum and a bool, served the way Describe serves it."""
    from google.protobuf import descriptor_pb2 as d

    from protocol.proto.system_pb2 import DescribeReply

    f = d.FieldDescriptorProto
    file = d.FileDescriptorProto(name="demo.proto", package="demo", syntax="proto3")
    color = file.enum_type.add(name="Color")
    color.value.add(name="RED", number=0)
    color.value.add(name="BLUE", number=1)
    item = file.message_type.add(name="Item")
    item.field.add(name="label", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    item.field.add(name="count", number=2, type=f.TYPE_UINT32, label=f.LABEL_OPTIONAL)
    player = file.message_type.add(name="Player")
    entry = player.nested_type.add(name="ItemsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, type_name=".demo.Item",
                    label=f.LABEL_OPTIONAL)  # fmt: skip
    for number, (name, kind, label, type_name) in enumerate(
        [
            ("player_name", f.TYPE_STRING, f.LABEL_OPTIONAL, ""),
            ("color", f.TYPE_ENUM, f.LABEL_OPTIONAL, ".demo.Color"),
            ("items", f.TYPE_MESSAGE, f.LABEL_REPEATED, ".demo.Player.ItemsEntry"),
            ("bag", f.TYPE_MESSAGE, f.LABEL_REPEATED, ".demo.Item"),
            ("hand", f.TYPE_MESSAGE, f.LABEL_OPTIONAL, ".demo.Item"),
            ("ready", f.TYPE_BOOL, f.LABEL_OPTIONAL, ""),
        ],
        start=1,
    ):
        added = player.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            added.type_name = type_name
    reply = system_registry().describe()
    fds = d.FileDescriptorSet.FromString(reply.file_descriptor_set)
    fds.file.append(file)
    ids = [*reply.ids]
    demo = DescribeReply(file_descriptor_set=fds.SerializeToString())
    demo.ids.extend(ids)
    demo.ids.add(id=300, full_name="demo.Player")
    demo.ids.add(id=301, full_name="demo.Item")
    return MessageRegistry.from_describe(demo)


def texts(text: str, registry: MessageRegistry | None = None) -> list[str]:
    return [c.text for c in candidates(text, registry or app_registry())]


def test_completion_of_message_names_and_commands() -> None:
    assert texts("system.Ech") == ["system.EchoReply ", "system.EchoRequest "]
    assert texts("testapp.Sl") == ["testapp.SleepReply ", "testapp.SleepRequest "]
    # Case-insensitive, and a name found by a part of it ("Unordered" is mid-name).
    assert texts("unordered") == ["testapp.UnorderedSleepRequest "]
    assert texts("pi") == ["ping ", "system.Ping "]  # commands first
    assert "watch " in texts("w") and "unwatch " not in texts("w")
    [echo] = [c for c in candidates("system.EchoReq", app_registry())]
    assert echo.start == -len("system.EchoReq") and echo.meta == "id 10"
    assert texts("watch system.Po") == ["system.Pong "]
    assert texts("describe testapp.Big") == ["testapp.BigReply ", "testapp.BigRequest "]
    assert texts("notify testapp.Note") == ["testapp.NoteRequest "]
    assert texts("ping ") == []


def test_completion_of_field_names_inside_the_json() -> None:
    registry = app_registry()
    assert texts("testapp.SleepRequest ", registry) == ['{"ms": ', '{"tag": ']
    assert texts("testapp.SleepRequest {", registry) == ['"ms": ', '"tag": ']
    both = candidates('testapp.SleepRequest {"t', registry)
    assert [(c.text, c.start, c.display, c.meta) for c in both] == [
        ('"tag": ', -2, "tag", "uint32")
    ]
    # Fields already given are not offered again.
    assert texts('testapp.SleepRequest {"ms": 5, ', registry) == ['"tag": ']
    assert texts('testapp.SleepRequest {"ms": 5, "', registry) == ['"tag": ']
    assert texts('testapp.SleepRequest {"ms": 5', registry) == []  # typing a value
    assert texts("notify testapp.NoteRequest {", registry) == ['"text": ']
    # Nested: DescribeReply.ids is a repeated system.MessageId.
    assert texts('system.DescribeReply {"ids": [{"id": 1}, {"', registry) == [
        '"id": ',
        '"full_name": ',
    ]
    assert texts("nonsense.Type {", registry) == []
    assert texts("ping {", registry) == []


def test_completion_of_nested_maps_enums_and_bools() -> None:
    registry = demo_registry()
    assert texts('demo.Player {"hand": {"', registry) == ['"label": ', '"count": ']
    assert texts('demo.Player {"items": {"sword": {"c', registry) == ['"count": ']
    assert texts('demo.Player {"bag": [{"label": "a"}, {', registry) == [
        '"label": ',
        '"count": ',
    ]
    assert texts('demo.Player {"color": ', registry) == ['"RED"', '"BLUE"']
    assert texts('demo.Player {"color": "B', registry) == ['"BLUE"']
    assert texts('demo.Player {"ready": t', registry) == ["true"]
    meta = {c.display: c.meta for c in candidates("demo.Player {", registry)}
    assert meta["items"] == "map<string, demo.Item>"
    assert meta["bag"] == "repeated demo.Item" and meta["color"] == "demo.Color"
    # After the object closed there is nothing more to complete.
    assert texts('demo.Player {"ready": true} ', registry) == []


def test_parsing_helpers() -> None:
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("localhost", "host:0", "host:99999", ":7000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert split_command("  # note") is None and split_command("") is None
    assert split_command("PING") == ("ping", "")
    assert split_command("exit") == ("quit", "")
    assert split_command('system.EchoRequest {"data": ""}') == (
        "send",
        'system.EchoRequest {"data": ""}',
    )
    assert parse_hex("00:0a 0x0B,\\x0c\\x0d  # comment\n0e") == bytes([0, 10, 11, 12, 13, 14])
    assert flag_names(Flags.RESPONSE | Flags.ERROR) == ["RESPONSE", "ERROR"]
    assert flag_names(0x11) == ["RESPONSE", "0x10"] and flag_names(0) == []


def test_history_file_choice() -> None:
    home = Path("~").expanduser()
    assert history_path(None, {}) == home / ".tickwire_history"
    assert history_path(None, {"TICKWIRE_HISTORY": "/tmp/h"}) == Path("/tmp/h")
    assert history_path("/tmp/x", {"TICKWIRE_HISTORY": "/tmp/h"}) == Path("/tmp/x")
