"""The committed protobuf code is exactly what the committed .proto files generate.

The _pb2 modules are committed so that installing tickwire needs no protoc; the price is
that an edit to a .proto without `make proto` would ship the old schema (and old IDs)
while the source claims the new one. This test is what makes that impossible.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.protogen import PROTO_DIRS, ROOT, generate, proto_sources

GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi")


def generated_files(root: Path) -> dict[str, Path]:
    """Generated files under every proto folder, keyed by their path relative to `root`."""
    return {
        f"{d}/{p.name}": p
        for d in PROTO_DIRS
        for pattern in GENERATED_PATTERNS
        for p in sorted((root / d).glob(pattern))
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("protogen")
    generate(out)
    return generated_files(out)


def test_every_proto_is_generated(fresh: dict[str, Path]) -> None:
    sources = proto_sources()
    assert sources, f"no .proto files found under {PROTO_DIRS}"
    for source in sources:
        folder = source.parent.relative_to(ROOT).as_posix()
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = f"{folder}/{source.stem}{suffix}"
            assert name in fresh, f"protoc produced no {name}"


def test_committed_files_match_sources(fresh: dict[str, Path]) -> None:
    committed = generated_files(ROOT)
    missing = sorted(fresh.keys() - committed.keys())
    assert not missing, f"{missing[0]} is not committed: run make proto"
    orphans = sorted(committed.keys() - fresh.keys())
    assert not orphans, (
        f"{orphans[0]} has no .proto source any more: delete it, then run make proto"
    )
    stale = [
        name for name in sorted(fresh) if fresh[name].read_bytes() != committed[name].read_bytes()
    ]
    assert not stale, (
        f"{stale[0]} is stale (differs from what its .proto generates): "
        f"run make proto (stale: {', '.join(stale)})"
    )
