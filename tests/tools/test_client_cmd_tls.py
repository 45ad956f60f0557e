"""`tickwire client --tls` as a user runs it, against real servers with and without TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.tlscerts import Pki, make_pki
from tests.tools.test_client_cmd import address_of, run_cli
from tools.repl import EXIT_CONNECTION, EXIT_OK, EXIT_USAGE

pytestmark = pytest.mark.timeout(60)

SCRIPT = 'ping\nsystem.EchoRequest {"data": "dGxz"}\n'


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_tls_ca_talks_to_a_tls_server(start_server: StartServer, pki: Pki) -> None:
    server = await start_server(**pki.config())
    code, out, err = await run_cli(
        "client", address_of(server), "--tls-ca", str(pki.ca), "--json", stdin=SCRIPT
    )
    assert code == EXIT_OK, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "connected"
    assert [e["type"] for e in events[1:3]] == ["pong", "reply"]
    assert events[2]["message"] == {"data": "dGxz"}
    # By name: the certificate is for localhost too.
    host_port = f"localhost:{server.address[1]}"
    code, out, err = await run_cli("client", host_port, "--tls-ca", str(pki.ca), stdin="ping\n")
    assert code == EXIT_OK, err


async def test_client_certificate_for_mutual_tls(start_server: StartServer, pki: Pki) -> None:
    server = await start_server(**pki.config(mutual=True))
    args = ["client", address_of(server), "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client)]
    code, out, err = await run_cli(*args, stdin="ping\n")
    assert code == EXIT_OK, err
    assert "pong" in out


async def test_tls_failures_are_one_line_and_exit_3(start_server: StartServer, pki: Pki) -> None:
    tls = await start_server(**pki.config())
    plain = await start_server()
    cases = [
        (address_of(tls), ["--tls"], "certificate verify failed"),
        (address_of(tls), ["--tls-ca", str(pki.ca), "--server-hostname", "x.test"], "x.test"),
        (address_of(plain), ["--tls-ca", str(pki.ca)], "plaintext port"),
        (address_of(tls), [], "Describe failed"),
    ]
    for address, flags, words in cases:
        code, out, err = await run_cli("client", address, *flags, stdin="ping\n")
        assert code == EXIT_CONNECTION, (flags, out, err)
        assert words in err, (flags, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


async def test_bad_tls_flags_are_usage_errors(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (["--tls-ca", str(tmp_path / "missing.pem")], "--tls-ca"),
        (["--tls-cert", str(pki.ca)], "cannot load the TLS files"),
        (["--server-hostname", "x.test"], "add --tls"),
    ]
    for flags, words in cases:
        code, _, err = await run_cli("client", "127.0.0.1:1", *flags, stdin="ping\n")
        assert code == EXIT_USAGE, (flags, err)
        assert words in err
        assert "Traceback" not in err
