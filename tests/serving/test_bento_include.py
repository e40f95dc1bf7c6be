"""bentofile.yaml ships exactly the package files the service imports (static import closure of service.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SERVICE = SRC / "m6rec" / "serving" / "service.py"
PACKAGE = "m6rec"
# What serving must never pull in: pandas-backed data code, the pipeline's stages, training, data checks.
HEAVY = ("pandas", "great_expectations", "m6rec.data", "m6rec.stages", "m6rec.training", "m6rec.evaluation",
         "m6rec.graph", "m6rec.orchestration")


def _module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(file: Path) -> set[str]:
    """Every module ``file`` imports, at module level or inside functions (run-time paths such as the MLflow
    download count), except under ``if TYPE_CHECKING:``; ``from a import b`` yields ``a`` and, if it is a module,
    ``a.b``."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = ".".join(file.relative_to(SRC).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}"))
    return out


def import_closure(start: Path) -> tuple[set[Path], set[str]]:
    """(package files reachable from ``start``, with their packages' ``__init__.py``; every module imported)."""
    files: set[Path] = set()
    modules: set[str] = set()
    todo = [start]
    while todo:
        file = todo.pop()
        if file in files:
            continue
        files.add(file)
        for module in imported_modules(file):
            modules.add(module)
            if module != PACKAGE and not module.startswith(PACKAGE + "."):
                continue
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in files:
                    todo.append(found)
    for file in list(files):  # the service's own packages
        for parent in file.relative_to(SRC).parents:
            init = SRC / parent / "__init__.py"
            if parent.parts and init.is_file():
                files.add(init)
    return files, modules


def included_files() -> set[str]:
    include = yaml.safe_load((REPO / "bentofile.yaml").read_text(encoding="utf-8"))["include"]
    globs = [p for p in include if any(ch in p for ch in "*?[")]
    assert not globs, f"bentofile.yaml include must list files, not patterns: {globs}"
    return set(include)


def test_bentofile_includes_exactly_the_service_import_closure():
    files, _ = import_closure(SERVICE)
    needed = {str(f.relative_to(REPO)) for f in files}
    listed = {p for p in included_files() if p.endswith(".py")}
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing, f"bentofile.yaml include lacks files the service imports: {missing}"
    assert not extra, f"bentofile.yaml includes files the service does not import: {extra}"
    assert "params.yaml" in included_files()
    for path in listed:
        assert (REPO / path).is_file(), f"bentofile.yaml includes {path}, which does not exist"


def test_service_closure_is_light():
    files, modules = import_closure(SERVICE)
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"the service's import closure pulls in {heavy}: cut the dependency in serving code"
    assert {f.name for f in files} >= {"service.py", "bundle.py", "bundle_io.py", "scoring.py", "attention.py"}
    assert SRC / "m6rec" / "serving" / "export.py" not in files  # the exporter needs pandas; serving does not
