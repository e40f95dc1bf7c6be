"""The one reader of DVC's files: `dvc.yaml` stages, `dvc.lock` records and `*.dvc` files, as plain dataclasses.

Standard library and PyYAML only (no DVC import), so the Airflow DAGs can parse the pipeline cheaply. Paths are
normalised posix paths; a templated path (`${...}`) is cut to its literal folder prefix and dropped if it has none.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"


class DvcFileError(ValueError):
    """A DVC file is missing or is not shaped as DVC writes it."""


@dataclass(frozen=True)
class Stage:
    """One `dvc.yaml` stage (a foreach/matrix stage counts once: `dvc repro <name>` runs all its items)."""

    name: str
    cmd: str
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # keys of params.yaml ("evaluate.ks", "register"); other files as "file:key"
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[str, ...]:
        """Everything the stage writes: outs, metrics and plots."""
        return self.outs + self.metrics + self.plots


@dataclass(frozen=True)
class Record:
    """A path with the md5 DVC recorded for it (`...dir` for a folder)."""

    path: str
    md5: str


@dataclass(frozen=True)
class LockedStage:
    name: str
    deps: tuple[Record, ...]
    outs: tuple[Record, ...]


def norm_path(path: str) -> str | None:
    """Normalised posix path; a templated path is cut to its literal folder prefix, None if nothing is left."""
    if "${" in path:
        path = path.split("${", 1)[0].rsplit("/", 1)[0]
    path = posixpath.normpath(path.strip()) if path.strip() else ""
    return None if path in ("", ".") else path


def _paths(entries: Any) -> tuple[str, ...]:
    """Paths of a deps/outs/metrics/plots list whose entries are strings or {path: options} mappings."""
    out = []
    for entry in entries or []:
        names = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else []
        out.extend(p for p in (norm_path(str(n)) for n in names) if p)
    return tuple(out)


def _params(entries: Any) -> tuple[str, ...]:
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, Mapping):  # {other.yaml: [keys]}
            for file, keys in entry.items():
                out.extend(f"{file}:{k}" for k in (keys or []))
        else:
            out.append(str(entry))
    return tuple(out)


def _cmd(cmd: Any) -> str:
    return " && ".join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd or "")


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise DvcFileError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    return doc


def read_stages(dvc_yaml: str | Path) -> list[Stage]:
    """Stages of `dvc_yaml` in file order; DvcFileError if the file does not exist."""
    path = Path(dvc_yaml)
    if not path.is_file():
        raise DvcFileError(f"{path} not found: the pipeline is defined there")
    stages = []
    for name, body in (_load(path).get("stages") or {}).items():
        body = body or {}
        spec = body.get("do", body)  # foreach stages keep cmd/deps/outs under `do`
        stages.append(Stage(name=str(name), cmd=_cmd(spec.get("cmd")), deps=_paths(spec.get("deps")),
                            outs=_paths(spec.get("outs")), params=_params(spec.get("params")),
                            metrics=_paths(spec.get("metrics")), plots=_paths(spec.get("plots"))))
    return stages


def _records(entries: Any) -> tuple[Record, ...]:
    return tuple(Record(str(e["path"]).rstrip("/"), str(e["md5"])) for e in entries or ()
                 if isinstance(e, Mapping) and "path" in e and "md5" in e)


def read_lock(dvc_lock: str | Path) -> list[LockedStage]:
    """Stages recorded in `dvc_lock` (entries without an md5 are left out); [] when the file does not exist."""
    path = Path(dvc_lock)
    if not path.is_file():
        return []
    stages = _load(path).get("stages") or {}
    return [LockedStage(str(name), _records((st or {}).get("deps")), _records((st or {}).get("outs")))
            for name, st in stages.items()]


def read_dvc_file(path: str | Path) -> tuple[Record, ...]:
    """The outs recorded in one `.dvc` file (e.g. `data.dvc` for data/raw)."""
    return _records(_load(Path(path)).get("outs"))


def dvc_files(root: str | Path) -> list[Path]:
    """The `*.dvc` files at `root`, sorted (not DVC's own `.dvc/` folder)."""
    return sorted(p for p in Path(root).glob("*.dvc") if p.is_file())
