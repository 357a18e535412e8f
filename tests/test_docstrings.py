"""Every module, public class and public function of nswarm says what it is for in a docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nswarm

PACKAGE = Path(nswarm.__file__).resolve().parent
#: Twisted's own method names (connectionMade, buildProtocol, ...): documented by the interfaces they implement.
TWISTED_NAME = re.compile(r"^[a-z]+[A-Z]")


def undocumented() -> list[str]:
    missing = []
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text())
        where = source.relative_to(PACKAGE.parent)
        if ast.get_docstring(tree) is None:
            missing.append(f"{where}: the module")
        for node in tree.body:
            missing += _check(node, where, "")
    return missing


def _check(node: ast.AST, where: Path, owner: str) -> list[str]:
    if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    name = node.name
    if name.startswith("_") or (owner and TWISTED_NAME.match(name)):
        return []
    if any(isinstance(d, ast.Name) and d.id == "overload" for d in getattr(node, "decorator_list", [])):
        return []
    found = [] if ast.get_docstring(node) else [f"{where}:{node.lineno}: {owner}{name}"]
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            found += _check(child, where, f"{name}.")
    return found


def test_every_public_class_and_function_has_a_docstring() -> None:
    assert undocumented() == []
