"""Shared fixtures. `tiny_project`: a throw-away copy of the project on a tiny slice of the real data.

Stage owners: add the params that make your stage fast to TINY_OVERRIDES (dotted keys, "section.key"). An override
is applied only when its section exists in params.yaml (so a stage still being written does not break anyone),
and a key missing from an existing section is an error (a renamed key must not silently make the tiny runs slow).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY_DOMAINS = ["ml-latest-small", "amazon-office"]

TINY_OVERRIDES: dict[str, Any] = {
    "data.datasets": TINY_DOMAINS,
    # the one domain list (every stage's is resolved from it): the finetune target stays out of multi-task training
    "domains": {"ml-latest-small": {}, "amazon-office": {"finetune": True}},
    "prepare.max_users": 30,
    "baselines.gfcf_k": 8,
    "baselines.mf_epochs": 2,
    "baselines.mf_eval_every": 1,
    "baselines.itemknn_neighbours": 20,
    "baselines.svd_dim": 8,
    "baselines.mf_dim": 8,
    "baselines.als_dim": 4,
    "baselines.als_iterations": 2,
    "text_embeddings.only_interacted": True,
    "pretrain.epochs": 2,
    "pretrain.eval_every": 1,
    "pretrain.embedding_dim": 16,
    "pretrain.num_layers": 2,
    "multitask.train.epochs": 1,
    "multitask.max_len": 20,
    "multitask.n_interests": 2,
    "multitask.hidden": 16,
    "multitask.train.valid_users": 0,
    "finetune.fractions": [0.5, 1.0],
    "finetune.train.epochs": 1,
    "finetune.train.examples_per_user": 5,
    "seqrec.epochs": 1,
    "seqrec.finetune_epochs": 1,
    "seqrec.dim": 16,
    "seqrec.layers": 1,
    "seqrec.n_experts": 2,
    "seqrec.max_len": 20,
    "seqrec.valid_users": 0,
    "airflow.retries": 0,
}


def data_mirror() -> Path:
    """$M6REC_DATA_MIRROR, else shared/data beside the repository (read-only mirror of the real datasets)."""
    return Path(os.environ.get("M6REC_DATA_MIRROR") or REPO.parent / "shared" / "data")


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``section.key`` or ``section.sub.key``; a dotless key replaces a top-level key) in params (in place), skipping sections that do
    not exist yet."""
    for dotted, value in overrides.items():
        if "." not in dotted:  # a whole top-level key (the `domains` list)
            if dotted not in params:
                raise KeyError(f"tests/conftest.py TINY_OVERRIDES['{dotted}']: params.yaml has no key '{dotted}'")
            params[dotted] = copy.deepcopy(value)
            continue
        name, *path, key = dotted.split(".")
        if name not in params:
            continue
        sec = params[name] if params[name] is not None else {}
        params[name] = sec
        for part in path:
            sec = sec.get(part)
            if not isinstance(sec, dict):
                raise KeyError(f"tests/conftest.py TINY_OVERRIDES['{dotted}']: params.yaml has no mapping "
                               f"'{name}.{part}' (renamed?)")
        if key not in sec:
            raise KeyError(f"tests/conftest.py TINY_OVERRIDES['{dotted}']: params.yaml has no key '{dotted}' "
                           f"(renamed?); keys there: {sorted(sec)}")
        sec[key] = copy.deepcopy(value)  # no YAML anchors between sections
    return params


def tiny_env(project: Path, **extra: str) -> dict[str, str]:
    """Environment for commands run in a tiny project: the venv first on PATH, offline, the local mirror."""
    env = dict(os.environ)
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "M6REC_OFFLINE": "1",
        "M6REC_DATA_MIRROR": str(data_mirror()),
        "M6REC_PROJECT_DIR": str(project),
        "M6REC_THREADS": env.get("M6REC_THREADS", "1"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run_in(project: Path, *cmd: str, env: dict[str, str] | None = None, timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in `project`; on failure the assertion shows its output."""
    res = subprocess.run(cmd, cwd=project, env=env or tiny_env(project), capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n--- stdout\n{res.stdout[-4000:]}\n"
                             f"--- stderr\n{res.stderr[-6000:]}")
    return res


def build_tiny_project(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """dvc.yaml, params.yaml (+ overrides), config/, bentofile.yaml, `src` symlinked, DVC initialised without git,
    raw data of TINY_DOMAINS from the mirror through the download stage, tracked by data.dvc."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "bentofile.yaml"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "config", root / "config")
    (root / "src").symlink_to(REPO / "src", target_is_directory=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = apply_overrides(params, {**TINY_OVERRIDES, **(overrides or {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    mirror = data_mirror()
    if not all((mirror / d).is_dir() for d in TINY_DOMAINS):
        pytest.fail(f"data mirror {mirror} lacks {TINY_DOMAINS} (set $M6REC_DATA_MIRROR)")
    py, dvc = str(VENV_BIN / "python"), str(VENV_BIN / "dvc")
    run_in(root, dvc, "init", "--no-scm", "-q")
    run_in(root, py, "-m", "m6rec.stages.download", "--offline", "--mirror", str(mirror))
    run_in(root, dvc, "add", "-q", "data/raw")
    # The project keeps the record at the root as data.dvc (`path: data/raw`); dvc 3 writes data/raw.dvc.
    record = yaml.safe_load((root / "data" / "raw.dvc").read_text(encoding="utf-8"))
    record["outs"][0]["path"] = "data/raw"
    (root / "data.dvc").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    (root / "data" / "raw.dvc").unlink()
    return root


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project (see build_tiny_project). Shared by the whole session: treat it as read-only and copy it
    (`tiny_project_copy`) before running stages that write into it."""
    return build_tiny_project(tmp_path_factory.mktemp("tiny") / "project")


@pytest.fixture
def tiny_project_copy(tiny_project: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Factory: a private copy of the tiny project under tmp_path (symlinks kept), safe to run and modify."""

    def copy(name: str = "project") -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_project, dst, symlinks=True)
        return dst

    return copy
