"""Regenerate the committed protobuf code from the .proto files of PROTO_DIRS (`make proto`).

The generated modules are committed so that installing tickwire needs no protoc; a test
regenerates them into a temporary directory and compares, so the two never drift.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: Folders whose .proto files are compiled: the protocol's own, the example services'
#: (chat, served by `tickwire serve` by default; game; trade), the test application's,
#: and the fan-out bench app's (bench/serverside/fanout_app.py).
PROTO_DIRS = (
    "protocol/proto",
    "examples/chat",
    "examples/game",
    "examples/trade",
    "tests/proto",
    "bench/proto",
)


def proto_sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for d in PROTO_DIRS for p in (root / d).glob("*.proto"))


def generate(out_dir: Path, root: Path = ROOT) -> None:
    """Run protoc (from grpcio-tools) on every .proto source, writing _pb2.py and .pyi files."""
    from grpc_tools import protoc

    include = resources.files("grpc_tools") / "_proto"
    sources = [str(p.relative_to(root)) for p in proto_sources(root)]
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")


def main() -> int:
    generate(ROOT)
    print(f"regenerated {len(proto_sources())} proto files under {', '.join(PROTO_DIRS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
