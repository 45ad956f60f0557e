"""Rate limits and login throttling on a real server, through real sockets and the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from client_sdk import AsyncClient, RateLimited, Unauthenticated
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import EchoReply, EchoRequest, Error
from server import App, Context
from server.auth import MemoryUsers
from server.ratelimit import Buckets, Limit, LoginThrottle, parse_rate
from tests.conftest import StartServer
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

PASSWORDS = {"alice": "wonderland", "bob": "builder"}

Connect = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[AsyncClient] = []

    async def open_one(server: object, user: str | None = None) -> AsyncClient:
        host, port = server.address  # type: ignore[attr-defined]
        client = await AsyncClient.connect(host, port, app_registry())
        opened.append(client)
        if user is not None:
            await client.login(user, PASSWORDS[user])
        return client

    yield open_one
    for client in opened:
        await client.close()


def limited_app(*, per: str = "user", app_rate: str | None = None) -> App:
    """Note (sync) limited to 3 at once per `per`; Sleep (async) to 2; Big has no limit of
    its own (the app's, if any)."""
    app = App("limited", public=True, rate=app_rate, burst=1)

    @app.handler(pb.NoteRequest, rate="1/h", burst=3, per=per)  # type: ignore[arg-type]
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=1)

    @app.handler(pb.SleepRequest, rate="1/h", burst=2)
    async def sleep(ctx: Context, msg: pb.SleepRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=msg.tag)

    @app.handler(pb.BigRequest)
    def big(ctx: Context, msg: pb.BigRequest) -> pb.BigReply:
        return pb.BigReply(data=b"x" * msg.size)

    return app


async def note(client: AsyncClient) -> pb.SleepReply:
    return await client.call(pb.NoteRequest(text="n"), pb.SleepReply)


