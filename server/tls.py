"""TLS for the listener: the server's SSLContext, built from PEM files, and a bounded
account of the handshakes that fail.

It knows nothing of connections or dispatch: the listener hands the context to
``create_server(ssl=...)`` and uvloop does the handshakes and the record layer, so a
connection's protocol sees plaintext frames either way and a server without TLS runs
exactly the code it ran before.

A peer that speaks no TLS on the TLS port (a plaintext client, a scanner, garbage) fails
its handshake before any Connection exists. uvloop closes such a connection without a
word, and a flood of them would either go unseen or, through the loop's exception
handler, write a line each: `HandshakeFailures` counts them and writes at most one line
per interval, the way a connection flood is summed up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from server.config import ConfigError

log = logging.getLogger("tickwire.tls")

MIN_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}

#: Seconds between two lines about failed handshakes, however many fail.
REPORT_INTERVAL = 10.0

#: What a failed handshake's OpenSSL reason most likely means, for the log line.
_NOT_TLS = "the peer does not speak TLS, a plaintext client on the TLS port?"
_HINTS = {
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "HTTP_REQUEST": "the peer sent HTTP, not TLS",
    "HTTPS_PROXY_REQUEST": "the peer sent an HTTP proxy request, not TLS",
    "PACKET_LENGTH_TOO_LONG": _NOT_TLS,
    "RECORD_LAYER_FAILURE": _NOT_TLS,
    "UNSUPPORTED_PROTOCOL": "the peer offers only TLS versions below the server's minimum",
    "NO_SHARED_CIPHER": "the peer offers no cipher the server accepts",
    "NO_CIPHERS_AVAILABLE": "the peer offers no cipher the server accepts",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no client certificate (tls_ca is set)",
    "CERTIFICATE_VERIFY_FAILED": "the peer's client certificate is not signed by tls_ca",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the server's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected the server's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected the server's certificate",
}


class HandshakeFailures:
    """Counts failed TLS handshakes and logs them in bounded form: the first of a quiet
    spell at once, then at most one summary line per `interval` with the count by reason.

    `record` runs inside OpenSSL's handshake step on the event loop; the summary of a
    burst is written by a timer on that loop, so the last failures of a burst are
    reported even if no other failure follows them.
    """

    def __init__(
        self, interval: float = REPORT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        #: Every failure since start, by reason (what tests and an operator's metrics read).
        self.total: Counter[str] = Counter()
        #: Failures not yet written, by reason.
        self._held: Counter[str] = Counter()
        self._last_line = -float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def record(self, exc: BaseException) -> None:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        self.total[reason] += 1
        now = self._clock()
        if now - self._last_line >= self.interval and self._held:
            # Held with no timer to write them (no running loop): they go with this one.
            self._held[reason] += 1
            self.flush()
            return
        if now - self._last_line >= self.interval:
            self._last_line = now
            log.warning(
                "TLS handshake failed: %s: %s; more failures are summed up every %g s",
                reason,
                _HINTS.get(reason, "see the peer's TLS settings"),
                self.interval,
            )
            return
        self._held[reason] += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the next failure after the interval reports
                return
            self._timer = loop.call_at(
                loop.time() + max(0.0, self._last_line + self.interval - now), self.flush
            )

    def flush(self) -> None:
        """Write the held failures as one line (the timer calls this)."""
        self._timer = None
        if not self._held:
            return
        held, self._held = self._held, Counter()
        self._last_line = self._clock()
        reasons = ", ".join(f"{reason} x{count}" for reason, count in held.most_common(4))
        if len(held) > 4:
            reasons += ", ..."
        log.warning(
            "%d more TLS handshakes failed in the last %g s: %s",
            sum(held.values()),
            self.interval,
            reasons,
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _counting_sslobject(failures: HandshakeFailures) -> type[ssl.SSLObject]:
    """An SSLObject class whose failed handshakes go to `failures`. uvloop and asyncio
    create one per connection through the context's `sslobject_class`; only
    do_handshake is overridden, so reads and writes run the stock code."""

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                failures.record(exc)
                raise

    return CountingSSLObject


def _read_pem(key: str, path: str, marker: bytes, what: str) -> None:
    """Fail with the key's name unless `path` is a readable file holding `marker`:
    OpenSSL's own errors ("PEM lib") do not say which of the files is wrong."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if marker not in data:
        raise ConfigError(f"{key}: {path} holds no PEM {what}")


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    raise _Encrypted


def server_context(
    cert: str,
    key: str,
    ca: str = "",
    *,
    min_version: Literal["1.2", "1.3"] = "1.2",
    failures: HandshakeFailures | None = None,
) -> ssl.SSLContext | None:
    """The listener's SSLContext, or None when neither `cert` nor `key` is set (no TLS).

    `ca` requires every client to present a certificate it signed (mutual TLS). Every
    problem raises ConfigError naming the config key (tls_cert, tls_key, tls_ca) and what
    is wrong with its file, so a bad setting fails the start, never a handshake later.
    """
    if not cert and not key:
        if ca:
            raise ConfigError("tls_ca: client certificates need TLS; set tls_cert and tls_key")
        return None
    if not key:
        raise ConfigError("tls_key: required with tls_cert (the certificate's private key)")
    if not cert:
        raise ConfigError("tls_cert: required with tls_key (the certificate chain to serve)")
    _read_pem("tls_cert", cert, b"-----BEGIN CERTIFICATE-----", "certificate")
    _read_pem("tls_key", key, b"PRIVATE KEY-----", "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    # Client-initiated renegotiation costs the server a handshake per request of the
    # peer's choosing; TLS 1.3 has none, and no tickwire client needs it in 1.2.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise ConfigError(
            f"tls_key: {key} is encrypted; the server reads an unencrypted key"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = f"tls_key: {key} is not the private key of the certificate in {cert}"
        else:
            problem = f"tls_cert/tls_key: {cert} and {key} do not load: {exc}"
        raise ConfigError(problem) from None
    if ca:
        _read_pem("tls_ca", ca, b"-----BEGIN CERTIFICATE-----", "certificate")
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls_ca: {ca} does not load: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    if failures is not None:
        context.sslobject_class = _counting_sslobject(failures)
    return context


def is_handshake_failure(context: dict[str, Any]) -> bool:
    """Whether an event-loop exception context is a failed TLS handshake: what the loop
    reports that way (asyncio's debug paths, other loops) goes to HandshakeFailures too,
    never as a traceback per peer."""
    exc = context.get("exception")
    message = str(context.get("message", ""))
    return isinstance(exc, ssl.SSLError) or message.startswith("SSL handshake")


def quiet_handshake_errors(loop: asyncio.AbstractEventLoop, failures: HandshakeFailures) -> None:
    """Route failed handshakes the loop would report with a traceback to `failures`;
    everything else goes to the handler that was there before (or the default one)."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_handshake_failure(context):
            failures.record(context.get("exception") or ssl.SSLError(context.get("message")))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
