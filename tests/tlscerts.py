"""Certificates for the TLS tests, from trustme: a throwaway CA per test, the server's
certificate for 127.0.0.1 and localhost, and a client certificate for mutual TLS. Nothing
is committed, so nothing expires or leaks."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    """PEM files in one directory: `ca` signs `cert` (the server's, key in `key`) and
    `client` (a client certificate and its key in one file); `other_ca` signs nothing
    the server serves."""

    ca: Path
    cert: Path
    key: Path
    client: Path
    other_ca: Path

    def serve_args(self, *, mutual: bool = False) -> list[str]:
        """`tickwire serve` flags for TLS with these files."""
        args = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        return [*args, "--tls-ca", str(self.ca)] if mutual else args

    def config(self, *, mutual: bool = False) -> dict[str, str]:
        """ServerConfig overrides for TLS with these files."""
        keys = {"tls_cert": str(self.cert), "tls_key": str(self.key)}
        return {**keys, "tls_ca": str(self.ca)} if mutual else keys

    def client_context(self, *, certificate: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if certificate:
            context.load_cert_chain(str(self.client))
        return context


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("player@example.org")
    pki = Pki(
        ca=directory / "ca.pem",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        client=directory / "client.pem",
        other_ca=directory / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(pki.ca))
    server.cert_chain_pems[0].write_to_path(str(pki.cert))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(pki.cert), append=True)
    server.private_key_pem.write_to_path(str(pki.key))
    client.private_key_and_cert_chain_pem.write_to_path(str(pki.client))
    trustme.CA().cert_pem.write_to_path(str(pki.other_ca))
    return pki
