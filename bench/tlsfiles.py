"""A throwaway certificate for a TLS bench against a server the bench spawns: a CA made
for the run, the server's certificate for the host it listens on, gone with the run.

trustme makes them (the dev extra has it); a bench host without it passes its own
certificate and key with --tls-cert/--tls-key, and its CA with --tls-ca.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec

from bench.workers import BenchError


class TLSFiles(msgspec.Struct, frozen=True):
    ca: str
    cert: str
    key: str


def _names(host: str) -> list[str]:
    """What the certificate is for: `host`, and localhost and 127.0.0.1 for a bench on
    loopback (a server bound to 0.0.0.0 is reached at either)."""
    names = ["127.0.0.1", "localhost"]
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False
    if not unspecified and host not in names:
        names.insert(0, host)
    return names


def throwaway_tls(directory: Path, host: str) -> TLSFiles:
    try:
        import trustme
    except ImportError:
        raise BenchError(
            "--tls against a spawned server makes a throwaway certificate with trustme, "
            "which is not installed (pip install 'tickwire[dev]'); or pass --tls-cert, "
            "--tls-key and --tls-ca"
        ) from None
    ca = trustme.CA(organization_name="tickwire bench")
    issued = ca.issue_cert(*_names(host))
    files = TLSFiles(
        ca=str(directory / "ca.pem"),
        cert=str(directory / "cert.pem"),
        key=str(directory / "key.pem"),
    )
    ca.cert_pem.write_to_path(files.ca)
    issued.cert_chain_pems[0].write_to_path(files.cert)
    issued.private_key_pem.write_to_path(files.key)
    return files
