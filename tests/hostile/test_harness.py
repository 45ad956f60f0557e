"""The harness itself: a real server, its memory readings and a bystander that is answered."""

from __future__ import annotations

import asyncio

from tests.hostile.harness import bystander, hostile_server


async def test_a_bystander_is_answered_and_memory_is_read() -> None:
    async with hostile_server() as server, bystander(server.address, interval=0.01) as client:
        while len(client.latencies) < 5:
            await asyncio.sleep(0.02)
        assert server.alive
        assert 10 << 20 < server.rss() <= server.peak_rss()
    client.check(at_least=5)
