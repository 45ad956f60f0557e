"""Room broadcasts across cluster nodes vs one node, everything in this one process.

    PYTHONPATH=. .venv/bin/python -m bench.serverside.cluster_rooms

Starts a redis-server of its own (the tests' helper: needs redis-server on PATH), then
for 1 and for 3 in-process nodes: 30 SDK clients spread over the nodes join one room,
and node 0 makes 3,000 broadcasts of a 40-byte Line, 100 per loop iteration. It prints
the deliveries/s until every member had every line, the sender's own time per
broadcast call, and the PUBLISHes it made. One core runs Redis's clients, every node
and every client here, so the figures compare the two layouts; they are no node's
capacity (bench/fanout.py measures that).
"""

from __future__ import annotations

import asyncio
import time

import uvloop

from client_sdk import AsyncClient
from client_sdk.client import Push
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import Line
from examples.chat.service import make_app
from protocol.registry import system_registry
from server.auth import MemoryUsers
from server.config import ServerConfig
from server.server import Server
from tests.conftest import need_redis_binary
from tests.store.redisproc import start_redis

MEMBERS, BROADCASTS, BATCH = 30, 3000, 100
USERS = MemoryUsers({f"u{i}": "pw" for i in range(MEMBERS)})


async def run(count: int, url: str) -> None:
    nodes: list[Server] = []
    for i in range(count):
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            cluster_url=url,
            node_id=f"n{i}-of-{count}",
            cluster_heartbeat=0.1,
            cluster_node_ttl=0.5,
        )
        node = Server(make_app(history=0), config=config, authenticator=USERS)
        await node.start()
        nodes.append(node)
    room = f"bench-{count}"
    got = [0] * MEMBERS
    clients: list[AsyncClient] = []
    for i in range(MEMBERS):
        node = nodes[i % count]
        client = await AsyncClient.connect(*node.address, registry=system_registry([chat_pb2]))
        await client.login(f"u{i}", "pw")

        def counted(push: Push, i: int = i) -> None:
            got[i] += 1

        client.on_push(Line, counted)
        [session] = node.sessions.local_sessions(f"u{i}")
        node.room(room).join(session)
        clients.append(client)
    for node in nodes:
        assert node.pusher.cluster_rooms is not None
        await node.pusher.cluster_rooms.settled()
    sender = nodes[0]
    assert sender.cluster is not None
    line = Line(room=room, user="x", text="x" * 40)
    published = sender.cluster.bus.published
    started = time.perf_counter()
    sending = 0.0
    for done in range(0, BROADCASTS, BATCH):
        call = time.perf_counter()
        for _ in range(BATCH):
            sender.room(room).broadcast(line)
        sending += time.perf_counter() - call
        await asyncio.sleep(0)
        while min(got) < done - BATCH:  # at most two batches in flight
            await asyncio.sleep(0)
    while min(got) < BROADCASTS:
        await asyncio.sleep(0.001)
    took = time.perf_counter() - started
    print(
        f"nodes={count} members={MEMBERS} broadcasts={BROADCASTS}: "
        f"{BROADCASTS * MEMBERS / took:,.0f} deliveries/s end to end, "
        f"sender {sending / BROADCASTS * 1e6:.1f} us per broadcast call, "
        f"{sender.cluster.bus.published - published} PUBLISHes by the sender"
    )
    for client in clients:
        await client.close()
    for node in nodes:
        await node.stop(timeout=1.0)


async def main() -> None:
    redis = start_redis(need_redis_binary())
    try:
        for count in (1, 3, 1, 3):
            await run(count, redis.url)
    finally:
        redis.stop()


if __name__ == "__main__":
    uvloop.run(main())
