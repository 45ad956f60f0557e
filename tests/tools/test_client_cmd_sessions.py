"""`tickwire client`'s session commands against a real server with users: login,
session, refresh, logout, resume (words or JSON), their output and completion."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient
from protocol.proto.system_pb2 import Ping, Pong
from protocol.registry import MessageRegistry
from server import Server
from server.auth import MemoryUsers
from tests.conftest import StartServer
from tests.integration.testapp import app_registry, make_app
from tests.tools.test_client_cmd import (
    Terminal,
    address_of,
    run_cli,
    run_session,
    terminal_env,
)
from tools.repl import (
    COMMANDS,
    EXIT_FAILED,
    EXIT_OK,
    HumanPrinter,
    JsonPrinter,
    Session,
    candidates,
    run_lines,
    session_event,
)

pytestmark = pytest.mark.timeout(60)

USERS = {"alice": "pw-a", "bob": "pw b"}


async def start(start_server: StartServer, **config: Any) -> Server:
    return await start_server(make_app(), authenticator=MemoryUsers(USERS), **config)


def sessions_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "session"]


async def test_login_session_refresh_logout_and_their_failures(
    start_server: StartServer,
) -> None:
    server = await start(start_server)
    code, events = await run_session(
        server.address,
        """
        session
        login alice wrong
        login alice pw-a laptop
        session
        refresh
        logout
        session
        login "bob" "pw b"
        logout extra
        refresh now
        """,
    )
    assert code == EXIT_FAILED
    (
        nobody,
        refused,
        login,
        shown,
        refreshed,
        logout,
        after,
        quoted,
        bad_logout,
        bad_refresh,
    ) = events[1:]
    assert nobody == {"type": "session", "action": "show", "session": None, "line": 2}
    assert refused["type"] == "error" and refused["code_name"] == "UNAUTHENTICATED"
    assert refused["line"] == 3
    assert login["action"] == "login" and login["rtt_ms"] > 0 and login["line"] == 4
    session = login["session"]
    assert session["user_id"] == "alice" and session["token"] and session["session_id"]
    assert session["session_ttl_s"] > 0 and session["expires_at_ms"] > 0
    assert shown["action"] == "show" and shown["session"] == session
    assert refreshed["action"] == "refresh"
    assert refreshed["session"]["session_id"] == session["session_id"]
    assert refreshed["session"]["token"] != session["token"]
    assert logout["action"] == "logout" and logout["session"] is None
    assert after["session"] is None
    assert quoted["session"]["user_id"] == "bob"  # quotes keep "pw b" one word
    assert bad_logout["reason"] == "bad_input" and bad_logout["message"] == "usage: logout"
    assert bad_refresh["reason"] == "bad_input" and bad_refresh["message"] == "usage: refresh"


async def test_resume_takes_a_token_from_another_connection_and_json_works_too(
    start_server: StartServer,
) -> None:
    server = await start(start_server, duplicate_login="allow")
    code, events = await run_session(server.address, 'login {"user": "alice", "password": "pw-a"}')
    assert code == EXIT_OK
    [login] = sessions_of(events)
    token, sid = login["session"]["token"], login["session"]["session_id"]
    code, events = await run_session(
        server.address,
        f"""
        resume not-a-token
        resume {token} 0
        session
        resume {token} x
        """,
    )
    assert code == EXIT_FAILED
    refused, resumed, shown, bad_seq = events[1:]
    assert refused["code_name"] == "UNAUTHENTICATED" and refused["line"] == 2
    assert resumed["action"] == "resume" and resumed["session"]["session_id"] == sid
    assert resumed["session"]["token"] == token and shown["session"] == resumed["session"]
    assert bad_seq["reason"] == "bad_input" and "LAST_PUSH_SEQ" in bad_seq["message"]
    code, events = await run_session(server.address, f'resume {{"token": "{token}"}}')
    assert code == EXIT_OK and sessions_of(events)[0]["session"]["session_id"] == sid


async def test_a_server_without_the_session_messages_says_so(start_server: StartServer) -> None:
    server = await start(start_server)
    client = await AsyncClient.connect(*server.address)
    narrow = MessageRegistry()  # as if Describe had listed no session messages
    narrow.register(Ping)
    narrow.register(Pong)
    client.registry = narrow
    out = io.StringIO()
    session = Session(client, JsonPrinter(out))
    try:
        code = await run_lines(session, ["login a b", "logout", "refresh", "resume t"], echo=False)
    finally:
        await session.close()
    assert code == EXIT_FAILED
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["reason"] for e in events] == ["unavailable"] * 4
    assert events[0]["message"] == "not available: this server has no login message (no sessions)"


async def test_cli_human_output_of_the_session(start_server: StartServer) -> None:
    server = await start(start_server)
    code, out, err = await run_cli(
        "client", address_of(server), "--no-color", stdin="login alice pw-a\nsession\nlogout\n"
    )
    assert code == 0, err
    assert "logged in alice  session=" in out and "token expires 20" in out
    assert "\ntoken " in out and "session alice  session=" in out
    assert "logged out" in out and "Traceback" not in err


async def test_repl_prompt_shows_who_is_logged_in(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start(start_server)
    address = address_of(server)
    term = Terminal("client", address, env=terminal_env(tmp_path))
    try:
        await term.expect(f"{address}>")
        term.type("login alice pw-a\r")
        await term.expect("logged in alice")
        await term.expect(f"alice@{address}>")
        term.type("logout\r")
        await term.expect("logged out")
        await term.expect_after("logged out", f"{address}>")
        term.type("quit\r")
        assert await term.wait() == 0
    finally:
        term.close()
    after_logout = term.text.rsplit("logged out", 1)[1]
    assert f"{address}>" in after_logout and f"alice@{address}>" not in after_logout


def test_session_events_render_for_people() -> None:
    out = io.StringIO()
    printer = HumanPrinter(out, color=False)
    printer.event(session_event("show", None))
    printer.event({"type": "session", "action": "logout", "session": None, "rtt_ms": 1.5})
    assert out.getvalue().splitlines() == ["session not logged in", "logged out  1.500 ms"]


def test_completion_of_the_session_commands() -> None:
    registry = app_registry()

    def texts(text: str) -> list[str]:
        return [c.text for c in candidates(text, registry)]

    for command in ("login", "logout", "refresh", "resume", "session"):
        assert command in COMMANDS and f"{command} " in texts(command[:3])
    assert texts("login ") == ['{"user": ', '{"password": ', '{"device": ']
    assert texts('login {"user": "a", "p') == ['"password": ']
    assert texts("login ali") == []  # words: nothing to offer
    assert texts("resume {") == ['"token": ', '"last_push_seq": ']
    assert texts("logout ") == [] and texts("refresh ") == [] and texts("session ") == []
