"""Order flow for `tickwire bench scenario` against the example venue (docs/trade.md).

    TRADE_JOURNAL_DIR=$(mktemp -d) TRADE_ORDER_RATE=100000/s \\
    tickwire bench scenario examples.trade.bench:cross \\
        --server-cmd "tickwire serve --app examples.trade:app \\
                      --set users_file=examples/demo-users.txt \\
                      --set duplicate_login=allow" --conns 6 --duration 10

Connections log in as the demo users in turn (alice, bob, carol; password demo-NAME),
several connections per user (hence duplicate_login=allow).
`cross`: alice's connections sell and the others buy, one unit at one price, so every
order trades with another account's (no self-trade): an iteration is one order, from
sending it to its acknowledgement. `rest_cancel`: an order far from the market, then its
cancel: two acknowledged, journaled commands an iteration. The venue's order-to-fill
time and the journal's fsync on/off comparison are in bench/serverside/trade_flow.py.
"""

from __future__ import annotations

from bench.scenario import ScenarioContext
from client_sdk import AsyncClient
from examples.trade import trade_pb2 as pb

SCHEMA = [pb]
USERS = ("alice", "bob", "carol")


async def _login(client: AsyncClient, ctx: ScenarioContext) -> str:
    user = ctx.state.get("user")
    if user is None:
        user = USERS[ctx.conn % len(USERS)]
        await client.login(user, f"demo-{user}")
        ctx.state["user"] = user
    return str(user)


def _next_id(ctx: ScenarioContext, user: str) -> str:
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return f"{user}-{ctx.conn}-{ctx.args.get('run', '0')}-{ctx.state['n']}"


async def cross(client: AsyncClient, ctx: ScenarioContext) -> None:
    user = await _login(client, ctx)
    side = pb.SELL if user == "alice" else pb.BUY
    ack = await client.request(
        pb.NewOrderSingle(
            cl_ord_id=_next_id(ctx, user),
            symbol="XYZ",
            side=side,
            ord_type=pb.LIMIT,
            price=10_000,
            order_qty=1,
        )
    )
    if not isinstance(ack, pb.ExecutionReport) or ack.exec_type != pb.EXEC_NEW:
        raise ValueError(f"order not accepted: {ack}")


async def rest_cancel(client: AsyncClient, ctx: ScenarioContext) -> None:
    user = await _login(client, ctx)
    ack = await client.request(
        pb.NewOrderSingle(
            cl_ord_id=_next_id(ctx, user),
            symbol="ABC",
            side=pb.BUY,
            ord_type=pb.LIMIT,
            price=1,
            order_qty=1,
        )
    )
    if not isinstance(ack, pb.ExecutionReport) or ack.exec_type != pb.EXEC_NEW:
        raise ValueError(f"order not accepted: {ack}")
    done = await client.request(
        pb.OrderCancelRequest(order_id=ack.order_id, cl_ord_id=_next_id(ctx, user), symbol="ABC")
    )
    if not isinstance(done, pb.ExecutionReport) or done.exec_type != pb.EXEC_CANCELED:
        raise ValueError(f"cancel refused: {done}")
