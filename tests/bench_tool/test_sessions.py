"""The session benches against a real `tickwire serve`: `bench login` (memory and Redis),
`bench restore`, and `bench idle` keeping its quiet connections past the auth timeout.

Short and bounded: a handful of connections for about a second, a few thousand
sessions; cheap scrypt hashes (n=16) so the runs measure nothing slow. No timing
assertions: only that the numbers exist, hang together, and that failures are seen.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import redis
import uvloop

from bench.idle import IdleParams, closing_reason, run_idle
from bench.proc import ServerProcess, server_command
from bench.restore import resume_sample
from bench.results import IdleReport, RestoreReport
from bench.runner import IDLE_SETTINGS, ServerOptions
from bench.serverside.snapshot import build_snapshot
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import Error, GoAway
from tests.bench_tool.helpers import assert_valid_run, read_report, run_cli

LOGIN = ("login", "--conns", "3", "--procs", "2", "--duration", "1", "--warmup", "0.3")
CHEAP = ("--scrypt-n", "16")


def test_login_bench_against_the_memory_store(tmp_path: Path) -> None:
    out = tmp_path / "login.json"
    assert run_cli(*LOGIN, *CHEAP, "--json", str(out)) == 0
    report = read_report(out)
    assert report.kind == "login"
    [run] = report.runs
    assert (run.mode, run.store, run.scrypt_n, run.target) == ("login", "memory", 16, "tickwire")
    assert_valid_run(run)  # logins > 0, zero errors, all connections, a sane histogram


def test_login_bench_against_redis(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "login.json"
    code = run_cli(*LOGIN, *CHEAP, "--store", "redis", "--redis-url", redis_url, "--json", str(out))
    assert code == 0
    [run] = read_report(out).runs
    assert run.store == "redis"
    assert_valid_run(run)
    assert run.store_cpu_pct is not None  # the fixture's redis-server runs here
    # Every connection logged out after the window: no bench session or token is left.
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("tw:session:*") == []
        assert client.keys("tw:token:*") == []


def test_refused_logins_are_errors(tmp_path: Path) -> None:
    """A server that knows none of the users: every login an error, exit status 1."""
    empty = tmp_path / "no-users"
    empty.write_text("# nobody\n")
    out = tmp_path / "login.json"
    code = run_cli(*LOGIN, *CHEAP, "--set", f"users_file={empty}", "--json", str(out))
    assert code == 1
    [run] = read_report(out).runs
    assert run.replies == 0
    assert run.errors > 0
    assert any("UNAUTHENTICATED: wrong user name or password" in s for s in run.error_samples)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--redis-url", "redis://127.0.0.1:1/0"), "--redis-url is for --store redis"),
        (("--set", "nokey"), "--set takes KEY=VALUE"),
    ],
)
def test_login_refuses_contradictions(
    args: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*LOGIN, *args) == 2
    assert says in capsys.readouterr().err


def test_login_refuses_a_scrypt_cost_that_is_not_a_power_of_two() -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(*LOGIN, "--scrypt-n", "24")
    assert exited.value.code == 2


def test_restore_brings_the_sessions_back(tmp_path: Path) -> None:
    out = tmp_path / "restore.json"
    code = run_cli(
        "restore", "--sessions", "3000", "--sample", "25", "--rounds", "1", "--json", str(out)
    )
    assert code == 0
    report = msgspec.json.decode(out.read_bytes(), type=RestoreReport)
    assert report.sessions == 3000
    assert report.snapshot_keys == 3 * 3000  # session hash, token, user's set
    assert report.restored_keys == report.snapshot_keys
    assert report.expired_keys == 0
    assert report.snapshot_bytes > 0
    assert report.resume_sample == report.resumed == 25
    assert report.bogus_refused
    assert len(report.start_s) == len(report.empty_start_s) == 1
    assert report.error_samples == []


def test_resume_check_fails_on_a_server_without_the_sessions(tmp_path: Path) -> None:
    """The control for the restore bench: the same tokens against a server that did not
    restore them are all refused, so a resumed sample does prove the restore."""
    built = uvloop.run(build_snapshot(tmp_path / "s.snapshot", 40, 10))
    assert len(built.sample) == 10
    with ServerProcess(server_command("tickwire", "127.0.0.1")) as server:
        result = uvloop.run(resume_sample(server.host, server.port, built.sample))
    assert result.resumed == 0
    assert result.bogus_refused
    assert len(result.problems) == 10
    assert all("UNAUTHENTICATED" in p for p in result.problems)


def test_idle_bench_server_keeps_quiet_connections_past_the_auth_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spawned server gets auth_timeout=0 on its command line, which wins over the
    1 s this environment gives every tickwire serve: nothing is dropped in a 4 s settle."""
    monkeypatch.setenv("TICKWIRE_AUTH_TIMEOUT", "1")
    out = tmp_path / "idle.json"
    code = run_cli("idle", "--conns", "20", "--procs", "1", "--settle", "4", "--json", str(out))
    assert code == 0
    report = msgspec.json.decode(out.read_bytes(), type=IdleReport)
    assert report.dropped == 0
    assert report.answered == report.opened == 20


def test_idle_bench_says_why_an_external_server_dropped_its_connections(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: a server the bench did not configure closes the quiet connections
    with AUTH_TIMEOUT, and the run fails saying so rather than measuring fewer."""
    monkeypatch.setenv("TICKWIRE_AUTH_TIMEOUT", "1")
    with ServerProcess(server_command("tickwire", "127.0.0.1")) as server:
        endpoint = server.endpoint
        report = run_idle(
            IdleParams(conns=10, procs=1, settle=5.0, ping_timeout=5.0),
            endpoint,
            target="external",
        )
        code = run_cli(
            "idle", "--conns", "5", "--procs", "1", "--settle", "5",
            "--port", str(endpoint.port), "--server-pid", str(server.pid),
        )  # fmt: skip
    assert report.dropped == 10
    assert any("Error AUTH_TIMEOUT" in s for s in report.error_samples)
    assert code == 1
    assert "auth_timeout" in capsys.readouterr().err


def test_idle_settings_reach_only_a_spawned_tickwire_serve() -> None:
    cmd = ServerOptions(settings=IDLE_SETTINGS).command()
    assert cmd[cmd.index("serve") :].count("--set") == 3
    assert "auth_timeout=0" in cmd and "idle_timeout=0" in cmd and "ping_interval=0" in cmd
    assert "--set" not in ServerOptions(target="baseline", settings=IDLE_SETTINGS).command()
    assert ServerOptions(server_cmd=["x"], settings=IDLE_SETTINGS).command() == ["x"]


def test_closing_frames_are_named() -> None:
    error = Error(code=ErrorCode.AUTH_TIMEOUT, message="no login").SerializeToString()
    away = GoAway(reason=ErrorCode.SERVER_SHUTDOWN, message="bye").SerializeToString()
    assert closing_reason(3, error) == "Error AUTH_TIMEOUT: no login"
    assert closing_reason(30, away) == "GoAway SERVER_SHUTDOWN: bye"
    assert closing_reason(2, b"") is None
