"""Time of a Resume that takes the session over from another node, against a Resume on
the node that holds it (waiting for its client).

    .venv/bin/python -m bench.serverside.cluster_resume --count 300

Two nodes (in this process) on a fresh redis-server. Each round pushes one message to
the user (so there is a buffer to hand over), opens a new SDK connection on the next
node (the same one, or the other in turn), and times its ResumeRequest until the reply:
on the same node a store round trip; across nodes two node-to-node calls and a marker
on the user's channel more (server/cluster/handover.py). Every reply must say no
push_gap. Sequential on purpose: it measures the path, not throughput.
"""

from __future__ import annotations

import argparse
import logging
import time

import uvloop

from bench.serverside.cluster_users import client_registry, percentile, start_nodes
from client_sdk import AsyncClient
from protocol.proto.system_pb2 import LoginReply, LoginRequest, ResumeReply, ResumeRequest
from server import Server
from tests.proto import testapp_pb2 as pb
from tests.store.redisproc import redis_binary, start_redis


async def rounds(nodes: list[Server], token: str, count: int, across: bool) -> list[float]:
    took = []
    where = 0
    client: AsyncClient | None = None
    for tag in range(count):
        nodes[where].push("alice", pb.SleepReply(tag=tag))
        if across:
            where = 1 - where
        fresh = await AsyncClient.connect(*nodes[where].address, registry=client_registry())
        started = time.perf_counter()
        reply = await fresh.request(ResumeRequest(token=token))
        took.append((time.perf_counter() - started) * 1e3)
        if not isinstance(reply, ResumeReply) or reply.push_gap:
            raise SystemExit(f"resume {tag}: {reply}")
        if client is not None:
            await client.close()
        client = fresh
    if client is not None:
        await client.close()
    return took


async def main(count: int) -> None:
    binary = redis_binary()
    if binary is None:
        raise SystemExit("no redis-server on PATH")
    logging.getLogger("tickwire").setLevel(logging.ERROR)  # a connection per round
    redis = start_redis(binary)
    nodes: list[Server] = []
    try:
        await start_nodes(redis.url, nodes)
        client = await AsyncClient.connect(*nodes[0].address, registry=client_registry())
        login = await client.request(LoginRequest(user="alice", password="a"))
        assert isinstance(login, LoginReply)
        await client.close()
        await rounds(nodes, login.token, 50, across=True)  # warm-up
        for name, across in (("same node", False), ("other node (handover)", True)):
            took = await rounds(nodes, login.token, count, across)
            print(
                f"{name}: {count} resumes, p50 {percentile(took, 0.5):.2f} ms, "
                f"p99 {percentile(took, 0.99):.2f} ms"
            )
    finally:
        for server in nodes:
            await server.stop(timeout=1.0)
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    uvloop.run(main(parser.parse_args().count))  # as `tickwire serve` runs
