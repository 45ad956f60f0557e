"""Example scenarios for `tickwire bench scenario`, and a template for your own.

    tickwire bench scenario bench.scenarios:ping_echo --conns 20 --duration 5
    tickwire bench scenario bench.scenarios:ping_echo --arg size=1024 --arg pings=1

A scenario is ``async def NAME(client: AsyncClient, ctx: ScenarioContext) -> None``,
called in a loop per connection; each call is one measured iteration. Raise to count an
error. `ctx.args` holds the ``--arg KEY=VALUE`` pairs, `ctx.state` survives from call to
call on one connection, `ctx.rng` is seeded per connection. Login and room fan-out
scenarios come with the sessions and push features.
"""

from __future__ import annotations

from bench.scenario import ScenarioContext
from client_sdk import AsyncClient
from protocol.proto.system_pb2 import EchoReply, EchoRequest


def _payload(ctx: ScenarioContext) -> bytes:
    payload = ctx.state.get("payload")
    if not isinstance(payload, bytes):
        payload = ctx.rng.randbytes(int(ctx.args.get("size", "64")))
        ctx.state["payload"] = payload
    return payload


async def ping_echo(client: AsyncClient, ctx: ScenarioContext) -> None:
    """A Ping and an Echo per iteration, the Echo's bytes checked; a mix of the two
    smallest request types a client sends all day.

    --arg size=BYTES (64): EchoRequest.data; --arg pings=N (1): Pings per iteration.
    """
    for _ in range(int(ctx.args.get("pings", "1"))):
        await client.ping()
    payload = _payload(ctx)
    reply = await client.call(EchoRequest(data=payload), EchoReply)
    if reply.data != payload:
        raise ValueError(f"EchoReply carries {len(reply.data)} other bytes")


async def echo(client: AsyncClient, ctx: ScenarioContext) -> None:
    """One Echo per iteration, through the SDK: compare with `bench echo --depth 1` to see
    what the SDK costs a client."""
    payload = _payload(ctx)
    reply = await client.call(EchoRequest(data=payload), EchoReply)
    if reply.data != payload:
        raise ValueError(f"EchoReply carries {len(reply.data)} other bytes")
