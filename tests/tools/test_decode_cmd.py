"""`tickwire decode`: hex dumps and raw captures into frames, problems reported by offset."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from protocol.registry import system_registry
from tests.conftest import StartServer
from tests.integration.testapp import make_app
from tests.proto import testapp_pb2 as pb
from tools.cli import main
from tools.decode_cmd import frame_events, split_frames
from tools.repl import InputError, parse_hex

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

ECHO = encode_frame(10, 0, 1, EchoRequest(data=b"hi").SerializeToString())
REPLY = encode_frame(11, Flags.RESPONSE, 1, EchoReply(data=b"hi").SerializeToString())
ERROR = encode_frame(
    3,
    Flags.ERROR | Flags.RESPONSE,
    7,
    Error(code=4, message="no handler for message id 999", request_msg_id=999).SerializeToString(),
)
PING = encode_frame(1, 0, 5)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any]]:
    code, out, err = run([*argv, "--json"], capsys)
    assert "Traceback" not in err
    return code, [json.loads(line) for line in out.splitlines()]


def test_hex_with_separators_and_prefixes() -> None:
    # The docs' Echo example, as people paste it from different tools.
    expected = bytes.fromhex("0000000b000a00000000010a026869")
    for text in (
        "00 00 00 0b 00 0a 00 00 00 00 01 0a 02 68 69",
        "00:00:00:0b:00:0a:00:00:00:00:01:0a:02:68:69",
        "0x00 0x00 0x00 0x0b 0x000a 0x00 0x00000001 0x0a026869",
        "0000000b000a\n  00 00000001 # seq\n0a026869\n",
        "\\x00\\x00\\x00\\x0b\\x00\\x0a\\x00\\x00\\x00\\x00\\x01\\x0a\\x02\\x68\\x69",
        "00,00,00,0B,00,0A,00,00,00,00,01,0A,02,68,69",
    ):
        assert parse_hex(text) == expected, text
    with pytest.raises(InputError, match="odd number"):
        parse_hex("0x0 0b")
    with pytest.raises(InputError, match="'z'"):
        parse_hex("00 zz")


def test_a_stream_of_several_frames(capsys: pytest.CaptureFixture[str]) -> None:
    stream = ECHO + REPLY + ERROR + PING
    code, events = run_json(["decode", stream.hex(" ")], capsys)
    assert code == 0
    frames = [e for e in events if e["type"] == "frame"]
    assert [(f["offset"], f["msg_id"], f["seq"]) for f in frames] == [
        (0, 10, 1),
        (15, 11, 1),
        (30, 3, 7),
        (77, 1, 5),
    ]
    assert frames[0]["message"] == {"data": "aGk="} and frames[0]["flags"] == []
    assert frames[1]["flags"] == ["RESPONSE"] and frames[1]["name"] == "system.EchoReply"
    assert frames[2]["flags"] == ["RESPONSE", "ERROR"] and frames[2]["length"] == 43
    assert frames[2]["error"]["code_name"] == "UNKNOWN_MESSAGE"
    assert frames[3]["message"] == {"client_time_ns": 0} and frames[3]["payload_size"] == 0
    assert events[-1] == {"type": "summary", "frames": 4, "bytes": 88, "undecoded": 0, "ok": True}

    code, out, err = run(["decode", "--no-color", stream.hex(":")], capsys)
    assert code == 0 and err == ""
    assert "#2 offset 30  length 43  msg_id 3 system.Error  flags RESPONSE|ERROR  seq 7" in out
    assert "UNKNOWN_MESSAGE (4): no handler for message id 999" in out
    assert '{"data": "aGk="}' in out and "4 frames in 88 bytes" in out


def test_a_truncated_tail_names_its_offset(capsys: pytest.CaptureFixture[str]) -> None:
    stream = ECHO + REPLY[:9]
    code, events = run_json(["decode", stream.hex()], capsys)
    assert code == 1
    assert [e["type"] for e in events] == ["frame", "truncated", "summary"]
    assert events[1]["offset"] == 15
    assert events[1]["message"] == "truncated frame: length 11 needs 15 bytes, only 9 present"
    # Fewer than the 4 length bytes.
    split = split_frames(ECHO + b"\x00\x00")
    assert split.problem is not None and split.problem.offset == 15
    assert "only 2 of the 4 length bytes" in split.problem.message

    code, out, err = run(["decode", "--no-color", stream.hex()], capsys)
    assert code == 1 and "Traceback" not in err
    assert "error at offset 15: truncated frame" in out


def test_a_bad_length_names_its_offset_and_code(capsys: pytest.CaptureFixture[str]) -> None:
    too_short = ECHO + bytes.fromhex("00000003 0001 00") + PING
    code, events = run_json(["decode", too_short.hex()], capsys)
    assert code == 1
    bad = events[1]
    assert bad["type"] == "bad_length" and bad["offset"] == 15
    assert bad["code"] == ErrorCode.BAD_FRAME and bad["code_name"] == "BAD_FRAME"
    assert bad["message"] == "frame length 3 is below the minimum of 7"

    too_long = PING + bytes.fromhex("00100008 0001 00 00000001")  # 1 MiB + 8
    code, events = run_json(["decode", too_long.hex()], capsys)
    assert code == 1 and events[1]["offset"] == 11
    assert events[1]["code_name"] == "FRAME_TOO_LARGE"
    # Judged like a server with a larger max_frame, it is merely truncated.
    code, events = run_json(["decode", "--max-frame", str(2 << 20), too_long.hex()], capsys)
    assert events[1]["type"] == "truncated"

    code, out, err = run(["decode", "--no-color", too_short.hex()], capsys)
    assert "error at offset 15: BAD_FRAME (1): frame length 3 is below the minimum of 7" in out
    assert "Traceback" not in err


def test_files_stdin_and_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = tmp_path / "capture.bin"
    capture.write_bytes(ECHO + REPLY)
    code, events = run_json(["decode", "--raw", str(capture)], capsys)
    assert code == 0 and events[-1]["frames"] == 2
    dump = tmp_path / "dump.txt"
    dump.write_text("# from tcpdump\n" + ECHO.hex(" ") + "\n" + REPLY.hex(" ") + "\n")
    code, events = run_json(["decode", "-f", str(dump)], capsys)
    assert code == 0 and events[-1]["frames"] == 2

    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(PING.hex(":")))
    code, events = run_json(["decode"], capsys)
    assert code == 0 and events[0]["name"] == "system.Ping"

    code, _, err = run(["decode", "00 0g"], capsys)
    assert code == 2 and "bad hex" in err and "'g'" in err
    code, _, err = run(["decode", "--raw", str(tmp_path / "missing.bin")], capsys)
    assert code == 2 and "missing.bin" in err


def test_unknown_ids_and_bad_payloads_are_shown_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app_frame = encode_frame(1000, 0, 1, pb.SleepRequest(ms=5, tag=7).SerializeToString())
    garbage = encode_frame(10, 0, 2, b"\xff\xff\xff")
    split = split_frames(app_frame + garbage)
    events = frame_events(split, system_registry())
    unknown, broken, summary = events
    assert unknown["name"] is None and unknown["payload_hex"] == "08051007"
    assert unknown["decode_error"]["code_name"] == "UNKNOWN_MESSAGE"
    assert broken["name"] == "system.EchoRequest" and broken["message"] is None
    assert broken["decode_error"]["code_name"] == "DECODE_ERROR"
    assert summary["undecoded"] == 2 and summary["ok"] is False
    code, out, err = run(["decode", "--no-color", (app_frame + garbage).hex()], capsys)
    assert code == 1 and "--server" in err and "Traceback" not in err
    assert "not decoded: DECODE_ERROR (5)" in out


async def test_server_schema_decodes_application_messages(start_server: StartServer) -> None:
    server = await start_server(make_app())
    host, port = server.address
    frame = encode_frame(1000, 0, 1, pb.SleepRequest(ms=5, tag=7).SerializeToString())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "decode",
        "--server",
        f"{host}:{port}",
        "--json",
        frame.hex(" "),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    first = json.loads(out.splitlines()[0])
    assert first["name"] == "testapp.SleepRequest" and first["message"] == {"ms": 5, "tag": 7}

    # A server that is not there: exit 3 with the reason, no traceback.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "decode",
        "--server",
        "127.0.0.1:1",
        frame.hex(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3
    assert b"cannot connect to 127.0.0.1:1" in err and b"Traceback" not in err
