"""The import rules between the top-level packages, read from the source with `ast` (nothing
checked is imported, so a broken or heavy module cannot hide a violation):

- `protocol` is the wire format alone: no asyncio, socket or uvloop, and neither side of a
  connection (server, client_sdk) nor tools, bench or examples;
- `client_sdk` never imports server, tools, bench or examples;
- `server` never imports tools, bench or examples;
- among the bench files only the package bench/serverside/ imports server: everything
  else in bench/ is a client and runs without the server's code.

Every import in a file counts: at the top, inside functions (a lazy import is still a
dependency, only a later one), and under `if TYPE_CHECKING:` too: a type-only import
ties the layer's signatures to the other layer and makes mypy load it, which is the
coupling these rules keep out. `importlib.import_module("name")` and `__import__("name")`
with a literal name count as well. Only direct imports are checked, not what the
imported modules import in turn.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rule:
    #: The package whose files the rule reads (a directory below ROOT).
    package: str
    #: Top-level modules (and everything below them) its files must not import.
    forbidden: tuple[str, ...]
    #: Directories below ROOT, inside `package`, whose files the rule does not read.
    exempt: tuple[str, ...] = ()


RULES = [
    Rule(
        "protocol",
        ("asyncio", "socket", "uvloop", "server", "client_sdk", "tools", "bench", "examples"),
    ),
    Rule("client_sdk", ("server", "tools", "bench", "examples")),
    Rule("server", ("tools", "bench", "examples")),
    Rule("bench", ("server",), exempt=("bench/serverside",)),
]


@dataclass(frozen=True)
class Import:
    line: int
    module: str
    type_checking: bool


def module_name(path: str) -> tuple[str, bool]:
    """The dotted name of the module at `path` (relative, with /), and whether it is a
    package's __init__."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, path: str) -> list[Import]:
    """Every module the source at `path` imports, wherever the import stands, relative
    imports resolved to absolute names."""
    module, is_package = module_name(path)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, True)
            for stmt in node.orelse:
                visit(stmt, type_checking)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(node.lineno, a.name, type_checking) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.append(Import(node.lineno, node.module, type_checking))
            else:
                base = package[: len(package) - (node.level - 1)]
                if node.module is not None:
                    found.append(Import(node.lineno, ".".join([*base, node.module]), type_checking))
                else:  # `from . import a, b`: each name may be a module
                    found.extend(
                        Import(node.lineno, ".".join([*base, a.name]), type_checking)
                        for a in node.names
                    )
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                found.append(Import(node.lineno, first.value, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(source, filename=path), False)
    return found


@dataclass(frozen=True)
class Violation:
    path: str
    rule: Rule
    imp: Import

    def __str__(self) -> str:
        where = " (under TYPE_CHECKING)" if self.imp.type_checking else ""
        top = self.imp.module.split(".")[0]
        return (
            f"{self.path}:{self.imp.line}: {self.rule.package} must not import {top!r}: "
            f"imports {self.imp.module}{where}"
        )


def violations(rule: Rule, path: str, source: str) -> list[Violation]:
    """The forbidden imports of the source at `path` (relative to ROOT, with /)."""
    if any(path == d or path.startswith(d + "/") for d in rule.exempt):
        return []
    return [
        Violation(path, rule, imp)
        for imp in imports_of(source, path)
        if imp.module.split(".")[0] in rule.forbidden
    ]


def files_of(package: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py"))


def violations_in_tree(rule: Rule) -> list[Violation]:
    found: list[Violation] = []
    for path in files_of(rule.package):
        found += violations(rule, path, (ROOT / path).read_text(encoding="utf-8"))
    return found


def rule_of(package: str) -> Rule:
    [rule] = [rule for rule in RULES if rule.package == package]
    return rule


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.package)
def test_packages_keep_their_import_rules(rule: Rule) -> None:
    assert files_of(rule.package), f"no Python files under {rule.package}/"
    found = violations_in_tree(rule)
    assert not found, "forbidden imports:\n" + "\n".join(map(str, found))


# -- the checker itself --------------------------------------------------------------------

SYNTHETIC = '''\
"""A module that breaks the protocol rule in every way the checker looks for."""
from __future__ import annotations

import asyncio
import socketserver
from typing import TYPE_CHECKING

from . import frame
from .. import server as relative_server

if TYPE_CHECKING:
    from client_sdk.client import AsyncClient
else:
    import json


def later() -> None:
    from server.app import App
    import importlib

    importlib.import_module("tools.cli")
'''


def test_the_checker_finds_every_kind_of_import() -> None:
    found = {(i.line, i.module, i.type_checking) for i in imports_of(SYNTHETIC, "protocol/x.py")}
    assert found == {
        (2, "__future__", False),
        (4, "asyncio", False),
        (5, "socketserver", False),
        (6, "typing", False),
        (8, "protocol.frame", False),
        (9, "server", False),  # `from .. import server` from protocol/: the top-level one
        (12, "client_sdk.client", True),
        (14, "json", False),  # the else branch of TYPE_CHECKING runs
        (18, "server.app", False),
        (19, "importlib", False),
        (21, "tools.cli", False),
    }


def test_the_checker_reports_file_line_and_import() -> None:
    found = violations(rule_of("protocol"), "protocol/x.py", SYNTHETIC)
    assert list(map(str, found)) == [
        "protocol/x.py:4: protocol must not import 'asyncio': imports asyncio",
        "protocol/x.py:9: protocol must not import 'server': imports server",
        "protocol/x.py:12: protocol must not import 'client_sdk': imports client_sdk.client"
        " (under TYPE_CHECKING)",
        "protocol/x.py:18: protocol must not import 'server': imports server.app",
        "protocol/x.py:21: protocol must not import 'tools': imports tools.cli",
    ]


def test_the_bench_rule_exempts_only_bench_serverside() -> None:
    bench = rule_of("bench")
    source = "def run() -> None:\n    from server import Server\n"
    assert violations(bench, "bench/serverside/app.py", source) == []
    assert list(map(str, violations(bench, "bench/serversides.py", source))) == [
        "bench/serversides.py:2: bench must not import 'server': imports server"
    ]
    assert violations(bench, "bench/load.py", "from .serverside import app\n") == []
