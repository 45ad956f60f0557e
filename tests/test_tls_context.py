"""The server's TLS settings and their failures (server/tls.py): every bad file named by its
config key before anything listens, and failed handshakes logged in bounded form."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from server import Server, ServerConfig
from server.config import ConfigError, load_config
from server.tls import HandshakeFailures, quiet_handshake_errors, server_context
from tests.tlscerts import Pki, make_pki

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def test_no_cert_and_no_key_is_plaintext(pki: Pki) -> None:
    assert server_context("", "") is None
    with pytest.raises(ConfigError, match=r"^tls_ca: client certificates need TLS"):
        server_context("", "", str(pki.ca))


def test_a_context_serves_tls_1_2_and_later(pki: Pki) -> None:
    context = server_context(str(pki.cert), str(pki.key))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    mutual = server_context(str(pki.cert), str(pki.key), str(pki.ca), min_version="1.3")
    assert mutual is not None
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_3


def bad(pki: Pki, tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    """(cert, key, ca) settings that must not start, each with the start of its error."""
    (tmp_path / "empty.pem").write_text("")
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    (tmp_path / "encrypted.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cert, key_path, ca = str(pki.cert), str(pki.key), str(pki.ca)
    return [
        ({"cert": cert}, "tls_key: required with tls_cert"),
        ({"key": key_path}, "tls_cert: required with tls_key"),
        ({"cert": str(tmp_path / "missing.pem"), "key": key_path}, "tls_cert: cannot read"),
        ({"cert": str(tmp_path), "key": key_path}, "tls_cert: .* is a directory"),
        ({"cert": key_path, "key": key_path}, "tls_cert: .* holds no PEM certificate"),
        ({"cert": cert, "key": str(tmp_path / "empty.pem")}, "tls_key: .* holds no PEM private"),
        ({"cert": cert, "key": str(tmp_path / "encrypted.pem")}, "tls_key: .* is encrypted"),
        (
            {"cert": cert, "key": str(tmp_path / "other-key.pem")},
            "tls_key: .* is not the private key of the certificate",
        ),
        ({"cert": cert, "key": key_path, "ca": str(tmp_path / "none.pem")}, "tls_ca: cannot read"),
        ({"cert": cert, "key": key_path, "ca": key_path}, "tls_ca: .* holds no PEM certificate"),
        ({"cert": cert, "key": key_path, "ca": ca}, ""),
    ]


def test_every_bad_file_is_named_by_its_key(pki: Pki, tmp_path: Path) -> None:
    for setting, error in bad(pki, tmp_path):
        args = (setting.get("cert", ""), setting.get("key", ""), setting.get("ca", ""))
        if not error:
            assert server_context(*args) is not None
            continue
        with pytest.raises(ConfigError, match=f"^{error}"):
            server_context(*args)


async def test_the_server_fails_its_start_on_a_bad_tls_file(pki: Pki, tmp_path: Path) -> None:
    config = ServerConfig(port=0, tls_cert=str(pki.cert), tls_key=str(tmp_path / "nope.pem"))
    server = Server(config=config)
    with pytest.raises(ConfigError, match=r"^tls_key: cannot read"):
        await server.start()
    assert server.store is None  # nothing was opened before the check


def test_tls_keys_come_from_env_and_flags(pki: Pki) -> None:
    config = load_config(
        env={"TICKWIRE_TLS_CERT": str(pki.cert), "TICKWIRE_TLS_HANDSHAKE_TIMEOUT": "2.5"},
        tls_key=str(pki.key),
    )
    assert (config.tls_cert, config.tls_key) == (str(pki.cert), str(pki.key))
    assert config.tls_handshake_timeout == 2.5
    with pytest.raises(ConfigError, match="tls_min_version"):
        load_config(env={"TICKWIRE_TLS_MIN_VERSION": "1.1"})


def test_tickwire_serve_refuses_a_bad_tls_setting(pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--port", "0", "--tls-cert", str(pki.cert)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "bad config: tls_key: required with tls_cert" in proc.stderr
    assert "Traceback" not in proc.stderr


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tls_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tickwire.tls"]


async def test_a_flood_of_failed_handshakes_writes_a_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tickwire.tls")
    clock = Clock()
    failures = HandshakeFailures(interval=0.2, clock=clock)
    wrong = ssl.SSLError(1, "wrong version")
    wrong.reason = "WRONG_VERSION_NUMBER"
    http = ssl.SSLError(1, "http")
    http.reason = "HTTP_REQUEST"
    for i in range(1000):
        failures.record(http if i % 10 == 0 else wrong)
    assert len(tls_lines(caplog)) == 1
    assert "HTTP_REQUEST" in tls_lines(caplog)[0]
    clock.now += 0.2
    await asyncio.sleep(0.3)  # the timer writes the burst's summary
    lines = tls_lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith("999 more TLS handshakes failed")
    assert "WRONG_VERSION_NUMBER x900, HTTP_REQUEST x99" in lines[1]
    assert failures.total == {"WRONG_VERSION_NUMBER": 900, "HTTP_REQUEST": 100}
    # After a quiet interval the next failure is reported at once again.
    clock.now += 1
    failures.record(wrong)
    assert len(tls_lines(caplog)) == 3
    failures.close()


def test_without_a_loop_the_held_failures_go_with_the_next_after_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tickwire.tls")
    clock = Clock()
    failures = HandshakeFailures(interval=10, clock=clock)
    for _ in range(5):
        failures.record(ssl.SSLError(1, "x"))
    assert len(tls_lines(caplog)) == 1
    clock.now += 10
    failures.record(ssl.SSLError(1, "x"))
    lines = tls_lines(caplog)
    assert len(lines) == 2 and lines[1].startswith("5 more TLS handshakes failed")


async def test_handshake_errors_through_the_loop_handler_are_counted_not_traced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    others: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: others.append(ctx))
    failures = HandshakeFailures()
    quiet_handshake_errors(loop, failures)
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"
    for _ in range(20):
        loop.call_exception_handler({"message": "SSL handshake failed", "exception": exc})
    loop.call_exception_handler({"message": "Error on transport creation", "exception": exc})
    unrelated = {"message": "something else", "exception": ValueError("x")}
    loop.call_exception_handler(unrelated)
    assert failures.total == {"WRONG_VERSION_NUMBER": 21}
    assert others == [unrelated]
    assert not [r for r in caplog.records if r.exc_info]
    failures.close()