async def test_past_its_burst_a_handler_answers_rate_limited_with_the_wait(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(limited_app(per="connection"))
    client = await connect(server)
    for _ in range(3):
        await note(client)
    with pytest.raises(RateLimited) as info:
        await note(client)
    # One token an hour: the wait is most of an hour, in whole milliseconds.
    assert info.value.retry_after is not None and 3000 < info.value.retry_after <= 3600
    assert "retry after" in info.value.message and "1/h per connection" in info.value.message
    assert server.stats.errors[ErrorCode.RATE_LIMITED] == 1
    # Async handlers are limited the same way; the limited connection still gets the rest.
    for tag in (1, 2):
        assert (await client.call(pb.SleepRequest(tag=tag), pb.SleepReply)).tag == tag
    with pytest.raises(RateLimited):
        await client.call(pb.SleepRequest(tag=3), pb.SleepReply)
    assert len((await client.call(pb.BigRequest(size=5), pb.BigReply)).data) == 5
    # Another connection has buckets of its own.
    other = await connect(server)
    await note(other)


async def test_a_route_without_a_limit_keeps_its_fused_fast_path(
    start_server: StartServer,
) -> None:
    server = await start_server(limited_app())
    by_name = {route.name: route for route in server.routes.values()}
    assert by_name["testapp.BigRequest"].fused
    assert by_name["system.EchoRequest"].fused
    assert not by_name["testapp.NoteRequest"].fused


async def test_an_app_rate_limits_every_handler_without_its_own(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(limited_app(per="connection", app_rate="1/h"))
    by_name = {route.name: route for route in server.routes.values()}
    assert not by_name["testapp.BigRequest"].fused
    assert by_name["system.EchoRequest"].fused  # another app: untouched
    client = await connect(server)
    await client.call(pb.BigRequest(size=1), pb.BigReply)  # the app's burst of 1
    with pytest.raises(RateLimited):
        await client.call(pb.BigRequest(size=1), pb.BigReply)
    for _ in range(3):  # the handler's own limit, not the app's
        await note(client)


async def test_per_user_buckets_span_the_users_connections(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(
        limited_app(per="user"), authenticator=MemoryUsers(PASSWORDS), duplicate_login="allow"
    )
    first, second = await connect(server, "alice"), await connect(server, "alice")
    for client in (first, second, first):
        await note(client)
    with pytest.raises(RateLimited):
        await note(second)
    await note(await connect(server, "bob"))


async def test_per_message_buckets_are_shared_by_everyone(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(limited_app(per="message"))
    clients = [await connect(server) for _ in range(3)]
    for client in clients:
        await note(client)
    with pytest.raises(RateLimited):
        await note(await connect(server))


async def test_conn_rate_limits_all_of_a_connections_messages_together(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(conn_rate="1/h", conn_burst=3)
    assert not next(iter(server.routes.values())).fused
    client = await connect(server)
    await client.ping()
    await client.call(EchoRequest(data=b"a"), EchoReply)
    await client.ping()
    with pytest.raises(RateLimited) as info:
        await client.call(EchoRequest(data=b"b"), EchoReply)
    assert "connection is over its rate" in info.value.message
    await (await connect(server)).ping()


async def test_a_pipelined_flood_gets_its_burst_then_rate_limited_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server(limited_app(per="connection"))
    peer = await RawPeer.connect(server.address)
    payload = pb.NoteRequest(text="x").SerializeToString()
    peer.send(b"".join(_frame(1007, seq, payload) for seq in range(1, 101)))
    frames = await peer.read_frames(100)
    assert [f.seq for f in frames] == list(range(1, 101))
    assert [f.msg_id for f in frames[:3]] == [1001] * 3
    codes = {Error.FromString(f.payload).code for f in frames[3:]}
    assert codes == {ErrorCode.RATE_LIMITED}
    await peer.close()


def _frame(msg_id: int, seq: int, payload: bytes) -> bytes:
    from protocol.frame import encode_frame

    return encode_frame(msg_id, 0, seq, payload)


def test_buckets_refill_at_the_rate_and_forget_full_ones() -> None:
    buckets = Buckets(per_second=10.0, burst=2)
    assert buckets.take("k", now=0.0) == 0.0
    assert buckets.take("k", now=0.0) == 0.0
    assert buckets.take("k", now=0.0) == pytest.approx(0.1)
    assert buckets.take("k", now=0.05) == pytest.approx(0.05)  # half a token so far
    assert buckets.take("k", now=0.1) == 0.0
    for key in range(5000):  # sweeps drop what has refilled: memory follows activity
        buckets.take(key, now=1000.0 + key)
    assert len(buckets) < 2100


def test_rates_parse_like_nginx() -> None:
    assert parse_rate("20/s") == 20.0
    assert parse_rate("30/m") == 0.5
    assert parse_rate("36/h") == pytest.approx(0.01)
    for bad in ("20", "0/s", "-1/s", "3/fortnight", "x/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    with pytest.raises(ValueError):
        Limit.of("1/s", burst=0)


def test_a_bad_rate_fails_at_registration() -> None:
    with pytest.raises(ValueError, match="rate"):
        App("bad", rate="fast")


# -- login throttling ----------------------------------------------------------------------


class CountingUsers(MemoryUsers):
    def __init__(self) -> None:
        super().__init__(PASSWORDS)
        self.checks = 0

    async def authenticate(self, user: str, password: str, device: str) -> str | None:
        self.checks += 1
        return await super().authenticate(user, password, device)


async def test_failed_logins_lock_the_name_out_without_checking_the_password(
    start_server: StartServer, connect: Connect
) -> None:
    users = CountingUsers()
    server = await start_server(
        authenticator=users, login_user_failures=3, login_address_failures=0, login_lockout=0.2
    )
    client = await connect(server)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await client.login("alice", "wrong")
    assert users.checks == 3
    # Locked: even the right password is refused, and never checked.
    with pytest.raises(RateLimited) as info:
        await client.login("alice", "wonderland")
    assert users.checks == 3
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.2
    assert "too many failed logins" in info.value.message
    # Another name is not locked.
    assert (await client.login("bob", "builder")).user_id == "bob"
    await asyncio.sleep(info.value.retry_after + 0.05)
    assert (await client.login("alice", "wonderland")).user_id == "alice"
    # The success reset the count: one failure does not lock again.
    with pytest.raises(Unauthenticated):
        await client.login("alice", "wrong")
    assert (await client.login("alice", "wonderland")).user_id == "alice"


async def test_after_a_lockout_one_login_at_a_time_is_checked(
    start_server: StartServer, connect: Connect
) -> None:
    """A flood pipelined past the end of a lockout window must not reach the password
    check all at once: the name is on probation, one login is checked, the rest wait."""
    users = CountingUsers()
    server = await start_server(
        authenticator=users, login_user_failures=1, login_address_failures=0, login_lockout=0.1
    )
    client = await connect(server)
    with pytest.raises(Unauthenticated):
        await client.login("alice", "wrong")
    await asyncio.sleep(0.15)  # the window is over
    results = await asyncio.gather(
        *(client.login("alice", "wrong") for _ in range(20)), return_exceptions=True
    )
    assert users.checks == 2  # the first failure and the one probe
    assert sum(isinstance(r, Unauthenticated) for r in results) == 1
    assert sum(isinstance(r, RateLimited) for r in results) == 19
    # A success ends the probation: logins are checked side by side again.
    await asyncio.sleep(server.login_throttle.wait("alice", "127.0.0.1") + 0.05)
    assert (await client.login("alice", "wonderland")).user_id == "alice"
    assert server.login_throttle.claim("alice", "127.0.0.1") == []


async def test_failed_logins_from_one_address_lock_it_out_for_every_name(
    start_server: StartServer, connect: Connect
) -> None:
    users = CountingUsers()
    server = await start_server(
        authenticator=users, login_user_failures=0, login_address_failures=4
    )
    client = await connect(server)
    for n in range(4):
        with pytest.raises(Unauthenticated):
            await client.login(f"guess{n}", "wrong")
    with pytest.raises(RateLimited):
        await client.login("bob", "builder")
    assert users.checks == 4


async def test_a_rejected_duplicate_login_is_not_a_failed_one(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(
        authenticator=MemoryUsers(PASSWORDS), duplicate_login="reject", login_user_failures=2
    )
    await connect(server, "alice")
    other = await connect(server)
    for _ in range(4):  # the right password, refused because alice is logged in already
        with pytest.raises(Unauthenticated):
            await other.login("alice", "wonderland")
    assert len(server.login_throttle) == 0


async def test_login_throttling_can_be_turned_off(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(authenticator=MemoryUsers(PASSWORDS), login_lockout=0)
    client = await connect(server)
    for _ in range(12):
        with pytest.raises(Unauthenticated):
            await client.login("alice", "wrong")
    assert (await client.login("alice", "wonderland")).user_id == "alice"


def test_the_lockout_doubles_with_each_failure_up_to_its_cap() -> None:
    throttle = LoginThrottle(user_failures=2, address_failures=0, lockout=1.0, lockout_max=6.0)
    now = 100.0
    waits = []
    for _ in range(6):
        throttle.failed("alice", "10.0.0.1", now=now)
        waits.append(throttle.wait("alice", "10.0.0.1", now=now))
    assert waits == [0.0, 1.0, 2.0, 4.0, 6.0, 6.0]
    throttle.succeeded("alice", "10.0.0.1")
    assert throttle.wait("alice", "10.0.0.1", now=now) == 0.0


def test_the_throttle_forgets_quiet_entries() -> None:
    throttle = LoginThrottle(user_failures=5, address_failures=5, lockout=1.0, lockout_max=1.0)
    for n in range(3000):
        throttle.failed(f"user{n}", f"10.0.{n // 256}.{n % 256}", now=float(n))
    assert len(throttle) < 2 * 1024 + 10
