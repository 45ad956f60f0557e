"""Scenarios: load written as a Python function that uses the client SDK.

    tickwire bench scenario bench.scenarios:ping_echo --conns 20 --duration 5
    tickwire bench scenario my_load:chat --schema myapp.chat_pb2 --conns 20

A scenario is ``async def scenario(client: client_sdk.AsyncClient, ctx: ScenarioContext)
-> None``. Every connection (one `AsyncClient` each) calls it in a loop, closed-loop:
the next call starts when the previous one returned. One call is one "reply" of the
run: its latency (from the call to its return) goes into the same merged HdrHistogram as
echo's, it counts towards throughput over time and --requests, and the same progress
display shows it. An exception is an error (counted, the first few sampled) and the loop
goes on; `ConnectionClosed` ends that connection's loop (and is an error while the run
lasts). An exception raised before the call gave the event loop back (before its first
await that waits) ends the run at once, shown once: nothing reached the server, the
next call would fail the same way, and retrying would only spin the CPU.

MODULE is a dotted module name (importable from the current directory too) or a path
to a .py file; FUNC a coroutine function in it. Scenarios see `ctx.args`, the
``--arg KEY=VALUE`` pairs of the command line, for their own knobs.

The application's messages: every connection's client knows the protocol's own messages
and those of the schema, the generated ``_pb2`` modules named by ``--schema MODULE`` and
by the scenario module's ``SCHEMA`` (a sequence of such modules, or of their names).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import random
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from bench.load import (
    Driven,
    LoadTotals,
    RunParams,
    drive,
    now_us,
    quota_of,
    run_loops,
    summarize_driven,
    wait_for_start,
)
from bench.proc import Endpoint
from bench.progress import ProgressSink
from bench.results import EchoRun, WorkerEchoResult
from bench.workers import ERROR_SAMPLES, BenchError, Share, run_worker, split
from client_sdk import AsyncClient, ConnectionClosed
from protocol.errors import RegistryError
from protocol.registry import MessageRegistry, declared_id, system_registry

_CONNECT_TIMEOUT_S = 10.0
#: After the window: how long in-flight iterations may take to return before they are
#: cancelled (they are not counted either way).
_DRAIN_S = 5.0


class ScenarioContext:
    """What a scenario knows about where it runs. One per connection."""

    __slots__ = ("args", "conn", "host", "iteration", "port", "proc", "rng", "state")

    def __init__(
        self, *, conn: int, proc: int, host: str, port: int, args: dict[str, str], seed: int
    ) -> None:
        #: This connection's number over the whole run (0 .. conns-1).
        self.conn = conn
        #: The load-generator process it runs in (0 .. procs-1).
        self.proc = proc
        self.host = host
        self.port = port
        #: Calls of the scenario on this connection so far (0 on the first call).
        self.iteration = 0
        #: ``--arg KEY=VALUE`` pairs from the command line.
        self.args = args
        #: A random generator seeded per connection: runs are repeatable.
        self.rng = random.Random(seed)
        #: Scratch space kept across calls on this connection (a login, a room, ...).
        self.state: dict[str, Any] = {}


Scenario = Callable[[AsyncClient, ScenarioContext], Awaitable[None]]


class ScenarioError(BenchError):
    """MODULE:FUNC does not name a usable scenario."""


class ScenarioFailed(BenchError):
    """The scenario raised before it gave the event loop back: the run stops."""


class LoadedScenario(NamedTuple):
    func: Scenario
    #: The registry each connection's client gets: the protocol's messages and the schema's.
    registry: MessageRegistry


def load_scenario(
    spec: str, search_path: str | None = None, schema: Sequence[str] = ()
) -> LoadedScenario:
    """The coroutine function that ``MODULE:FUNC`` names, with its client registry.

    MODULE is a dotted name, found on sys.path with `search_path` (the directory the
    command ran in) in front, or a path to a .py file. `schema` names generated ``_pb2``
    modules (--schema); the scenario module's ``SCHEMA`` adds its own.
    """
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ScenarioError(f"scenario {spec!r} is not MODULE:FUNC")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ScenarioError(f"scenario file {module_name} does not exist")
            file_spec = importlib.util.spec_from_file_location(
                f"_tickwire_scenario_{path.stem}", path
            )
            if file_spec is None or file_spec.loader is None:
                raise ScenarioError(f"cannot load {module_name} as a Python module")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ScenarioError:
        raise
    except Exception as exc:
        raise ScenarioError(
            f"cannot import {module_name} for scenario {spec}: {type(exc).__name__}: {exc}"
        ) from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise ScenarioError(f"{module_name} has no {func_name!r}")
    if not inspect.iscoroutinefunction(func):
        raise ScenarioError(
            f"{spec} must be an async function (async def {func_name}(client, ctx)), "
            f"not {type(func).__name__}"
        )
    declared = getattr(module, "SCHEMA", ())
    if isinstance(declared, (str, ModuleType)) or not isinstance(declared, Sequence):
        raise ScenarioError(
            f"{module_name}.SCHEMA must be a list or tuple of _pb2 modules or module names"
        )
    modules = [_schema_module(item, f"{module_name}.SCHEMA") for item in declared]
    modules += [_schema_module(name, "--schema") for name in schema]
    try:
        registry = system_registry(modules)
    except RegistryError as exc:
        raise ScenarioError(f"the scenario's schema does not fit the protocol: {exc}") from None
    scenario: Scenario = func
    return LoadedScenario(scenario, registry)


def _schema_module(item: object, where: str) -> ModuleType:
    """One generated ``_pb2`` module of the schema, given as itself or by its dotted name."""
    if isinstance(item, str):
        try:
            module = importlib.import_module(item)
        except Exception as exc:
            raise ScenarioError(
                f"{where}: cannot import {item}: {type(exc).__name__}: {exc}"
            ) from exc
    elif isinstance(item, ModuleType):
        module = item
    else:
        raise ScenarioError(f"{where}: {item!r} is neither a module nor a module name")
    descriptor = getattr(module, "DESCRIPTOR", None)
    types = getattr(descriptor, "message_types_by_name", None)
    if types is None:
        raise ScenarioError(
            f"{where}: {module.__name__} is not a generated _pb2 module (protoc's Python "
            "output for a .proto file)"
        )
    if not any(declared_id(d) is not None for d in types.values()):
        raise ScenarioError(f"{where}: {module.__name__} declares no (tickwire.msg_id) message")
    return module


class ScenarioParams(RunParams, frozen=True, kw_only=True):
    #: MODULE:FUNC, with a file path MODULE made absolute.
    scenario: str
    args: dict[str, str] = {}
    #: --schema: generated _pb2 modules whose messages every connection's client knows.
    schema: list[str] = []
    #: The directory the command ran in: importable by the workers too.
    search_path: str | None = None
    seed: int = 0


def _first_conn(params: ScenarioParams, share: Share) -> int:
    """Number of the first connection of process `share.index`, over all processes."""
    return sum(split(params.conns, params.procs)[: share.index])


class _Turn:
    """Tells whether an awaited call gave the event loop back: armed with `call_soon`
    before the call, it has run by the call's end only if the loop had a turn."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def __call__(self) -> None:
        self.seen = True


