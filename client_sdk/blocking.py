"""A blocking wrapper for scripts: the AsyncClient runs on an event loop in a daemon thread.

Callbacks registered with `on_push`, `on_reconnect` and `on_session_lost` run on that
loop's thread; `pushes()` hands pushes over through a thread-safe queue instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import ssl
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from google.protobuf.message import Message

from client_sdk.client import (
    Address,
    AsyncClient,
    Push,
    PushCallback,
    PushGapCallback,
    Reconnect,
    ReconnectCallback,
    Session,
    SessionLostCallback,
)
from client_sdk.errors import ConnectionClosed
from client_sdk.ledger import ACK_DELAY, ACK_EVERY
from protocol.proto.system_pb2 import LoginReply, LogoutReply, ResumeReply
from protocol.registry import MessageRegistry

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Client:
    def __init__(
        self,
        host: str,
        port: int,
        registry: MessageRegistry | None = None,
        *,
        timeout: float = 10.0,
        reconnect: Reconnect | None = None,
        ack_delay: float = ACK_DELAY,
        ack_every: int = ACK_EVERY,
        tls: bool | ssl.SSLContext = False,
        tls_ca: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
        fallbacks: Iterable[Address] = (),
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tickwire-client", daemon=True
        )
        self._thread.start()
        self._pushes: queue.Queue[Push | None] | None = None
        #: Why the client is closed, once it is (what calls after close() raise).
        self._final = ConnectionClosed("client closed the connection")
        try:
            self._client: AsyncClient = self._run(
                AsyncClient.connect(
                    host,
                    port,
                    registry,
                    timeout=timeout,
                    reconnect=reconnect,
                    ack_delay=ack_delay,
                    ack_every=ack_every,
                    tls=tls,
                    tls_ca=tls_ca,
                    server_hostname=server_hostname,
                    fallbacks=fallbacks,
                ),
                timeout,
            )
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            # From a callback on the client's own loop: blocking here would stop the loop
            # that has to do the work, for good.
            coro.close()
            raise RuntimeError(
                "a blocking Client method was called from one of its callbacks (the "
                "client's own loop thread); use the AsyncClient there, or hand the work "
                "to another thread"
            )
        if self._loop.is_closed():
            coro.close()
            raise self._final
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        if self._loop.is_closed():
            raise self._final
        self._loop.call_soon_threadsafe(fn, *args)

    @property
    def registry(self) -> MessageRegistry:
        return self._client.registry

    def request(self, message: Message, *, timeout: float | None = 30.0) -> Message:
        return self._run(self._client.request(message, timeout=timeout))

    def call(self, message: Message, reply_type: type[M], *, timeout: float | None = 30.0) -> M:
        return self._run(self._client.call(message, reply_type, timeout=timeout))

    def notify(self, message: Message) -> None:
        if self._loop.is_closed():
            raise self._final

        async def send() -> None:
            self._client.notify(message)

        self._run(send())

    def ping(self, *, timeout: float | None = 10.0) -> float:
        return self._run(self._client.ping(timeout=timeout))

    def describe(self, *, adopt: bool = False) -> MessageRegistry:
        return self._run(self._client.describe(adopt=adopt))

    def on_push(self, message_type: type[Message], callback: PushCallback) -> None:
        self._on_loop(self._client.on_push, message_type, callback)

    # -- sessions (AsyncClient's, blocking) ---------------------------------------------

    def login(
        self,
        user: str,
        password: str,
        device: str = "",
        *,
        remember: bool = False,
        auto_refresh: bool = False,
        timeout: float | None = 10.0,
    ) -> LoginReply:
        return self._run(
            self._client.login(
                user,
                password,
                device,
                remember=remember,
                auto_refresh=auto_refresh,
                timeout=timeout,
            )
        )

    def refresh_token(self, *, timeout: float | None = 10.0) -> LoginReply:
        return self._run(self._client.refresh_token(timeout=timeout))

    def logout(self, *, timeout: float | None = 10.0) -> LogoutReply:
        return self._run(self._client.logout(timeout=timeout))

    def resume(
        self, token: str, last_push_seq: int | None = None, *, timeout: float | None = 10.0
    ) -> ResumeReply:
        return self._run(self._client.resume(token, last_push_seq, timeout=timeout))

    @property
    def session(self) -> Session | None:
        """The logged-in session, None when there is none (a frozen snapshot)."""
        return self._client.session

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """`callback(async_client)` runs on the loop thread: requests from it go through
        the AsyncClient it is given (awaited), not through this blocking Client."""
        self._on_loop(self._client.on_reconnect, callback)

    def on_session_lost(self, callback: SessionLostCallback) -> None:
        self._on_loop(self._client.on_session_lost, callback)

    def on_push_gap(self, callback: PushGapCallback) -> None:
        """`callback(gap)` runs on the loop thread when a Resume reports lost pushes."""
        self._on_loop(self._client.on_push_gap, callback)

    @property
    def last_push_seq(self) -> int:
        return self._client.last_push_seq

    @property
    def push_gap(self) -> bool:
        return self._client.push_gap

    @property
    def duplicate_pushes(self) -> int:
        return self._client.duplicate_pushes

    @property
    def closed(self) -> bool:
        return self._client.closed

    @property
    def reconnects(self) -> int:
        return self._client.reconnects

    @property
    def address(self) -> Address:
        """The (host, port) the client is on (with fallbacks, maybe not the first)."""
        return self._client.address

    def wait_closed(self, timeout: float | None = None) -> ConnectionClosed:
        """Block until the connection has ended for good; why (TimeoutError after
        `timeout`)."""
        if self._loop.is_closed():
            return self._final
        return self._run(self._client.wait_closed(), timeout)

    def pushes(self, timeout: float | None = None) -> Iterator[Push]:
        """Pushes as they arrive; stops when the connection closes or `timeout` passes idle."""
        if self._pushes is None:
            q: queue.Queue[Push | None] = queue.Queue()
            self._pushes = q

            async def pump() -> None:
                async for push in self._client.pushes():
                    q.put(push)
                q.put(None)

            asyncio.run_coroutine_threadsafe(pump(), self._loop)
        while True:
            try:
                item = self._pushes.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                self._pushes.put(None)  # the end stays the end for the next caller too
                return
            yield item

    def close(self) -> None:
        if self._loop.is_closed():
            return  # closed already (close() then __exit__, say)
        if threading.current_thread() is self._thread:
            raise RuntimeError("Client.close() called from one of its own callbacks")
        try:
            self._run(self._client.close(), 10.0)
            self._final = self._run(self._client.wait_closed(), 10.0)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        async def finish_tasks() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        if self._thread.is_alive():
            # A task that will not end within the wait: close anyway.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(finish_tasks(), self._loop).result(5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
