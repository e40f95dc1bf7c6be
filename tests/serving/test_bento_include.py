"""bentofile.yaml ships exactly the package files the service imports (static import closure of service.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.import_graph import REPO, SRC, closure

SERVICE = SRC / "m6rec" / "serving" / "service.py"
# What serving must never pull in: pandas-backed data code, the pipeline's stages, training, data checks.
HEAVY = ("pandas", "great_expectations", "m6rec.data", "m6rec.stages", "m6rec.training", "m6rec.evaluation",
         "m6rec.graph", "m6rec.orchestration")


def import_closure(start: Path) -> tuple[set[Path], set[str]]:
    return closure(start)


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
