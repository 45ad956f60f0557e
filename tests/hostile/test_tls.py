"""The TLS port under attack: peers that speak plaintext or garbage, and peers that open
TCP and never start a handshake, beside a TLS client that must go on being answered.

The bounds asserted: every attacker is closed by the server (the stallers by
tls_handshake_timeout, since no Connection exists before the handshake to time them out
otherwise); the log holds one line for the first failure and one summary line for the
rest, never a line or a traceback per peer; the server stays up and serves the bystander.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from protocol.frame import encode_frame
from protocol.proto.system_pb2 import EchoRequest, LoginRequest
from server.tls import REPORT_INTERVAL
from tests.hostile.harness import bystander, hostile_server, server_log
from tests.serveproc import LOGS
from tests.tlscerts import make_pki

pytestmark = pytest.mark.timeout(120)

#: Peers per round, and rounds: 200 failed handshakes in all.
PEERS = 50
ROUNDS = 4
STALLERS = 5


def attack_bytes(i: int) -> bytes:
    """What peer `i` sends instead of a ClientHello: our own protocol in plaintext, HTTP,
    or random bytes. These never start like a TLS record (a type from 20 to 23, or a
    version byte of 3 second): after one of those OpenSSL would wait for the rest of a
    record the random length announces, and the peer would be cut by the handshake
    timeout instead of failing at once (counted in the log line or not, by chance)."""
    kind = i % 4
    if kind == 0:
        return encode_frame(10, 0, 1, EchoRequest(data=b"plain").SerializeToString())
    if kind == 1:
        return encode_frame(6, 0, 1, LoginRequest(user="u", password="p").SerializeToString())
    if kind == 2:
        return b"GET / HTTP/1.1\r\nHost: tickwire\r\n\r\n"
    return bytes([i % 20, 0]) + os.urandom(300 + i)


async def attacker(address: tuple[str, int], data: bytes) -> bytes:
    """Send `data`, then read until the server closes; return what it sent back."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    got = b""
    try:
        async with asyncio.timeout(30):
            while chunk := await reader.read(4096):
                got += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return got


async def staller(address: tuple[str, int]) -> None:
    """Open TCP and send nothing: only the handshake timeout ends this."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        async with asyncio.timeout(30):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()


async def test_plaintext_garbage_and_stalled_peers_on_the_tls_port(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    args = [*pki.serve_args(), "--set", "tls_handshake_timeout=1"]
    async with hostile_server(*args) as server:
        async with bystander(server.address, tls=pki.client_context(), interval=0.02) as client:
            stalled = [asyncio.ensure_future(staller(server.address)) for _ in range(STALLERS)]
            for _ in range(ROUNDS):
                answers = await asyncio.gather(
                    *(attacker(server.address, attack_bytes(i)) for i in range(PEERS))
                )
                # Refused in the handshake: never a frame of ours back, plaintext or not.
                assert all(not answer.startswith(b"\x00") for answer in answers)
            await asyncio.gather(*stalled)  # each one closed by the server, not by us
            # The summary of the burst comes once the report interval has passed.
            lines = LOGS[server.proc][0]
            async with asyncio.timeout(REPORT_INTERVAL + 10):
                while not any(b"more TLS handshakes failed" in line for line in lines):
                    await asyncio.sleep(0.1)
            assert server.alive
        client.check(at_least=20)
        server.proc.terminate()
        assert await server.proc.wait() == 0
    log = await server_log(server.proc)
    assert "Traceback" not in log
    first = [line for line in log.splitlines() if "TLS handshake failed:" in line]
    summaries = [line for line in log.splitlines() if "more TLS handshakes failed" in line]
    assert len(first) == 1 and len(summaries) == 1, log
    match = re.search(r"(\d+) more TLS handshakes failed", summaries[0])
    assert match is not None and int(match.group(1)) + 1 == PEERS * ROUNDS
    # The bystander's open and close, the start and stop lines: nothing per attacker.
    assert len(log.splitlines()) < 20, log
