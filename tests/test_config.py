"""Config layering and validation: every bad value names its key, its source and the type."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from server.config import ConfigError, ServerConfig, load_config, parse_assignments, render_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tickwire.toml"
    path.write_text(text)
    return path


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 7001\nidle_timeout = 1.5\nmax_frame = 4096\n")
    env = {"TICKWIRE_PORT": "7002", "TICKWIRE_MAX_FRAME": "8192", "HOME": "/x"}
    config = load_config(path, env=env, port=7003, log_level=None)
    assert config.port == 7003  # flag beats environment and file
    assert config.max_frame == 8192  # environment beats file
    assert config.idle_timeout == 1.5  # file beats default
    assert config.log_level == "info"  # None means "flag not given"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_frame = 3\n", ["max_frame", ">= 7"]),
        ('port = "seven"\n', ["port", "Expected `int`"]),
        ("bogus = 1\n", ["bogus"]),
        ('log_format = "xml"\n', ["log_format"]),
        ("idle_timeout = -1\n", ["idle_timeout", ">= 0"]),
        ("port = [\n", ["not valid TOML"]),
    ],
)
def test_bad_file_values_name_the_file_and_key(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc_info:
        load_config(path, env={})
    message = str(exc_info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TICKWIRE_PORT": "abc"}, ["TICKWIRE_PORT='abc'", "Expected `int`", "$.port"]),
        ({"TICKWIRE_PORT": "70000"}, ["TICKWIRE_PORT", "<= 65535"]),
        ({"TICKWIRE_NOPE": "1"}, ["TICKWIRE_NOPE", "unknown key `nope`"]),
        ({"TICKWIRE_METRICS": "maybe"}, ["TICKWIRE_METRICS", "bool"]),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config(env=env)
    for part in expected:
        assert part in str(exc_info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"TICKWIRE_CLOSE_GRACE": "inf"},
        {"TICKWIRE_IDLE_TIMEOUT": "1e308"},
        {"TICKWIRE_SWEEP_INTERVAL": "inf"},
        {"TICKWIRE_DRAIN_TIMEOUT": "inf"},
    ],
)
def test_infinite_durations_are_refused(env: dict[str, str]) -> None:
    """Durations have a finite upper bound: an infinite one would end the sweep task at
    its first tick."""
    with pytest.raises(ConfigError, match="<="):
        load_config(env=env)


def test_environment_strings_are_typed() -> None:
    config = load_config(
        env={
            "TICKWIRE_IDLE_TIMEOUT": "2.5",
            "TICKWIRE_METRICS": "true",
            "TICKWIRE_LOG_FORMAT": "json",
        }
    )
    assert config.idle_timeout == 2.5 and config.metrics is True and config.log_format == "json"


def test_set_flags() -> None:
    assert parse_assignments(["port=1", "handler_timeout=0.5"]) == {
        "port": 1,
        "handler_timeout": 0.5,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["port"])
    with pytest.raises(ConfigError, match="unknown key `colour`"):
        parse_assignments(["colour=red"])


def test_printed_config_reads_back_the_same(tmp_path: Path) -> None:
    config = load_config(env={"TICKWIRE_PORT": "7555", "TICKWIRE_HOST": "0.0.0.0"})
    path = write(tmp_path, render_toml(config))
    assert load_config(path, env={}) == config


def test_example_documents_every_key_with_its_default() -> None:
    example = render_toml(ServerConfig(), commented=True)
    lines = example.splitlines()
    keys = [line[2:] for line in lines if line.startswith("# ") and " = " in line]
    assert [k.split(" = ")[0] for k in keys] == [
        f.name for f in msgspec.structs.fields(ServerConfig)
    ]
    for line in keys:  # each key is preceded by its description
        above = lines[lines.index(f"# {line}") - 1]
        assert above.startswith("# ") and " = " not in above and len(above) > 10, line
    # Uncommented, the example is a valid config equal to the defaults.
    active = "\n".join(keys).encode()
    assert msgspec.convert(msgspec.toml.decode(active), ServerConfig) == ServerConfig()


def test_cli_startup_does_not_import_the_whole_server() -> None:
    """Every `tickwire` command imports the flag definitions; they must stay light."""
    import subprocess
    import sys

    probe = (
        "import sys, tools.cli; tools.cli.build_parser(); "
        "heavy = [m for m in ('prometheus_client', 'server.server', 'bench.echo', "
        "'prompt_toolkit') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_server_package_names_load_on_first_use() -> None:
    import server

    assert server.ServerConfig is ServerConfig
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = server.Nope  # type: ignore[attr-defined]
