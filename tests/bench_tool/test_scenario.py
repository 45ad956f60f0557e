"""`tickwire bench scenario MODULE:FUNC`: the example against a real `tickwire serve`,
errors raised by a scenario, and specs that name nothing usable."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from bench.scenario import ScenarioError, load_scenario
from bench.scenarios import ping_echo
from tests.bench_tool.helpers import BASELINE, assert_valid_run, read_report, run_cli

SHORT = ("--conns", "3", "--procs", "2", "--duration", "1", "--warmup", "0.3", "--no-cpu-pin")

FLAKY = """
from protocol.proto.system_pb2 import EchoReply, EchoRequest

async def every_third_fails(client, ctx):
    if ctx.iteration % 3 == 2:
        raise RuntimeError(f"[boom] conn {ctx.conn} iteration {ctx.iteration}")
    await client.call(EchoRequest(data=ctx.args["word"].encode()), EchoReply)

def not_async(client, ctx):
    pass
"""


def test_example_scenario_against_tickwire_serve(tmp_path: Path) -> None:
    out = tmp_path / "scenario.json"
    code = run_cli(
        "scenario", "bench.scenarios:ping_echo", *SHORT, "--arg", "size=32", "--json", str(out)
    )
    assert code == 0
    report = read_report(out)
    assert report.kind == "scenario"
    [run] = report.runs
    assert run.target == "tickwire"  # spawned `tickwire serve`
    assert run.scenario == "bench.scenarios:ping_echo"
    assert_valid_run(run)
    assert run.sent >= run.replies


def test_scenario_errors_are_counted_and_sampled(tmp_path: Path) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    out = tmp_path / "flaky.json"
    code = run_cli(
        "scenario",
        f"{script}:every_third_fails",
        *BASELINE,
        "--conns", "3",
        "--procs", "2",
        "--warmup", "0.3",
        "--arg", "word=hi",
        "--requests", "300",
        "--json", str(out),
    )  # fmt: skip
    assert code == 1  # it ran, and the scenario failed some iterations
    [run] = read_report(out).runs
    assert run.replies == 300  # --requests counts good iterations only
    assert run.errors > 0
    assert any("RuntimeError: [boom] conn" in s for s in run.error_samples)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("bench.scenarios", "is not MODULE:FUNC"),
        ("bench.scenarios:nope", "has no 'nope'"),
        ("no_such_module_here:run", "cannot import no_such_module_here"),
        ("{tmp}/flaky.py:not_async", "must be an async function"),
        ("{tmp}/absent.py:run", "does not exist"),
    ],
)
def test_unusable_specs_are_refused_before_any_load(
    spec: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(ScenarioError, match=says.replace("(", r"\(")):
        load_scenario(spec)
    assert run_cli("scenario", spec, *SHORT) == 2
    assert says in capsys.readouterr().err


def test_modules_in_the_current_directory_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_load_scenarios.py").write_text(textwrap.dedent(FLAKY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_scenario extends it
    assert load_scenario("my_load_scenarios:every_third_fails", str(tmp_path)).__name__ == (
        "every_third_fails"
    )
    assert load_scenario("bench.scenarios:ping_echo") is ping_echo