async def _scenario_worker(
    pipe: Connection, share: Share, params: ScenarioParams
) -> WorkerEchoResult:
    func, registry = load_scenario(params.scenario, params.search_path, params.schema)
    totals = LoadTotals(quota_of(params, share))
    samples: list[str] = []
    gate = asyncio.Semaphore(max(1, share.connect_concurrency))
    call_soon = asyncio.get_running_loop().call_soon
    failed: list[str] = []

    async def connect() -> AsyncClient | None:
        async with gate:
            try:
                return await AsyncClient.connect(
                    share.host, share.port, registry, timeout=_CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                if len(samples) < ERROR_SAMPLES:
                    samples.append(f"connect: {type(exc).__name__}: {exc}")
                return None

    opened = await asyncio.gather(*(connect() for _ in range(share.conns)))
    clients = [c for c in opened if c is not None]
    first = _first_conn(params, share)
    contexts = [
        ScenarioContext(
            conn=first + i,
            proc=share.index,
            host=share.host,
            port=share.port,
            args=params.args,
            seed=params.seed * 1_000_003 + first + i,
        )
        for i in range(len(clients))
    ]
    pipe.send(("ready", len(clients)))
    window = await wait_for_start(pipe)
    if window is None:
        await asyncio.gather(*(c.close() for c in clients))
        raise BenchError("parent aborted the run")
    totals.open_window(window)

    def stop_run(ctx: ScenarioContext, exc: Exception) -> None:
        """The scenario failed without giving the loop back: every call would, and the
        loop would spin on them. End the run with what it raised, once."""
        if not failed:
            failed.append(
                f"scenario {params.scenario} raised before its first await on connection "
                f"{ctx.conn} (iteration {ctx.iteration}), so the run stops:\n"
                + "".join(traceback.format_exception(exc)).rstrip()
            )
        totals.running = False
        if totals.done is not None:
            totals.done.set()

    async def loop_one(client: AsyncClient, ctx: ScenarioContext) -> None:
        turn = _Turn()
        while totals.running:
            started = now_us()
            totals.sent += 1
            turn.seen = False
            handle = call_soon(turn)
            try:
                await func(client, ctx)
            except ConnectionClosed as exc:
                if totals.running:
                    totals.error(f"connection {ctx.conn} closed: {exc}")
                return
            except Exception as exc:
                if not turn.seen:
                    stop_run(ctx, exc)
                    return
                totals.error(f"{type(exc).__name__}: {exc}")
            else:
                totals.record(started, now_us())
                if ctx.iteration % 16 == 15:
                    await asyncio.sleep(0)  # a scenario that never waits on the server
            finally:
                handle.cancel()
            ctx.iteration += 1

    loops = [loop_one(c, ctx) for c, ctx in zip(clients, contexts, strict=True)]
    await run_loops(pipe, totals, window, loops, _DRAIN_S)
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()
    if failed:
        raise ScenarioFailed(failed[0])
    return totals.result(
        connections=len(clients),
        connect_errors=share.conns - len(clients),
        connect_samples=samples,
    )


def scenario_worker(pipe: Connection, share: Share, params: ScenarioParams) -> None:
    """Entry point of one scenario load-generator process."""
    run_worker(pipe, share.cpus, lambda: _scenario_worker(pipe, share, params))


def run_scenario(
    params: ScenarioParams,
    server: Endpoint,
    *,
    target: str,
    round_no: int = 1,
    client_cpus: list[int] | None = None,
    progress: ProgressSink | None = None,
) -> EchoRun:
    """One measured scenario run against a server that is already listening."""
    driven: Driven = drive(
        scenario_worker,
        params,
        server,
        client_cpus=client_cpus,
        progress=progress,
        label=f"{params.scenario} {target}",
    )
    return summarize_driven(
        driven,
        params=params,
        target=target,
        round_no=round_no,
        client_cpus=client_cpus,
        depth=1,
        size=0,
        mode="closed",
        scenario=params.scenario,
    )
