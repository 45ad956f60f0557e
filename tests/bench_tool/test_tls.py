"""`tickwire bench echo --tls`: against a spawned `tickwire serve` with a throwaway
certificate, with the caller's own certificate, and the options it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_tool.helpers import BASELINE, assert_valid_run, read_report, run_cli
from tests.tlscerts import make_pki

SHORT = ("--conns", "4", "--procs", "2", "--duration", "1", "--warmup", "0.3", "--no-cpu-pin")


def test_echo_over_tls_with_a_throwaway_certificate(tmp_path: Path) -> None:
    out = tmp_path / "tls.json"
    assert run_cli("echo", *SHORT, "--depth", "4", "--tls", "--json", str(out)) == 0
    [run] = read_report(out).runs
    assert run.target == "tickwire+tls"
    assert_valid_run(run)


def test_echo_over_tls_with_the_callers_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    out = tmp_path / "tls.json"
    tls = ["--tls", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    trust = ["--tls-ca", str(pki.ca), "--server-hostname", "localhost"]
    assert run_cli("echo", *SHORT, *tls, *trust, "--json", str(out)) == 0
    [run] = read_report(out).runs
    assert_valid_run(run)
    # Not trusting the server's CA: every connection fails, and the run says so.
    other = ["--tls-ca", str(pki.other_ca)]
    assert run_cli("echo", *SHORT, *tls, *other, "--json", str(out)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-ca", "ca.pem"], "--tls-ca is for a TLS bench; add --tls"),
        (["--tls", "--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls", "--tls-ca", "/nonexistent/ca.pem"], "no such file"),
        (["--tls", "--compare-baseline"], "--compare-baseline compares plaintext servers"),
        (
            ["--tls", "--port", "1", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
            "are for the server the bench spawns",
        ),
    ],
)
def test_contradictory_tls_options_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("echo", *args) == 2
    assert message in capsys.readouterr().err


def test_the_baseline_speaks_no_tls(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("echo", *BASELINE, *SHORT[:-1], "--tls") == 2
    assert "speaks no TLS" in capsys.readouterr().err
