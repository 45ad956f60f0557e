"""`tickwire bench attack`: short runs with few hostile connections; the report's shape
and the figures hanging together, never how fast or how big."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bench.attack import KINDS, QUIET, AttackReport
from bench.proc import ServerProcess, server_command
from tests.bench_tool.helpers import run_cli
from tools.bench import attack as attack_cli

SHORT = ("--duration", "1", "--scrypt-n", "16", "--interval", "0.02", "--login-every", "0.3")


def read(path: Path) -> AttackReport:
    return msgspec.json.decode(path.read_bytes(), type=AttackReport)


def test_every_attack_is_reported_beside_the_quiet_run(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    # 64 KiB frames: the unread attack stays small on a server without byte budgets.
    code = run_cli("attack", "--hostile", "2", "--frame-size", "65536", *SHORT, "--json", str(out))
    report = read(out)
    assert code == 0, [r.bystander.failure_samples for r in report.runs]
    assert report.kind == "attack" and report.hostile == 2 and report.scrypt_n == 16
    assert [r.kind for r in report.runs] == [QUIET, *KINDS]
    for run in report.runs:
        assert run.fresh_server and run.server_alive and not run.cut_at_limit
        assert run.rss_start_mib is not None and run.rss_peak_mib is not None
        assert 0 < run.rss_start_mib <= run.rss_peak_mib
        assert run.rss_sampled_peak_mib is not None and run.rss_sampled_peak_mib <= run.rss_peak_mib
        assert run.log_lines is not None and run.log_tracebacks == 0
        bystander = run.bystander
        assert bystander.requests > 0 and bystander.failures == 0
        assert bystander.p50_ms is not None and bystander.p99_ms is not None
        assert bystander.max_ms is not None
        assert 0 < bystander.p50_ms <= bystander.p99_ms <= bystander.max_ms
        assert bystander.logins > 0 and bystander.login_failures == 0
        assert bystander.login_p50_ms is not None and bystander.login_max_ms is not None
        assert 0 < bystander.login_p50_ms <= bystander.login_max_ms
    runs = {r.kind: r for r in report.runs}
    assert runs[QUIET].attack is None and runs[QUIET].hostile == 0
    attacks = {k: r.attack for k, r in runs.items() if k != QUIET}
    for kind, seen in attacks.items():
        assert seen is not None, kind
        assert seen.connections >= 2, kind
    assert attacks["unread"] and attacks["unread"].bytes_sent >= 2 * 65536
    assert attacks["logins"] and attacks["logins"].answers.get("UNAUTHENTICATED", 0) > 0
    assert attacks["flood"] and attacks["flood"].answers.get("reply", 0) > 0
    assert attacks["connect"] and attacks["connect"].closed >= 2


def test_a_server_past_the_memory_limit_is_killed_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    code = run_cli(
        # Room for a busy machine to get there: the run ends at the limit.
        "attack", "--kinds", "unread", "--hostile", "8", "--rss-limit", "120", *SHORT,
        "--duration", "2",
        # Budgets raised far past the limit: with the defaults the attack stays small.
        "--set", f"prelogin_max_frame={1 << 20}", "--set", f"max_input_bytes={1 << 30}",
        "--set", f"prelogin_input_bytes={1 << 30}", "--set", f"max_input_bytes_total={1 << 32}",
        # And the output ones: the replies it never reads pile up instead of closing it.
        "--set", f"prelogin_output_bytes={1 << 30}", "--set", f"slow_consumer_bytes={1 << 30}",
        "--set", f"max_output_bytes_total={1 << 32}",
        "--json", str(out),
    )  # fmt: skip
    assert code == 1
    quiet, unread = read(out).runs
    assert quiet.server_alive and not quiet.cut_at_limit
    assert unread.cut_at_limit and not unread.server_alive
    assert unread.rss_sampled_peak_mib is not None and unread.rss_sampled_peak_mib > 120


def test_a_running_server_is_attacked_by_pid(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    with ServerProcess(server_command("tickwire", "127.0.0.1")) as server:
        code = run_cli(
            "attack", "--kinds", "flood,slowloris", "--hostile", "1", *SHORT,
            "--port", str(server.port), "--pid", str(server.pid), "--json", str(out),
        )  # fmt: skip
        assert server.alive()
    assert code == 0
    report = read(out)
    assert [r.kind for r in report.runs] == [QUIET, "flood", "slowloris"]
    assert report.scrypt_n is None
    for run in report.runs:
        # One server for every run: no VmHWM of its own, no log of ours, no login user.
        assert not run.fresh_server and run.log_lines is None
        assert run.rss_peak_mib == run.rss_sampled_peak_mib
        assert run.bystander.requests > 0 and run.bystander.logins == 0


@pytest.mark.parametrize(
    "args",
    [
        ("--pid", "1"),
        ("--port", "7000"),
        ("--user", "a:b"),
        ("--pid", "1", "--port", "7000", "--set", "max_frame=1000"),
        ("--set", "max_frame"),
    ],
)
def test_contradictory_options_are_refused(args: tuple[str, ...]) -> None:
    assert run_cli("attack", *args) == 2


def test_an_unknown_attack_is_refused() -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("attack", "--kinds", "unread,teardrop")
    assert exit_.value.code == 2


def test_the_cli_knows_the_bench_kinds() -> None:
    assert attack_cli.KINDS == KINDS
