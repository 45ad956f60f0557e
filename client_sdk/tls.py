"""TLS for the client: the context a connection uses, and the SDK's words for a failed
handshake (OpenSSL's own are terse, and come with a traceback through ssl's internals)."""

from __future__ import annotations

import os
import ssl

from client_sdk.errors import TLSError

#: The server answers a ClientHello with a frame, not a ServerHello, and closes.
_PLAINTEXT = "the server did not answer in TLS: is {where} a plaintext port?"
_HINTS = {
    "WRONG_VERSION_NUMBER": _PLAINTEXT,
    "RECORD_LAYER_FAILURE": _PLAINTEXT,
    "PACKET_LENGTH_TOO_LONG": _PLAINTEXT,
    "UNEXPECTED_EOF_WHILE_READING": "the server ended the handshake: it refused this "
    "client's TLS version or certificate (the server's log says which), or {where} is a "
    "plaintext port",
    "UNSUPPORTED_PROTOCOL": "no TLS version both sides accept (the server wants TLS 1.2 or later?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both sides accept",
    "NO_PROTOCOLS_AVAILABLE": "this client's context allows no TLS version the server offers",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate "
    "(pass tls=client_sdk.tls_context(cert=..., key=...))",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (does it require a "
    "client certificate?)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused this client's certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of this client's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server refused this client's certificate",
}

#: The oldest version the SDK speaks, as the server's default minimum.
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def tls_context(
    ca: str | os.PathLike[str] | None = None,
    *,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client context: the server's certificate checked against `ca` (a PEM file),
    or the system's CAs without one; `cert` and `key` present a client certificate to a
    server that requires one (its tls_ca). TLS 1.2 at least, hostnames checked."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = MIN_VERSION
    if cert is not None:
        context.load_cert_chain(cert, key)
    elif key is not None:
        raise ValueError("a client key needs its certificate: pass cert= too")
    return context


def resolve(tls: bool | ssl.SSLContext, ca: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """The context `connect(tls=..., tls_ca=...)` asks for, None for plaintext. A CA file
    alone means TLS; a ready context brings its own trust, so it takes no CA file."""
    if isinstance(tls, ssl.SSLContext):
        if ca is not None:
            raise ValueError("tls_ca goes with tls=True; load it into your own SSLContext")
        return tls
    if tls or ca is not None:
        return tls_context(ca)
    return None


def tls_error(exc: OSError, host: str, port: int) -> TLSError:
    """The typed error for a handshake with host:port that failed with `exc`."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or "certificate verify failed"
        if "Hostname mismatch" in detail or "IP address mismatch" in detail:
            hint = "pass server_hostname= the name the certificate is for"
        else:
            hint = "is the server's CA in tls_ca, or among the system's CAs?"
        return TLSError(
            f"TLS to {where}: certificate verify failed: {detail} ({hint})",
            "CERTIFICATE_VERIFY_FAILED",
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        hint = _HINTS.get(reason, str(exc)).format(where=where)
        return TLSError(f"TLS to {where} failed ({reason}): {hint}", reason)
    # uvloop's server drops a refused handshake without sending its alert, and a
    # plaintext server closes after the frame it made of the ClientHello: a reset or an
    # EOF is all the client sees of either.
    return TLSError(
        f"TLS to {where}: the server ended the handshake ({exc or type(exc).__name__}): it "
        "refused this client's TLS version or certificate (the server's log says which), "
        f"or {where} is a plaintext port",
        type(exc).__name__,
    )


def lost_reason(exc: Exception) -> str:
    """Why an established connection was lost, in words: for a TLS alert after the
    handshake (TLS 1.3 refuses a missing client certificate only then), what it means."""
    if isinstance(exc, ssl.SSLError) and exc.reason in _HINTS:
        return f"TLS {exc.reason}: {_HINTS[exc.reason].format(where='the server')}"
    return str(exc)
