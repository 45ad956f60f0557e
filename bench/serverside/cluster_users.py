"""Latency of a push to a user held on another node, against a push on the user's own node.

    .venv/bin/python -m bench.serverside.cluster_users --count 2000

Two nodes (in this process) on a fresh redis-server, one SDK client logged in on node a.
Each round pushes one message and waits until the client got it, so the figure is the
time from the push call to the client's callback: made on a (local) or on b (one PUBLISH
and a node's delivery more). Sequential on purpose: it measures the path, not
throughput. On uvloop, as `tickwire serve` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from client_sdk import AsyncClient, Push
from protocol.proto.system_pb2 import LoginRequest
from protocol.registry import MessageRegistry, system_registry
from server import App, Context, Server, ServerConfig
from server.auth import MemoryUsers
from tests.proto import testapp_pb2 as pb
from tests.store.redisproc import redis_binary, start_redis


def push_app() -> App:
    """Registers SleepReply, the message pushed."""
    app = App("users-bench")

    @app.handler(pb.SleepRequest)
    def sleep(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=msg.tag)

    return app


def client_registry() -> MessageRegistry:
    registry = system_registry()
    registry.register_module(pb)
    return registry


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def rounds(origin: Server, got: asyncio.Queue[Push], count: int) -> list[float]:
    took = []
    for tag in range(count):
        started = time.perf_counter()
        origin.push("alice", pb.SleepReply(tag=tag))
        await got.get()
        took.append((time.perf_counter() - started) * 1e6)
    return took


async def start_nodes(url: str, nodes: list[Server]) -> list[Server]:
    """Nodes a and b of the cluster on `url` serving push_app to alice (password a),
    appended to `nodes` as they start (the caller stops them)."""
    users = MemoryUsers({"alice": "a"})
    for node_id in ("a", "b"):
        config = ServerConfig(host="127.0.0.1", port=0, cluster_url=url, node_id=node_id)
        server = Server(push_app(), config=config, authenticator=users)
        await server.start()
        nodes.append(server)
    while any(n.cluster is not None and len(n.cluster.live) < 2 for n in nodes):
        await asyncio.sleep(0.05)
    return nodes


async def main(count: int) -> None:
    binary = redis_binary()
    if binary is None:
        raise SystemExit("no redis-server on PATH")
    redis = start_redis(binary)
    nodes: list[Server] = []
    try:
        a, b = await start_nodes(redis.url, nodes)
        client = await AsyncClient.connect(*a.address, registry=client_registry())
        got: asyncio.Queue[Push] = asyncio.Queue()
        client.on_push(pb.SleepReply, got.put_nowait)
        await client.request(LoginRequest(user="alice", password="a"))
        await rounds(a, got, 200)  # warm-up
        for name, origin in (("local (a -> alice on a)", a), ("remote (b -> alice on a)", b)):
            took = await rounds(origin, got, count)
            print(
                f"{name}: {count} pushes, p50 {percentile(took, 0.5):.0f} us, "
                f"p99 {percentile(took, 0.99):.0f} us"
            )
        await client.close()
    finally:
        for server in nodes:
            await server.stop(timeout=1.0)
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    uvloop.run(main(parser.parse_args().count))  # as `tickwire serve` runs
