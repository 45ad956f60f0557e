"""The read fast path's two builds (server/fastpath.py): which one runs, and how to tell.

`make test` in CI exports EXPECT_COMPILED_FAST_PATH=1 (.ci/run): there, a C compiler is
present, so an install that failed to build the extension must fail the suite rather than
quietly run everything interpreted. Elsewhere the suite accepts either build, and
conftest.fastpath_impl runs the fast-path tests on every build this checkout has.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import Server, ServerConfig, fastpath
from tests.conftest import StartServer
from tests.integration.test_operations import http_get
from tests.integration.test_serve_process import server_log, spawn_serve


def test_the_module_says_truthfully_whether_it_is_compiled() -> None:
    assert fastpath.COMPILED is not fastpath.__file__.endswith(".py")
    pure = fastpath.load_pure()
    assert pure.COMPILED is False and pure.__file__.endswith("fastpath.py")
    assert fastpath.load("interpreted") is pure
    assert fastpath.load("auto") is fastpath


def test_ci_runs_the_compiled_build() -> None:
    expected = os.environ.get("EXPECT_COMPILED_FAST_PATH") == "1"
    assert fastpath.COMPILED or not expected, (
        "the C extension for server/fastpath.py was not built (setup.py): "
        "is a C compiler installed?"
    )
    if expected:
        assert Server(config=ServerConfig(port=0)).dispatcher.build == "compiled"


def test_config_fast_path_picks_the_build() -> None:
    auto = Server(config=ServerConfig(port=0)).dispatcher
    assert auto.run_read is fastpath.run_read
    assert auto.build == ("compiled" if fastpath.COMPILED else "interpreted")
    pure = Server(config=ServerConfig(port=0, fast_path="interpreted")).dispatcher
    assert pure.run_read is fastpath.load_pure().run_read
    assert pure.build == "interpreted"


@pytest.mark.parametrize("fast_path", ["interpreted", "auto"])
async def test_the_start_log_names_the_build(fast_path: str) -> None:
    proc, _ = await spawn_serve("--no-chat", "--set", f"fast_path={fast_path}")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    build = "compiled" if fastpath.COMPILED and fast_path == "auto" else "interpreted"
    assert f"read fast path: {build}" in await server_log(proc)


@pytest.mark.parametrize("fast_path", ["interpreted", "auto"])
async def test_metrics_name_the_build(start_server: StartServer, fast_path: str) -> None:
    server = await start_server(metrics=True, metrics_port=0, fast_path=fast_path)
    assert server.metrics_address is not None
    status, body = await http_get(server.metrics_address, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    [sample] = families["tickwire_build_info"].samples
    build = "compiled" if fastpath.COMPILED and fast_path == "auto" else "interpreted"
    assert sample.labels == {"fast_path": build} and sample.value == 1


def test_a_compiled_build_older_than_its_inputs_is_stale(tmp_path: Path) -> None:
    compiled, source, setup = tmp_path / "x.so", tmp_path / "x.py", tmp_path / "setup.py"
    for path in (compiled, source, setup):
        path.write_bytes(b"")
        os.utime(path, (2_000_000, 2_000_000))
    assert not fastpath.is_stale(str(compiled), str(source), str(setup))
    os.utime(source, (3_000_000, 3_000_000))  # the source was edited
    assert fastpath.is_stale(str(compiled), str(source), str(setup))
    os.utime(compiled, (4_000_000, 4_000_000))  # and rebuilt
    assert not fastpath.is_stale(str(compiled), str(source), str(setup))
    os.utime(setup, (5_000_000, 5_000_000))  # the build settings changed
    assert fastpath.is_stale(str(compiled), str(source), str(setup))
    assert not fastpath.is_stale(str(compiled), str(tmp_path / "gone.py"))
    assert not fastpath.is_stale(str(tmp_path / "missing.so"), str(source))


def test_an_installed_wheel_runs_its_compiled_build(tmp_path: Path) -> None:
    """pip unpacks a wheel's files in archive order with fresh file times, so the .so
    lands a moment before the .py. Outside a checkout times are not compared: the
    compiled build from a wheel must be the one that runs."""
    if not fastpath.COMPILED:
        # Nothing compiled to install: the wheel holds the source alone, which runs.
        return
    package = tmp_path / "site" / "server"
    package.mkdir(parents=True)
    shutil.copy(fastpath.__file__, package / os.path.basename(fastpath.__file__))
    (package / "fastpath.py").write_text(Path(fastpath.SOURCE).read_text())
    os.utime(package / os.path.basename(fastpath.__file__), (1_000_000, 1_000_000))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import server.fastpath as f;"
        "print(f.__file__.endswith('.py'), f.built_fresh(), f.load().__name__)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.split() == ["False", "True", "server.fastpath"], out.stderr
