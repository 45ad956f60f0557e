"""A store that fails, against a real `tickwire serve` on a real redis-server: Redis
killed for a few seconds, then started again on its port; and a server killed with
SIGKILL while it held pushes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk import AsyncClient, Overloaded
from tests.conftest import need_redis_binary
from tests.hostile.harness import bystander, hostile_server, server_log, users_file
from tests.integration.test_crash_resume import crash_and_resume
from tests.store.redisproc import RedisProcess, start_redis


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server this test alone uses, since it kills it."""
    server = start_redis(need_redis_binary())
    yield server
    server.stop()


async def test_logins_while_redis_is_down_get_a_typed_retry_error_and_one_warning(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    users = users_file(tmp_path, {"alice": "alice-pw"})
    async with hostile_server(
        "--set",
        f"users_file={users}",
        "--set",
        "store=redis",
        "--set",
        f"redis_url={own_redis.url}",
        "--set",
        "store_breaker_probe_interval=0.2",
    ) as server:
        async with bystander(server.address, interval=0.05) as pinger:
            async with await AsyncClient.connect(*server.address) as client:
                await client.login("alice", "alice-pw")
            own_redis.halt()
            refused: list[Overloaded] = []
            for _ in range(20):  # past the breaker's threshold, then failing fast
                async with await AsyncClient.connect(*server.address) as client:
                    with pytest.raises(Overloaded) as caught:
                        await client.login("alice", "alice-pw", timeout=10)
                    refused.append(caught.value)
            assert all("retry after" in exc.message for exc in refused)
            assert all(str(own_redis.port) not in exc.message for exc in refused)

            own_redis.restart()  # the same port; the server is not restarted
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                async with await AsyncClient.connect(*server.address) as client:
                    try:
                        reply = await client.login("alice", "alice-pw", timeout=10)
                    except Overloaded:
                        assert loop.time() < deadline, "logins never worked again"
                        await asyncio.sleep(0.05)
                        continue
                    assert reply.user_id == "alice"
                    break
        pinger.check(at_least=1)  # requests that need no store were answered throughout
        assert server.alive
        server.proc.terminate()
        await server.proc.wait()
        log = await server_log(server.proc)
    assert log.count("store unavailable") == 1, log  # one warning for the whole outage
    assert log.count("store reachable again") == 1, log
    assert "Traceback" not in log, log
    assert "INTERNAL" not in log and "handler for" not in log, log


async def test_kill_9_on_redis_then_resume_reports_push_gap(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    await crash_and_resume(tmp_path, "redis", own_redis.url)
