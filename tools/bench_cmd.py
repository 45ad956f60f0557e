"""`python -m tools.bench_cmd ARGS`, the command line docs/bench.md gives for `tickwire bench
ARGS` without the rest of the CLI. The command itself is the package tools/bench/."""

from __future__ import annotations

import sys

from tools.bench import main, register

__all__ = ["main", "register"]

if __name__ == "__main__":
    sys.exit(main())
