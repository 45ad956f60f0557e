"""`tickwire bench scenario MODULE:FUNC`: the example against a real `tickwire serve`,
an application's messages through --schema or SCHEMA, errors raised by a scenario, a
scenario that fails before its first await, and specs that name nothing usable."""

from __future__ import annotations

import shlex
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
    await client.call(EchoRequest(data=ctx.args["word"].encode()), EchoReply)
    if ctx.iteration % 3 == 2:
        raise RuntimeError(f"[boom] conn {ctx.conn} iteration {ctx.iteration}")

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
    loaded = load_scenario("my_load_scenarios:every_third_fails", str(tmp_path))
    assert loaded.func.__name__ == "every_third_fails"
    assert load_scenario("bench.scenarios:ping_echo").func is ping_echo


#: A scenario that sends an application's messages: those of the fan-out bench's app,
#: which `SERVE_APP` serves. `{schema}` is where a module may declare its schema.
APP_SCENARIO = """
from pathlib import Path

from bench.proto.bench_pb2 import FanoutTrigger, FanoutTriggerReply
{schema}

async def trigger(client, ctx):
    if "calls" in ctx.args:
        with Path(ctx.args["calls"]).open("a") as calls:
            calls.write("call\\n")
    reply = await client.call(FanoutTrigger(count=0, size=0), FanoutTriggerReply)
    if reply.members != 0:
        raise ValueError(f"{{reply.members}} members in a room nobody joined")
"""

#: `tickwire serve` with the fan-out bench's app (public FanoutTrigger) and no timeouts.
SERVE_APP = shlex.join(
    [
        sys.executable, "-m", "tools.cli", "serve", "--no-chat",
        "--app", "bench.serverside.fanout_app:app",
        "--host", "127.0.0.1", "--port", "0",
        "--set", "auth_timeout=0", "--set", "idle_timeout=0",
    ]
)  # fmt: skip


@pytest.mark.parametrize(
    ("declared", "flags"),
    [
        ("", ("--schema", "bench.proto.bench_pb2")),
        ("from bench.proto import bench_pb2\nSCHEMA = [bench_pb2]", ()),
    ],
    ids=["--schema", "SCHEMA"],
)
def test_a_scenario_sends_an_applications_messages(
    declared: str, flags: tuple[str, ...], tmp_path: Path
) -> None:
    script = tmp_path / "app_load.py"
    script.write_text(APP_SCENARIO.format(schema=declared))
    out = tmp_path / "app.json"
    code = run_cli(
        "scenario", f"{script}:trigger", *flags, *SHORT,
        "--server-cmd", SERVE_APP, "--json", str(out),
    )  # fmt: skip
    assert code == 0
    [run] = read_report(out).runs
    assert_valid_run(run)


def test_a_scenario_that_raises_before_its_first_await_stops_the_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Without the schema, `client.call` raises before it sends: every call would, and
    none gives the loop back. The run ends on the first one, says why once, and the
    scenario ran no more than once per connection (not millions of times)."""
    script = tmp_path / "app_load.py"
    script.write_text(APP_SCENARIO.format(schema=""))
    calls = tmp_path / "calls"
    code = run_cli(
        "scenario", f"{script}:trigger",
        "--conns", "4", "--procs", "2", "--duration", "30", "--warmup", "0", "--no-cpu-pin",
        "--arg", f"calls={calls}", "--server-cmd", SERVE_APP,
    )  # fmt: skip
    assert code == 2
    err = capfd.readouterr().err  # the load generators' stderr too
    assert err.count("raised before its first await") == 1, err
    assert err.count("tickwire_bench.FanoutTrigger is not registered in this registry") == 1, err
    assert 1 <= len(calls.read_text().splitlines()) <= 4


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ("no_such_schema_module", "--schema: cannot import no_such_schema_module"),
        ("bench.scenarios", "bench.scenarios is not a generated _pb2 module"),
        ("protocol.proto.options_pb2", "declares no (tickwire.msg_id) message"),
    ],
)
def test_unusable_schemas_are_refused_before_any_load(
    schema: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("scenario", "bench.scenarios:ping_echo", "--schema", schema, *SHORT) == 2
    assert says in capsys.readouterr().err


def test_a_schema_attribute_that_is_not_a_list_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "one_name.py"
    script.write_text(APP_SCENARIO.format(schema='SCHEMA = "bench.proto.bench_pb2"'))
    assert run_cli("scenario", f"{script}:trigger", *SHORT) == 2
    assert "SCHEMA must be a list or tuple of _pb2 modules" in capsys.readouterr().err
