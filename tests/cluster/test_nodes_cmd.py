"""`tickwire serve --cluster` processes, `tickwire nodes`, and a node killed with SIGKILL
leaving the directory."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

from server.cluster import read_nodes
from tests.conftest import StartNode
from tests.serveproc import ROOT, server_log, spawn_serve


async def nodes_cmd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "nodes",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_nodes_lists_serving_processes_and_drops_a_killed_one(redis_url: str) -> None:
    a, a_address = await spawn_serve("--no-chat", "--cluster", redis_url, "--node-id", "a")
    b, b_address = await spawn_serve(
        "--no-chat",
        "--cluster",
        redis_url,
        "--node-id",
        "b",
        "--set",
        "metrics=true",
        "--set",
        "metrics_port=0",
    )
    try:
        code, out, err = await nodes_cmd("--cluster", redis_url, "--json")
        assert code == 0, err
        listed = {node["id"]: node for node in json.loads(out)}
        assert set(listed) == {"a", "b"}
        assert (listed["a"]["host"], listed["a"]["port"]) == a_address
        assert listed["b"]["port"] == b_address[1]
        assert listed["a"]["pid"] == a.pid
        code, out, _ = await nodes_cmd("--cluster", redis_url)
        assert code == 0 and "a" in out and f":{b_address[1]}" in out and "serving" in out
        a.kill()
        await a.wait()
        killed = time.monotonic()
        while {info.id for info in await read_nodes(redis_url)} != {"b"}:
            assert time.monotonic() - killed < 3.5, "a killed node outlived its TTL"
            await asyncio.sleep(0.05)
        b.terminate()
        await b.wait()
        log = await server_log(b)
        assert "node b of the cluster" in log
        code, out, _ = await nodes_cmd("--cluster", redis_url)
        assert code == 0 and out.strip() == "no live nodes"
    finally:
        for proc in (a, b):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_nodes_names_an_unreachable_cluster() -> None:
    code, _, err = await nodes_cmd("--cluster", "redis://127.0.0.1:1/0")
    assert code == 1 and "unreachable" in err
    code, _, err = await nodes_cmd("--cluster", "http://x")
    assert code == 2 and "bad cluster URL" in err


async def test_a_cluster_node_exports_its_bus_on_metrics(start_node: StartNode) -> None:
    node = await start_node(node_id="m", metrics=True, metrics_port=0)
    assert node.metrics_address is not None
    host, port = node.metrics_address
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read()
    )
    text = body.decode()
    assert "tickwire_cluster_up 1.0" in text
    assert "tickwire_cluster_nodes 1.0" in text
    families = ("user_pushes_published", "rooms_published", "kicks_sent", "kicks_rechecked")
    for family in (*families, "handovers_given", "handovers_taken", "bus_malformed"):
        assert f"tickwire_cluster_{family}_total 0.0" in text
