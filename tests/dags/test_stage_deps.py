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
from tests.import_graph import REPO, SRC, closure, imported_modules, module_file, module_name

PACKAGE = SRC / "m6rec"
STAGE_CMD = "python -m m6rec.stages."


def _runs_code(init: Path) -> bool:
    """A package __init__ that holds more than a docstring and constants can change what its importers do."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return any(not isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)) for node in tree.body)


def reached_files(start: Path) -> set[Path]:
    """Every src/m6rec file that importing `start` can run (start included); empty package __init__s left out."""
    files, _ = closure(start)
    return {p for p in files if p.name != "__init__.py" or _runs_code(p)}


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
