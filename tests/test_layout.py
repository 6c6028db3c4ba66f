"""The package's layout rules, checked on its source: no import cycle, no module
reaching into another's private members, and one module that writes responses."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinystream"


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def local_imports(tree: ast.Module) -> set[str]:
    """The tinystream modules a module imports, type-checking imports included."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinystream."):
            found.add((node.module or "").split(".")[1])
    return found


def test_no_import_cycle() -> None:
    graph = {name: local_imports(tree) for name, tree in modules().items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        if name in done or name not in graph:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def private_names(tree: ast.Module) -> set[str]:
    """Underscored names a module defines: functions, attributes, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


# Documented underscored names of the standard library.
STDLIB = {"_exit"}  # os._exit: leave a forked child, or exit at a second signal


def test_no_module_uses_another_modules_private_members() -> None:
    trees = modules()
    offences = []
    for name, tree in trees.items():
        own = private_names(tree) | STDLIB
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                # (``from . import _logging`` imports a private module of the
                # package, which is what private modules are for.)
                offences += [
                    f"{name} imports {alias.name} from {node.module}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
            ):
                offences.append(f"{name} uses .{node.attr} (line {node.lineno})")
    assert offences == []


WRITES = {"write", "writelines", "write_eof", "abort", "send", "send_with_data_passthrough"}


def test_only_the_writer_writes_responses() -> None:
    """``transport.write*``/``abort`` and h11's ``send*`` for a response: _writer.py only.

    (``testing.py`` is the client side and writes requests.)
    """
    offences = []
    for name, tree in modules().items():
        if name in ("_writer", "testing"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITES
            ):
                receiver = ast.unparse(node.func.value)
                if "transport" in receiver or "h11" in receiver:
                    offences.append(f"{name}: {receiver}.{node.func.attr} (line {node.lineno})")
    assert offences == []
    assert "writelines(" not in (PACKAGE / "_writer.py").read_text().replace(
        "``transport.writelines()``", ""
    )
