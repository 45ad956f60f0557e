"""`tickwire bench scenario MODULE:FUNC`: a load written with the client SDK, with the
application's schema (bench/scenario.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    scenario = kinds.add_parser(
        "scenario",
        help="a load written as an async Python function using the client SDK",
        description="Call `async def FUNC(client, ctx)` in a loop on every connection "
        "(closed loop); each call is one measured iteration. See docs/bench.md.",
    )
    scenario.add_argument(
        "spec",
        metavar="MODULE:FUNC",
        help="e.g. bench.scenarios:ping_echo; MODULE may be a path to a .py file",
    )
    common.add_load_args(scenario, conns=20)
    scenario.add_argument(
        "--arg",
        type=common.key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the scenario as ctx.args[KEY] (repeatable)",
    )
    scenario.add_argument(
        "--seed", type=int, default=0, help="seeds ctx.rng of every connection (default: 0)"
    )
    scenario.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="MODULE",
        help="a generated _pb2 module of the application's messages, e.g. myapp.chat_pb2: "
        "every connection's client can send and receive them (repeatable; a scenario "
        "module's SCHEMA list adds its own)",
    )
    common.add_server_args(scenario)
    scenario.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.runner import ScenarioOptions, bench_scenario
    from bench.scenario import ScenarioParams, load_scenario
    from bench.workers import BenchError

    err = common.console(stderr=True)
    problem = (
        common.check_server_args(args) or common.check_plot(args) or common.window_problem(args)
    )
    spec = args.spec
    module, sep, func = spec.rpartition(":")
    if sep and (module.endswith(".py") or os.sep in module):
        spec = f"{Path(module).resolve()}:{func}"
    if problem is None:
        try:
            load_scenario(spec, os.getcwd(), args.schema)
        except BenchError as exc:
            problem = str(exc)
    if problem:
        return common.refuse(err, "scenario", problem)
    options = ScenarioOptions(
        params=ScenarioParams(
            **common.run_fields(args),
            scenario=spec,
            args=dict(args.arg),
            schema=list(args.schema),
            search_path=os.getcwd(),
            seed=args.seed,
        ),
        server=common.server_options(args),
    )
    report = common.run_bench("scenario", bench_scenario, options, args, err)
    return common.finish_load("scenario", report, args, err)
