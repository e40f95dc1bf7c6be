"""Static import graph of src/m6rec (ast, every call: the layout may change without the tests changing).

Shared by the tests that hold code and configuration together: a stage's dvc.yaml deps and the bento's file list.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "m6rec"


def module_file(module: str) -> Path | None:
    """src/ file of an m6rec module (`pkg/__init__.py` for a package), None outside m6rec or if absent."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports anywhere (module or function level: run-time paths count), `from a import b`
    counting a.b when b is an m6rec module, and the parent packages importing runs first. Imports under
    `if TYPE_CHECKING:` never run and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if module_file(f"{target}.{alias.name}") is not None)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return with_parents - {this}


def closure(start: Path) -> tuple[set[Path], set[str]]:
    """(every m6rec file that importing `start` runs, start and package __init__s included; every module any of
    them imports, third-party ones too)."""
    files: set[Path] = set()
    modules: set[str] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        found = imported_modules(path)
        modules |= found
        todo.extend(f for f in map(module_file, found) if f is not None)
    for path in list(files):  # the file's own packages run too
        for parent in path.relative_to(SRC).parents:
            init = SRC / parent / "__init__.py"
            if parent.parts and init.is_file():
                files.add(init)
    return files, modules
