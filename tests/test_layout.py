"""
The shape of the package, held by tests: no room too big to live in, the hub's core free of
the transport's libraries, and other libraries' private names in one module only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .process import REPO

PACKAGE = REPO / "telemetry_service"
MODULES = sorted(PACKAGE.rglob("*.py"))
SCRIPTS = sorted((PACKAGE / "http" / "static" / "js").glob("*.js"))
#: the one module that may name another library's private attributes (see its docstring)
FENCE = PACKAGE / "internals.py"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", MODULES + SCRIPTS, ids=_name)
def test_no_module_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 600


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_class_is_over_450_lines(path: Path) -> None:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= 450, node.name


#: the hub and what it is made of know a peer only through a protocol, and time only
#: through an injected clock: none imports a socket library, a database, or the reactor
CORE = [
    "hub.py",
    "intake.py",
    "connections.py",
    "dashboards.py",
    "refusals.py",
    "streams.py",
    "network.py",
    "replay.py",
    "history/memory.py",
    "vocabulary.py",
]
FOREIGN = ("autobahn", "txredisapi", "sqlite3", "twisted.internet")


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_transport_and_no_reactor(module: str) -> None:
    for node in ast.walk(_tree(PACKAGE / module)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            # declarations (IReactorTime for the clock) and Deferreds (what close() returns)
            # are not the reactor: neither does any I/O
            if name in ("twisted.internet.interfaces", "twisted.internet.defer"):
                continue
            assert not name.startswith(FOREIGN), f"{module} imports {name}"


def _defined_names() -> set[str]:
    """Every name the package defines or assigns anywhere: its own private names."""
    names: set[str] = set()
    for path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                # assigned: ours (a foreign private name assigned to is in the fence's list)
                names.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                names.update(
                    e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)
                )
    return names


def _fenced_names() -> set[str]:
    """The private names internals.py declares it uses (FOREIGN_PRIVATE_NAMES)."""
    for node in ast.walk(_tree(FENCE)):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FOREIGN_PRIVATE_NAMES" for t in node.targets
        ):
            return {ast.literal_eval(elt) for elt in getattr(node.value, "elts", [])}
    raise AssertionError("internals.py declares no FOREIGN_PRIVATE_NAMES")


def test_only_internals_names_another_library_s_private_attributes() -> None:
    """
    A private name read from an object (C{x._name}) that the package itself never defines
    belongs to another library; so does any name internals.py lists as such. Either may be
    used in internals.py only, where it is probed at start-up with a public fallback.
    """
    ours = _defined_names()
    fenced = _fenced_names()
    found = []
    for path in MODULES:
        if path == FENCE:
            continue
        for node in ast.walk(_tree(path)):
            name = None
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                if not node.attr.startswith("__") and (
                    node.attr in fenced or node.attr not in ours
                ):
                    name = node.attr
            elif isinstance(node, ast.ImportFrom) and node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                foreign = not node.module.startswith(("telemetry_service", "__future__"))
                if foreign and (private or any(p.startswith("_") for p in node.module.split("."))):
                    name = node.module
            elif isinstance(node, ast.Constant) and node.value in fenced:
                name = str(node.value)
            if name is not None:
                found.append(f"{_name(path)}:{node.lineno}: {name}")
    assert found == []


def test_the_fence_sees_a_private_name_used_elsewhere(tmp_path: Path) -> None:
    """The check above is not blind: a module reading a foreign private name is caught."""
    probe = ast.parse("def f(transport):\n    return transport._tempDataBuffer\n")
    attributes = [n.attr for n in ast.walk(probe) if isinstance(n, ast.Attribute)]
    assert attributes == ["_tempDataBuffer"]
    assert "_tempDataBuffer" in _fenced_names()
    assert "_tempDataBuffer" not in _defined_names() - _fenced_names()
