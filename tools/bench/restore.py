"""`tickwire bench restore`: restart time with N sessions in a memory-store snapshot, and
their resumes over the wire (bench/restore.py)."""

from __future__ import annotations

import argparse
from typing import Any

from tools.bench import common


def register(kinds: Any) -> None:
    restore = kinds.add_parser(
        "restore",
        help="restart time with N sessions in a memory-store snapshot, and resumes",
        description="Make N sessions in a memory-store snapshot, start `tickwire serve` on "
        "it, time the start to 'listening' (and one without a snapshot), and resume a "
        "sample of the sessions over the wire with their tokens.",
    )
    restore.add_argument(
        "--sessions", type=common.positive_int, default=100_000, help="default: %(default)s"
    )
    restore.add_argument(
        "--sample",
        type=common.positive_int,
        default=200,
        help="sessions resumed over the wire per round (default: %(default)s)",
    )
    restore.add_argument(
        "--rounds",
        type=common.positive_int,
        default=3,
        help="starts with and without the snapshot (default: %(default)s)",
    )
    restore.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    common.add_json_arg(restore)
    restore.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from bench.restore import RestoreParams
    from bench.runner import RestoreOptions, bench_restore

    err = common.console(stderr=True)
    options = RestoreOptions(
        params=RestoreParams(sessions=args.sessions, sample=args.sample, rounds=args.rounds),
        host=args.host,
    )
    report = common.run_bench("restore", bench_restore, options, args, err)
    if report is None:
        return 2
    clean = (
        report.resumed == report.resume_sample
        and report.bogus_refused
        and report.restored_keys == report.snapshot_keys
    )
    if not clean:
        if report.restored_keys != report.snapshot_keys:
            err.print(
                f"[red]the server restored {report.restored_keys} keys of "
                f"{report.snapshot_keys}[/red]",
                highlight=False,
            )
        for sample in report.error_samples:
            err.print(f"  {escape(sample)}", highlight=False)
    return 0 if clean else 1
