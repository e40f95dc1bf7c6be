"""dvc.yaml and the code agree: every m6rec module a stage imports is one of its deps, and stages stay separate.

DVC reruns a stage only when one of its deps changes, so a module the stage imports but does not list can change
its output without a rerun. The imports are read statically (ast), from the stage's module down, every time: the
code layout may change without this file changing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from m6rec import dvcfiles
from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "m6rec"
STAGE_CMD = "python -m m6rec.stages."


def module_file(module: str) -> Path | None:
    """src/ file of an m6rec module (`pkg/__init__.py` for a package), None outside m6rec or if absent."""
    if module != "m6rec" and not module.startswith("m6rec."):
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
    """m6rec modules `path` imports anywhere (module or function level), `from a import b` counting a.b when b is
    a module. Imports under `if TYPE_CHECKING:` never run and are left out."""
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
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {m for m in with_parents if module_file(m) is not None} - {this}


def _runs_code(init: Path) -> bool:
    """A package __init__ that holds more than a docstring and constants can change what its importers do."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return any(not isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)) for node in tree.body)


def reached_files(start: Path) -> set[Path]:
    """Every src/m6rec file that importing `start` can run (start included); empty package __init__s left out."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(module_file(m) for m in imported_modules(path))
    return {p for p in seen if p.name != "__init__.py" or _runs_code(p)}


def _covered(path: str, deps: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def python_stages() -> list[dvcfiles.Stage]:
    return [s for s in dvcfiles.read_stages(REPO / "dvc.yaml") if s.cmd.strip().startswith(STAGE_CMD)]


def stage_modules() -> list[Path]:
    """Modules under src/m6rec/stages that are stages (they define main()), not shared helpers such as cli.py."""
    out = []
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(path)
    return out


def test_import_walk_sees_function_level_and_from_imports() -> None:
    """Control: pretrain imports tracking inside main() and `from m6rec import tracking` names a module."""
    reached = {p.relative_to(REPO).as_posix() for p in reached_files(PACKAGE / "stages" / "pretrain.py")}
    assert {"src/m6rec/stages/pretrain.py", "src/m6rec/tracking.py", "src/m6rec/config.py"} <= reached
    assert not any(p.endswith("__init__.py") for p in reached if p != "src/m6rec/__init__.py")


def test_every_stage_lists_the_m6rec_modules_it_imports() -> None:
    stages = python_stages()
    assert stages, "dvc.yaml has no `python -m m6rec.stages.<name>` stage"
    missing: dict[str, list[str]] = {}
    for stage in stages:
        module = stage.cmd.strip()[len("python -m "):].split()[0]
        start = module_file(module)
        assert start is not None, f"dvc.yaml stage '{stage.name}': {module} has no file under src/"
        files = sorted(p.relative_to(REPO).as_posix() for p in reached_files(start))
        gaps = [f for f in files if not _covered(f, stage.deps)]
        if gaps:
            missing[stage.name] = gaps
    if missing:
        pytest.fail("dvc.yaml deps miss m6rec modules the stage imports (add the file or its folder):\n"
                    + "\n".join(f"  {name}: {', '.join(files)}" for name, files in missing.items()), pytrace=False)


def test_no_stage_imports_another_stage() -> None:
    stages = {module_name(p) for p in stage_modules()}
    crossing = {}
    for path in stage_modules():
        others = sorted(m for m in imported_modules(path) if m in stages)
        if others:
            crossing[module_name(path)] = others
    if crossing:
        pytest.fail("stages import other stages (move the shared code into the library):\n"
                    + "\n".join(f"  {name}: {', '.join(others)}" for name, others in crossing.items()), pytrace=False)
