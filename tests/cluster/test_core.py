"""The cluster's core on a real redis-server: the directory, requests between nodes, the
bus surviving a Redis restart, and who owns a key."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from protocol.errors import ErrorCode
from server.cluster import CallTimeout, ClusterUnavailable, NodeGone, RemoteError, read_nodes
from server.cluster.resp import RedisAddress
from server.cluster.ring import owner
from server.config import ConfigError, load_config
from server.errors import HandlerError
from server.server import Server
from tests.conftest import StartNode, wait_for
from tests.store.redisproc import RedisProcess


async def test_nodes_see_each_other_and_list_where_they_listen(
    start_node: StartNode, redis_url: str
) -> None:
    a = await start_node(node_id="a")
    b = await start_node(node_id="b")
    assert a.cluster is not None and b.cluster is not None
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])
    assert b.cluster.live == ["a", "b"]
    listed = {info.id: info for info in await read_nodes(redis_url)}
    assert set(listed) == {"a", "b"}
    assert (listed["b"].host, listed["b"].port) == b.address
    assert not listed["a"].draining


async def test_a_stopped_node_leaves_every_view_at_once(start_node: StartNode) -> None:
    a = await start_node(node_id="a", cluster_heartbeat=5.0, cluster_node_ttl=30.0)
    b = await start_node(node_id="b", cluster_heartbeat=5.0, cluster_node_ttl=30.0)
    assert a.cluster is not None
    await a.cluster.nodes.beat()
    assert a.cluster.live == ["a", "b"]
    await b.stop(timeout=0.5)
    # Its goodbye, not the (30 s) TTL, takes it out.
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a"], timeout=2.0)


async def test_a_node_that_stops_heartbeating_is_gone_within_its_ttl(
    start_node: StartNode,
) -> None:
    a = await start_node(node_id="a")
    b = await start_node(node_id="b")
    assert a.cluster is not None and b.cluster is not None
    await wait_for(lambda: a.cluster is not None and "b" in a.cluster.live)
    # As after kill -9: no goodbye, no more heartbeats.
    assert b.cluster.nodes._task is not None
    b.cluster.nodes._task.cancel()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a"], timeout=3.0)
    assert loop.time() - started < 0.5 + 0.1 + 0.5  # ttl + heartbeat, and a margin


async def test_requests_between_nodes(start_node: StartNode) -> None:
    a = await start_node(node_id="a")
    b = await start_node(node_id="b")
    assert a.cluster is not None and b.cluster is not None
    seen: list[tuple[str, Any]] = []

    async def double(origin: str, body: Any) -> Any:
        seen.append((origin, body))
        return body * 2

    async def refuse(origin: str, body: Any) -> Any:
        raise HandlerError(ErrorCode.RATE_LIMITED, "not so fast")

    async def hang(origin: str, body: Any) -> Any:
        await asyncio.sleep(10)

    b.cluster.serve("double", double)
    b.cluster.serve("refuse", refuse)
    b.cluster.serve("hang", hang)
    await wait_for(lambda: a.cluster is not None and "b" in a.cluster.live)
    assert await a.cluster.request("b", "double", 21) == 42
    assert seen == [("a", 21)]
    with pytest.raises(RemoteError) as refused:
        await a.cluster.request("b", "refuse", None)
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert "not so fast" in refused.value.message
    with pytest.raises(CallTimeout) as late:
        await a.cluster.request("b", "hang", None, timeout=0.2)
    assert late.value.code == ErrorCode.TIMEOUT
    with pytest.raises(NodeGone):
        await a.cluster.request("nobody", "double", 1)
    with pytest.raises(RemoteError):
        await a.cluster.request("b", "no such method", 1)
    assert a.cluster.calls_failed == 4


async def test_a_call_fails_with_node_gone_when_its_node_leaves(start_node: StartNode) -> None:
    a = await start_node(node_id="a")
    b = await start_node(node_id="b")
    assert a.cluster is not None and b.cluster is not None

    async def hang(origin: str, body: Any) -> Any:
        await asyncio.sleep(10)

    b.cluster.serve("hang", hang)
    await wait_for(lambda: a.cluster is not None and "b" in a.cluster.live)
    call = asyncio.create_task(a.cluster.request("b", "hang", None, timeout=5))
    await asyncio.sleep(0.1)
    await b.stop(timeout=0.5)
    with pytest.raises(NodeGone):
        await call


async def test_the_bus_comes_back_after_redis_restarts(
    start_node: StartNode, own_redis: RedisProcess
) -> None:
    a = await start_node(node_id="a", cluster_url=own_redis.url)
    b = await start_node(node_id="b", cluster_url=own_redis.url)
    assert a.cluster is not None and b.cluster is not None
    heard: list[bytes] = []
    b.cluster.bus.handlers["u"] = lambda name, data: heard.append(data)
    await b.cluster.bus.subscribe("u", "alice")
    assert await a.cluster.bus.publish("u", "alice", b"one") == 1
    await wait_for(lambda: heard == [b"one"])
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])
    own_redis.halt()
    await wait_for(lambda: a.cluster is not None and not a.cluster.up)
    with pytest.raises(ClusterUnavailable):
        a.cluster.bus.publish("u", "alice", b"lost")
    # The nodes go on seeing each other as they did: a dead Redis is not a dead node.
    assert a.cluster.live == ["a", "b"]
    own_redis.restart()
    await wait_for(
        lambda: a.cluster is not None and b.cluster is not None and a.cluster.up and b.cluster.up
    )
    # b subscribed its channel again by itself.
    await wait_for(lambda: b.cluster is not None and b.cluster.bus.sub is not None)
    received = 0
    for _ in range(100):
        received = int(await a.cluster.bus.publish("u", "alice", b"two"))  # type: ignore[call-overload]
        if received:
            break
        await asyncio.sleep(0.02)
    assert received == 1
    await wait_for(lambda: b"two" in heard)
    assert a.cluster.bus.outages == 1
    # And both are registered again.
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])


async def test_a_node_does_not_start_without_its_cluster(own_redis: RedisProcess) -> None:
    url = own_redis.url
    own_redis.halt()
    server = Server(config=load_config(port=0, cluster_url=url, node_id="a"))
    with pytest.raises(Exception) as failed:
        await server.start()
    assert "unreachable" in str(failed.value)


def test_cluster_config_is_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="store = memory with cluster_url"):
        load_config(cluster_url="redis://127.0.0.1:6379/0", store="memory")
    with pytest.raises(ConfigError, match="processes = 2 needs cluster_url"):
        load_config(processes=2)
    with pytest.raises(ConfigError, match="starts with redis://"):
        load_config(cluster_url="http://127.0.0.1:6379")
    config = load_config(cluster_url="redis://127.0.0.1:6390/3")
    assert (config.store_backend, config.store_url) == ("redis", "redis://127.0.0.1:6390/3")
    assert load_config().store_backend == "memory"


def test_redis_addresses() -> None:
    address = RedisAddress.parse("redis://user:p%40ss@db.example:6390/4")
    assert (address.host, address.port, address.db) == ("db.example", 6390, 4)
    assert (address.username, address.password) == ("user", "p@ss")
    assert RedisAddress.parse("redis://h").port == 6379
    with pytest.raises(ValueError, match="numeric port and database"):
        RedisAddress.parse("redis://h:1/x")


def test_owners_are_spread_and_only_a_leaving_nodes_keys_move() -> None:
    nodes = ["n1", "n2", "n3"]
    keys = [f"key-{i}" for i in range(3000)]
    before = {key: owner(key, nodes) for key in keys}
    spread = Counter(before.values())
    assert set(spread) == set(nodes)
    assert min(spread.values()) > 800  # about a third each
    after = {key: owner(key, ["n1", "n3"]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == "n2" for key in moved)
    assert owner("x", []) is None
