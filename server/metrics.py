"""Prometheus metrics, /healthz and /readyz on their own port.

The hot path keeps plain integers (Stats, Route.calls/errors); this module turns them into
metric families only when Prometheus scrapes, through a custom collector. The one thing it
adds to the hot path is the `Timing` layer for handler latency histograms, and only when
the endpoint is enabled (``metrics_port``): a bisect and three integer updates per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from protocol.errors import code_name

if TYPE_CHECKING:
    from server.app import Context, Route
    from server.middleware import Call
    from server.server import Server

log = logging.getLogger("tickwire.metrics")

#: Upper bounds (seconds) of the handler latency buckets: 10 µs to 10 s.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Bucket counts in a plain list: cheap to update on the hot path, read at scrape."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.total = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.total += 1

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(LATENCY_BUCKETS, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", self.total))
        return out


class Timing:
    """Middleware: the time each handler takes, per message type."""

    def __init__(self) -> None:
        self.histograms: dict[str, LatencyHistogram] = {}

    def wrap(self, route: Route, call_next: Call) -> Call:
        histogram = self.histograms.setdefault(route.name, LatencyHistogram())
        observe = histogram.observe
        clock = time.perf_counter
        if route.awaited:

            async def timed_async(ctx: Context, msg: Any) -> Message | None:
                start = clock()
                try:
                    result: Message | None = await call_next(ctx, msg)
                    return result
                finally:
                    observe(clock() - start)

            return timed_async

        def timed(ctx: Context, msg: Any) -> Message | None:
            start = clock()
            try:
                result: Message | None = call_next(ctx, msg)
                return result
            finally:
                observe(clock() - start)

        return timed


class ServerCollector:
    """Reads the server's counters at scrape time."""

    def __init__(self, server: Server, timing: Timing, loop_lag: LoopLag) -> None:
        self.server = server
        self.timing = timing
        self.loop_lag = loop_lag

    def describe(self) -> list[Metric]:
        return []  # collected on demand; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        server = self.server
        stats = server.stats
        info = GaugeMetricFamily(
            "tickwire_build_info",
            "Always 1; fast_path says whether reads run through the compiled build of "
            "server/fastpath.py or the interpreted one.",
            labels=["fast_path"],
        )
        info.add_metric([server.dispatcher.build], 1)
        yield info
        yield GaugeMetricFamily(
            "tickwire_connections", "Open connections.", value=len(server.connections)
        )
        yield CounterMetricFamily(
            "tickwire_connections_opened",
            "Connections accepted.",
            value=stats.connections_opened,
        )
        closed = CounterMetricFamily(
            "tickwire_connections_closed", "Connections closed, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.close_reasons.items()):
            closed.add_metric([str(reason)], count)
        yield closed
        yield CounterMetricFamily("tickwire_frames_in", "Frames received.", value=stats.frames_in)
        yield CounterMetricFamily("tickwire_bytes_in", "Bytes received.", value=stats.bytes_in)
        yield CounterMetricFamily("tickwire_bytes_out", "Bytes written.", value=stats.bytes_out)
        requests = CounterMetricFamily(
            "tickwire_requests", "Frames handled, by message type.", labels=["message"]
        )
        failures = CounterMetricFamily(
            "tickwire_handler_errors",
            "Handlers that raised or timed out, by message type.",
            labels=["message"],
        )
        for route in server.routes.values():
            requests.add_metric([route.name], route.calls)
            failures.add_metric([route.name], route.errors)
        yield requests
        yield failures
        errors = CounterMetricFamily(
            "tickwire_errors_sent", "Error frames sent, by code.", labels=["code"]
        )
        for code, count in sorted(stats.errors.items()):
            errors.add_metric([code_name(code)], count)
        yield errors
        yield CounterMetricFamily(
            "tickwire_overloaded", "Frames answered OVERLOADED.", value=stats.overloaded
        )
        yield CounterMetricFamily(
            "tickwire_slow_consumers",
            "Connections cut off as slow consumers.",
            value=stats.close_reasons.get("slow_consumer", 0),
        )
        yield CounterMetricFamily(
            "tickwire_reads_paused",
            "Times a full mailbox paused reading.",
            value=stats.reads_paused,
        )
        yield CounterMetricFamily(
            "tickwire_writes_paused",
            "Times a peer's unread bytes paused writing.",
            value=stats.writes_paused,
        )
        yield GaugeMetricFamily(
            "tickwire_mailbox_frames",
            "Frames queued in connection mailboxes.",
            value=server.dispatcher.pending,
        )
        yield GaugeMetricFamily(
            "tickwire_handlers_busy",
            "Awaited handlers running now.",
            value=server.dispatcher.busy,
        )
        yield GaugeMetricFamily(
            "tickwire_event_loop_lag_seconds",
            "How late the loop ran a timer, at the last probe.",
            value=self.loop_lag.last,
        )
        yield GaugeMetricFamily(
            "tickwire_event_loop_lag_max_seconds",
            "The worst lag since the previous scrape.",
            value=self.loop_lag.take_max(),
        )
        yield from self._store_metrics()
        yield from self._timer_metrics()
        yield from self._cluster_metrics()
        yield from self._budget_metrics()
        yield from self._room_metrics()
        yield from self._push_metrics()
        latency = HistogramMetricFamily(
            "tickwire_handler_seconds", "Handler time, by message type.", labels=["message"]
        )
        for name, histogram in sorted(self.timing.histograms.items()):
            latency.add_metric([name], histogram.buckets(), sum_value=histogram.sum)
        yield latency

    def _push_metrics(self) -> Iterator[Metric]:
        """Pushes delivered, by kind, and what latest-value conflation saved."""
        pusher = self.server.pusher
        pushes = CounterMetricFamily(
            "tickwire_pushes", "Pushes handed to sessions, by delivery.", labels=["delivery"]
        )
        pushes.add_metric(["reliable"], pusher.reliable)
        pushes.add_metric(["latest"], pusher.latest)
        yield pushes
        yield CounterMetricFamily(
            "tickwire_pushes_conflated",
            "Latest values replaced by a newer one of the same key before they were written.",
            value=pusher.conflated,
        )
        yield CounterMetricFamily(
            "tickwire_pushes_latest_dropped",
            "Latest values dropped: a connection's waiting values were at their byte cap.",
            value=pusher.latest_dropped,
        )

    def _room_metrics(self) -> Iterator[Metric]:
        """Authoritative rooms and their tick loops (server/stateful_rooms.py)."""
        rooms = self.server.stateful_rooms
        stats = rooms.stats
        yield GaugeMetricFamily(
            "tickwire_stateful_rooms", "Authoritative rooms running now.", value=len(rooms.rooms)
        )
        for name, value, text in (
            ("room_ticks", stats.ticks, "Room ticks run."),
            ("room_ticks_late", stats.late, "Ticks that started a quarter period late or more."),
            (
                "room_ticks_skipped",
                stats.skipped,
                "Ticks skipped by a loop more than a period late.",
            ),
            ("room_tick_failures", stats.failures, "Ticks whose on_tick raised."),
        ):
            yield CounterMetricFamily(f"tickwire_{name}", text, value=value)
        yield GaugeMetricFamily(
            "tickwire_room_tick_lateness_p99_seconds",
            "The 99th percentile of how late ticks started, since the server started.",
            value=stats.lateness_us.get_value_at_percentile(99) / 1e6,
        )

    def _budget_metrics(self) -> Iterator[Metric]:
        """The byte budgets and the TLS handshakes (docs/internet.md): what peers make
        the server hold now, against the limits an operator sets."""
        server = self.server
        dispatcher = server.dispatcher
        yield GaugeMetricFamily(
            "tickwire_input_bytes_queued",
            "Bytes of queued frames and partial frames held for all connections "
            "(max_input_bytes_total bounds it).",
            value=dispatcher.queued_bytes + dispatcher.partial_bytes,
        )
        yield GaugeMetricFamily(
            "tickwire_output_bytes_held",
            "Bytes waiting for write-paused connections (max_output_bytes_total bounds it).",
            value=dispatcher.output_bytes,
        )
        yield GaugeMetricFamily(
            "tickwire_connections_parked",
            "Connections not read until the server is back under its input budget.",
            value=len(dispatcher.parked),
        )
        yield CounterMetricFamily(
            "tickwire_oversized_replies",
            "Replies larger than max_frame, answered INTERNAL instead.",
            value=server.stats.oversized_replies,
        )
        if server.config.tls_cert:
            yield GaugeMetricFamily(
                "tickwire_tls_handshakes_in_flight",
                "TLS handshakes begun and not finished (they count against max_connections).",
                value=server.tls_handshakes.in_flight,
            )
            failed = CounterMetricFamily(
                "tickwire_tls_handshake_failures",
                "Failed TLS handshakes, by reason.",
                labels=["reason"],
            )
            for reason, count in sorted(server.tls_failures.total.items()):
                failed.add_metric([reason], count)
            yield failed

    def _timer_metrics(self) -> Iterator[Metric]:
        """The apps' timers (server/timers.py), per timer name."""
        timers = self.server.timers
        yield GaugeMetricFamily(
            "tickwire_timers", "Timers scheduled or running now.", value=len(timers.live)
        )
        for name, counts, text in (
            ("runs", timers.runs, "Timer bodies run, by timer name."),
            (
                "overruns",
                timers.overruns,
                "Timer runs skipped: the previous body was still running, or the loop was "
                "held past them.",
            ),
            ("errors", timers.errors, "Timer bodies that raised, by timer name."),
        ):
            family = CounterMetricFamily(f"tickwire_timer_{name}", text, labels=["timer"])
            for label, count in sorted(counts.items()):
                family.add_metric([label], count)
            yield family

    def _cluster_metrics(self) -> Iterator[Metric]:
        server = self.server
        cluster = server.cluster
        if cluster is None:
            return
        bus = cluster.bus
        yield GaugeMetricFamily(
            "tickwire_cluster_up",
            "1 while this node reaches the cluster's Redis (its bus), 0 during an outage.",
            value=int(bus.up),
        )
        yield GaugeMetricFamily(
            "tickwire_cluster_nodes", "Live nodes in this node's view.", value=len(cluster.live)
        )
        yield GaugeMetricFamily(
            "tickwire_cluster_channels", "Bus channels this node subscribes.", value=bus.channels
        )
        # Made with the cluster, so present whenever it is.
        pushes, rooms, kicks = server.user_push, server.pusher.cluster_rooms, server.kicks
        handovers = server.handovers
        assert pushes is not None and rooms is not None and kicks is not None
        assert handovers is not None
        for name, value, text in (
            ("published", bus.published, "Messages this node published on the bus."),
            ("received", bus.received, "Bus messages this node received."),
            ("failures", bus.failures, "Cross-node operations failed fast: Redis unreachable."),
            ("outages", bus.outages, "Times the bus lost Redis."),
            ("calls", cluster.calls, "Node-to-node requests made."),
            ("calls_failed", cluster.calls_failed, "Node-to-node requests that failed."),
            ("served", cluster.served, "Requests from other nodes run here."),
            ("user_pushes_published", pushes.published, "Pushes to users published for others."),
            ("user_pushes_received", pushes.received, "Pushes to users received from the bus."),
            ("user_pushes_delivered", pushes.delivered, "Sessions reached by bus pushes."),
            ("user_pushes_inbox", pushes.inbox_fallbacks, "Pushes no node held the user for."),
            ("user_pushes_failures", pushes.failures, "Pushes to users that failed on the bus."),
            ("rooms_published", rooms.published, "Room broadcasts published for other nodes."),
            ("rooms_received", rooms.received, "Room broadcasts received from other nodes."),
            ("rooms_failures", rooms.failures, "Room operations whose cluster part failed."),
            ("rooms_pruned", rooms.pruned, "Members of dead nodes removed from rooms."),
            ("kicks_sent", kicks.delivered, "Kicks sent to the node holding a session."),
            ("kicks_missed", kicks.missed, "Kicks addressed to a node that is gone."),
            ("kicks_served", kicks.served, "Kicks from other nodes run here."),
            ("kicks_rechecked", kicks.rechecked, "Sessions ended by the re-check after an outage."),
            ("bus_malformed", bus.malformed, "Bus messages dropped as malformed."),
            ("handovers_given", handovers.given, "Sessions handed to the node they resumed on."),
            ("handovers_taken", handovers.taken, "Sessions taken over from another node."),
            (
                "handovers_fallbacks",
                handovers.fallbacks,
                "Resumes of another node's session served from the store instead.",
            ),
        ):
            yield CounterMetricFamily(f"tickwire_cluster_{name}", text, value=value)

    def _store_metrics(self) -> Iterator[Metric]:
        server = self.server
        breaker = server.breaker
        if breaker is not None:
            yield GaugeMetricFamily(
                "tickwire_store_breaker_state",
                "The store's circuit breaker: 0 closed (calls go through), 1 open (they "
                "fail fast), 2 half-open (a probe runs).",
                value=int(breaker.state),
            )
            yield CounterMetricFamily(
                "tickwire_store_breaker_trips",
                "Times the breaker opened: store outages.",
                value=breaker.trips,
            )
            yield CounterMetricFamily(
                "tickwire_store_refused",
                "Store calls failed fast while the breaker was open.",
                value=breaker.refused,
            )
        queue = server.pusher.offline_queue
        if queue is not None:
            yield CounterMetricFamily(
                "tickwire_offline_pushes_lost",
                "Offline pushes (per recipient) the inbox could not store.",
                value=queue.lost,
            )


class LoopLag:
    """Probes the event loop: a sleep of `interval` that wakes late measures the lag."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.last = 0.0
        self.max = 0.0

    def take_max(self) -> float:
        value, self.max = self.max, self.last
        return value

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, loop.time() - start - self.interval)
            self.max = max(self.max, self.last)


class MetricsEndpoint:
    """A minimal HTTP/1.0 responder on the server's own loop: /metrics, /healthz, /readyz.

    Readiness is false while the server is draining (not accepting), so a load balancer
    stops sending new players before the listener closes.
    """

    def __init__(self, server: Server, timing: Timing) -> None:
        self.server = server
        self.loop_lag = LoopLag()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server, timing, self.loop_lag))
        self._listener: asyncio.Server | None = None
        self._lag_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._listener = await asyncio.start_server(self._handle, host, port)
        self._lag_task = asyncio.get_running_loop().create_task(self.loop_lag.run())
        bound = self._listener.sockets[0].getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._listener is not None:
            self._listener.close()

    def respond(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(self.registry), "text/plain; version=0.0.4"
        if path == "/healthz":
            return 200, b"ok\n", "text/plain"
        if path == "/readyz":
            if self.server.accepting:
                return 200, b"ready\n", "text/plain"
            return 503, b"draining\n", "text/plain"
        return 404, b"not found\n", "text/plain"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing here needs them
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body, ctype = 400, b"bad request\n", "text/plain"
            else:
                status, body, ctype = self.respond(parts[1].split("?", 1)[0])
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Unavailable"}
            head = (
                f"HTTP/1.0 {status} {reason[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if parts and parts[0] == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError) as exc:
            # ValueError: a request line longer than the reader's limit (64 KiB).
            log.debug("metrics request failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
