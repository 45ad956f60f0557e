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
    "TOO_MANY_CONNECTIONS": "connections and handshakes in flight are at max_connections",
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
        self.count(getattr(exc, "reason", None) or type(exc).__name__)

    def count(self, reason: str) -> None:
        """One failure, by its reason (OpenSSL's name, or one of ours)."""
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


class HandshakeGate:
    """Handshakes in flight, and whether one more may start.

    A peer in its handshake is no Connection yet, so neither max_connections nor any
    timeout of the server sees it: without this, peers that open TCP and stall would
    hold sockets past the connection cap (the handshake timeout bounds only how long).
    `admit(in_flight)` says whether a new handshake fits; the server counts the
    handshakes in flight with its connections against max_connections.
    """

    def __init__(self, admit: Callable[[int], bool] = lambda in_flight: True) -> None:
        self.admit = admit
        self.in_flight = 0


#: What a peer refused for want of room is counted as (HandshakeFailures).
REFUSED = "TOO_MANY_CONNECTIONS"


def _counting_sslobject(
    failures: HandshakeFailures, gate: HandshakeGate | None
) -> type[ssl.SSLObject]:
    """An SSLObject class that counts handshakes in flight in `gate` and their failures
    in `failures`. uvloop and asyncio make one per accepted socket through the context's
    `sslobject_class`, and drop it (freed by reference counting) when the handshake
    fails, times out or the peer leaves; reads and writes run the stock code.

    `_create` is how SSLContext.wrap_bio makes the object, the one point before the
    handshake where a peer can be turned away: raising an OSError there makes the loop
    close the socket without a word (CPython has built SSLObjects this way since 3.7)."""

    class CountingSSLObject(ssl.SSLObject):
        _in_flight = False

        @classmethod
        def _create(cls, *args: Any, **kwargs: Any) -> Any:
            if gate is None:
                return super()._create(*args, **kwargs)  # type: ignore[misc]
            if not gate.admit(gate.in_flight):
                failures.count(REFUSED)
                raise ConnectionRefusedError(_HINTS[REFUSED])
            obj = super()._create(*args, **kwargs)  # type: ignore[misc]
            obj._in_flight = True
            gate.in_flight += 1
            return obj

        def _handshake_over(self) -> None:
            if self._in_flight and gate is not None:
                self._in_flight = False
                gate.in_flight -= 1

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                self._handshake_over()
                failures.record(exc)
                raise
            self._handshake_over()

        def __del__(self) -> None:
            # Dropped mid-handshake: a timeout, an EOF, a reset.
            self._handshake_over()

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
    gate: HandshakeGate | None = None,
) -> ssl.SSLContext | None:
    """The listener's SSLContext, or None when neither `cert` nor `key` is set (no TLS).

    `ca` requires every client to present a certificate it signed (mutual TLS);
    `failures` counts failed handshakes, `gate` the ones in flight. Every
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
        context.sslobject_class = _counting_sslobject(failures, gate)
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
