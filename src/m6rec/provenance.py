"""Where a run's inputs came from: the git commit and the data version DVC recorded (read by m6rec.dvcfiles).

The *data version* of a stage is the md5 DVC recorded for its data inputs (`dvc.lock` outs/deps, `*.dvc` files),
or a content hash of the folders when DVC has no record of them. See :func:`data_version`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from m6rec import dvcfiles


def project_root() -> Path:
    """Project root: `M6REC_ROOT` if set, else the current directory (stages run from the repo root)."""
    return Path(os.environ.get("M6REC_ROOT", ".")).resolve()


# DVC's own records: `dvc repro` and `dvc add` rewrite them on every machine (a fresh clone's `make run` included),
# and the data_version tag already records what they say, so they do not make the code dirty.
_NOT_CODE = (":(exclude,glob)**/dvc.lock", ":(exclude,glob)**/*.dvc", ":(exclude,glob)**/.dvc/**")


def git_commit(root: str | Path | None = None) -> str:
    """`HEAD` commit of the repository at `root`, or `"unknown"`.

    `+dirty` is added only when a tracked file differs from `HEAD` (staged or not). Untracked and ignored files
    (DVC outputs, the MLflow store) do not count, nor do DVC's records (`dvc.lock`, `*.dvc`), which the pipeline
    itself rewrites.
    """
    root = Path(root) if root is not None else project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        # A stat-only change (a checkout's new mtimes) is refreshed away first, so only content counts.
        subprocess.run(["git", "update-index", "-q", "--refresh"], cwd=root, capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def dvc_records(root: str | Path) -> dict[str, str]:
    """path -> md5 for everything DVC recorded: outs and deps in dvc.lock, outs of every *.dvc file at `root`."""
    root = Path(root)
    records: dict[str, str] = {}
    for dvc_file in dvcfiles.dvc_files(root):
        records.update((r.path, r.md5) for r in dvcfiles.read_dvc_file(dvc_file))
    locked = dvcfiles.read_lock(root / dvcfiles.DVC_LOCK)
    for st in locked:  # outs are authoritative (the producer wrote them) ...
        records.update((r.path, r.md5) for r in st.outs)
    for st in locked:  # ... deps fill in inputs no stage produces (e.g. config files)
        for r in st.deps:
            records.setdefault(r.path, r.md5)
    return records


def _content_md5(path: Path) -> str:
    """md5 over the relative names and bytes of every file under `path` (fallback when DVC has no record)."""
    h = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def stage_data_deps(root: str | Path, stage: str) -> list[str]:
    """The data inputs of `stage` in `<root>/dvc.yaml`: deps that are not code (`src/` or `*.py`)."""
    dvc_yaml = Path(root) / dvcfiles.DVC_YAML
    if not dvc_yaml.is_file():
        return []
    found = next((s for s in dvcfiles.read_stages(dvc_yaml) if s.name == stage), None)
    if found is None:
        return []
    return [d for d in found.deps if not (d.startswith("src/") or d.endswith(".py"))]


def data_version(stage: str | None = None, paths: Sequence[str | Path] | None = None,
                 root: str | Path | None = None) -> str:
    """Version string of a stage's data inputs.

    `paths` (relative to `root`) or else the data deps of `stage` in `dvc.yaml`. Each path's md5 comes from DVC's
    records (`dvc.lock`, `*.dvc`) or, failing that, from hashing its content. One path gives its md5 (as DVC
    writes it, e.g. `...ab.dir`); several give the md5 of the sorted `path=md5` lines. `"unknown"` when there is
    nothing to hash.
    """
    root = Path(root).resolve() if root is not None else project_root()
    if paths is None:
        paths = stage_data_deps(root, stage) if stage else []
    paths = sorted({str(p).rstrip("/") for p in paths})
    if not paths:
        return "unknown"
    records = dvc_records(root)
    parts = []
    for p in paths:
        md5 = records.get(p)
        if md5 is None:
            target = root / p
            md5 = f"content:{_content_md5(target)}" if target.exists() else "missing"
        parts.append((p, md5))
    if len(parts) == 1:
        return parts[0][1]
    return hashlib.md5("\n".join(f"{p}={m}" for p, m in parts).encode()).hexdigest()
