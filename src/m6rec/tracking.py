"""The one place that talks to MLflow: runs, metrics, artifacts, bundle models and the `m6rec` model registry.

Store: ``MLFLOW_TRACKING_URI`` when set, else a sqlite database ``mlflow.db`` in the project root with artifacts in
``mlartifacts/`` beside it (both git-ignored). For a sqlite store anywhere, new experiments put their artifacts in
``mlartifacts/`` next to the database file (``M6REC_ARTIFACT_ROOT`` overrides), so a test store in ``tmp_path`` keeps
everything in ``tmp_path``. Names come from the ``tracking`` section of params.yaml when there is one
(:class:`TrackingParams`). Nothing is configured at import: every public function resolves the URI when called,
and ``mlflow`` itself is imported lazily (it takes seconds), so stages can import this module for free.

Runs go to experiment ``m6rec`` (``tracking.experiment``). Each run is tagged with the stage, the git commit and
the *data version*: the md5 that DVC recorded for the stage's data inputs (``dvc.lock`` outs/deps, ``*.dvc``
files), or a content hash of the folders when DVC has no record of them. See :func:`data_version`.

A serving bundle (``m6rec.serving.bundle``) is logged as an MLflow 3 *LoggedModel* whose artifacts are the bundle
files plus a flavour-less ``MLmodel`` file, so it can be registered as a version of model ``m6rec`` and fetched
back with :func:`download_model` (``models:/m6rec@champion`` or ``models:/m6rec/3``). Promotion uses registry
*aliases* (``@champion``), not the stages removed in MLflow 3.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from m6rec.config import load_params, section

log = logging.getLogger(__name__)

EXPERIMENT = "m6rec"
REGISTERED_MODEL = "m6rec"
CHAMPION = "champion"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
BUNDLE_MODEL_TYPE = "m6rec-bundle"

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = EXPERIMENT  # MLflow experiment every stage logs its run to
    db: str = DEFAULT_DB  # sqlite store in the project root, used when MLFLOW_TRACKING_URI is unset
    artifacts: str = DEFAULT_ARTIFACTS  # artifact folder beside a sqlite store (M6REC_ARTIFACT_ROOT overrides)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version as the rest of m6rec sees it (no MLflow types leak out)."""

    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


# ----------------------------------------------------------------------------------------------- store set-up


def project_root() -> Path:
    """Project root: ``M6REC_ROOT`` if set, else the current directory (stages run from the repo root)."""
    return Path(os.environ.get("M6REC_ROOT", ".")).resolve()


def settings() -> TrackingParams:
    """The ``tracking`` section of ``M6REC_PARAMS`` (default ``<project root>/params.yaml``); defaults without one."""
    path = Path(os.environ.get("M6REC_PARAMS") or project_root() / "params.yaml")
    return _settings(str(path.resolve()), path.stat().st_mtime if path.is_file() else 0.0)


@functools.lru_cache(maxsize=8)
def _settings(path: str, mtime: float) -> TrackingParams:
    if not mtime:
        return TrackingParams()
    params = load_params(path)
    return section(params, "tracking", TrackingParams) if "tracking" in params else TrackingParams()


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/<tracking.db>`` (``mlflow.db``)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root).resolve() if root is not None else project_root()
    return f"sqlite:///{root / settings().db}"


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep artifacts: ``M6REC_ARTIFACT_ROOT``, ``mlartifacts/`` beside a sqlite file, or
    ``None`` (let a tracking server decide)."""
    env = os.environ.get("M6REC_ARTIFACT_ROOT")
    if env:
        return Path(env).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / settings().artifacts).as_uri()
    return None


def _mlflow():
    """Import mlflow and point it at the current store (tracking and registry)."""
    import mlflow

    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    return mlflow


def _client():
    mlflow = _mlflow()
    return mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())


def experiment_id(name: str | None = None) -> str:
    """Id of experiment ``name`` (default ``tracking.experiment``), created with the artifact root above if missing."""
    mlflow = _mlflow()
    name = name or settings().experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root(mlflow.get_tracking_uri()))


# ------------------------------------------------------------------------------------------ provenance tags


def git_commit(root: str | Path | None = None) -> str:
    """``HEAD`` commit of the repository at ``root`` (``+dirty`` if the tree has changes), or ``"unknown"``."""
    root = Path(root) if root is not None else project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def _dvc_records(root: Path) -> dict[str, str]:
    """path -> md5 for everything DVC recorded: outs and deps in dvc.lock, outs of every *.dvc file at the root."""
    records: dict[str, str] = {}

    def add(entries: Sequence[Mapping[str, Any]] | None, overwrite: bool) -> None:
        for e in entries or ():
            if isinstance(e, Mapping) and "path" in e and "md5" in e and (overwrite or e["path"] not in records):
                records[str(e["path"]).rstrip("/")] = str(e["md5"])

    for dvc_file in sorted(p for p in root.glob("*.dvc") if p.is_file()):  # not the .dvc/ folder
        add((yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs"), overwrite=True)
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}
        for st in stages.values():  # outs are authoritative (the producer wrote them) ...
            add(st.get("outs"), overwrite=True)
        for st in stages.values():  # ... deps fill in inputs no stage produces (e.g. config files)
            add(st.get("deps"), overwrite=False)
    return records


def _content_md5(path: Path) -> str:
    """md5 over the relative names and bytes of every file under ``path`` (fallback when DVC has no record)."""
    h = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _stage_data_deps(root: Path, stage: str) -> list[str]:
    """The data inputs of ``stage`` in dvc.yaml: deps that are not code (``src/`` or ``*.py``)."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}
    deps = (stages.get(stage) or {}).get("deps", []) or []
    out = []
    for d in deps:
        p = str(d).rstrip("/")
        if not (p.startswith("src/") or p.endswith(".py")):
            out.append(p)
    return out


def data_version(stage: str | None = None, paths: Sequence[str | Path] | None = None,
                 root: str | Path | None = None) -> str:
    """Version string of a stage's data inputs.

    ``paths`` (relative to ``root``) or else the data deps of ``stage`` in ``dvc.yaml``. Each path's md5 comes from
    DVC's records (``dvc.lock``, ``*.dvc``) or, failing that, from hashing its content. One path gives its md5
    (as DVC writes it, e.g. ``...ab.dir``); several give the md5 of the sorted ``path=md5`` lines. ``"unknown"``
    when there is nothing to hash.
    """
    root = Path(root).resolve() if root is not None else project_root()
    if paths is None:
        paths = _stage_data_deps(root, stage) if stage else []
    paths = sorted({str(p).rstrip("/") for p in paths})
    if not paths:
        return "unknown"
    records = _dvc_records(root)
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


# ----------------------------------------------------------------------------------------------- run logging


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"a.b": "value"}``; lists/tuples as JSON; values cut to MLflow's 6000 characters."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
            continue
        if isinstance(value, (list, tuple)):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        flat[metric_name(name)] = text[:_MAX_PARAM_LEN]
    return flat


def metric_name(name: str) -> str:
    """A name MLflow accepts: ``@`` -> ``_at_``, any other character outside ``[A-Za-z0-9_-. /]`` -> ``_``."""
    return _BAD_NAME_CHARS.sub("_", str(name).replace("@", "_at_"))


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{domain: {model: {split: {metric: v}}}}`` (any depth) -> ``{"domain.model.split.metric": v}``.

    Names go through :func:`metric_name`. Booleans, strings and None are skipped (they are not metrics).
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        elif isinstance(value, (int, float)) or hasattr(value, "__float__"):
            flat[metric_name(name)] = float(value)
        else:
            raise TypeError(f"metric '{name}' has a non-numeric value of type {type(value).__name__}")
    return flat


@contextlib.contextmanager
def start_run(stage: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None,
              data_paths: Sequence[str | Path] | None = None) -> Iterator[str]:
    """Run context for one stage; yields the run id.

    Experiment ``tracking.experiment`` (default ``m6rec``). Logs ``params`` flattened (``section.key``) and tags
    ``stage``, ``git_commit``, ``data_version`` (of ``data_paths``, default the stage's data deps in dvc.yaml) plus
    ``tags``. The run ends FAILED if the body raises.
    """
    mlflow = _mlflow()
    all_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": data_version(stage=stage, paths=data_paths),
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    with mlflow.start_run(experiment_id=experiment_id(), run_name=stage, tags=all_tags) as run:
        flat = flatten_params(params)
        if flat:
            mlflow.log_params(flat)
        log.info("MLflow run %s (stage %s) in %s", run.info.run_id, stage, mlflow.get_tracking_uri())
        yield run.info.run_id


def _active_run_required(mlflow) -> None:
    if mlflow.active_run() is None:
        raise RuntimeError("no active MLflow run: call this inside `with tracking.start_run(...)`")


def log_epoch(metrics: Mapping[str, float], step: int) -> None:
    """Per-epoch training figures (loss, valid ndcg, ...) at ``step``."""
    log_metrics(metrics, step=step)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Flat or nested metrics (see :func:`flatten_metrics`) on the active run. NaN/inf values are skipped."""
    mlflow = _mlflow()
    _active_run_required(mlflow)
    flat = {k: v for k, v in flatten_metrics(metrics).items() if math.isfinite(v)}
    if flat:
        mlflow.log_metrics(flat, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags on the active run."""
    mlflow = _mlflow()
    _active_run_required(mlflow)
    mlflow.set_tags({str(k): str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole folder as artifact(s) of the active run."""
    mlflow = _mlflow()
    _active_run_required(mlflow)
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        raise FileNotFoundError(f"cannot log artifact: {path} does not exist")


# ---------------------------------------------------------------------------------------- models and registry


def log_model(bundle_dir: str | Path, name: str, tags: Mapping[str, Any] | None = None) -> str:
    """Log a serving-bundle folder as a LoggedModel of the active run; returns its URI ``models:/<model_id>``.

    The model's artifacts are the bundle files plus an ``MLmodel`` file (no flavour: m6rec loads the folder with
    ``m6rec.serving.bundle.load_bundle`` after :func:`download_model`).
    """
    mlflow = _mlflow()
    _active_run_required(mlflow)
    from mlflow.models.model import MLMODEL_FILE_NAME, Model

    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise FileNotFoundError(f"bundle folder not found: {bundle_dir}")
    client = _client()
    model = mlflow.initialize_logged_model(name=name, model_type=BUNDLE_MODEL_TYPE,
                                           tags={str(k): str(v) for k, v in (tags or {}).items()})
    try:
        client.log_model_artifacts(model.model_id, str(bundle_dir))
        with tempfile.TemporaryDirectory() as tmp:
            spec = Model(artifact_path=name, run_id=model.source_run_id, model_id=model.model_id,
                         metadata={"format": BUNDLE_MODEL_TYPE, "loader": "m6rec.serving.bundle.load_bundle"})
            spec.save(os.path.join(tmp, MLMODEL_FILE_NAME))
            client.log_model_artifact(model.model_id, os.path.join(tmp, MLMODEL_FILE_NAME))
    except Exception:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


def _info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id,
                            tags=dict(mv.tags or {}), aliases=tuple(getattr(mv, "aliases", ()) or ()))


def register_model(model_uri: str, name: str = REGISTERED_MODEL,
                   tags: Mapping[str, Any] | None = None) -> ModelVersionInfo:
    """Register ``model_uri`` (from :func:`log_model`) as a new version of ``name``."""
    mlflow = _mlflow()
    mv = mlflow.register_model(model_uri, name, tags={str(k): str(v) for k, v in (tags or {}).items()})
    return get_version(name, mv.version)


def get_version(name: str, version: str | int) -> ModelVersionInfo:
    """One registered version (tags and aliases included)."""
    return _info(_client().get_model_version(name, str(version)))


def get_alias(name: str = REGISTERED_MODEL, alias: str = CHAMPION) -> ModelVersionInfo | None:
    """The version holding ``alias`` (``None`` if the model or the alias does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return _info(_client().get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(version: str | int, name: str = REGISTERED_MODEL, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version`` (moving it off any other version)."""
    _client().set_registered_model_alias(name, alias, str(version))


def set_version_tags(version: str | int, tags: Mapping[str, Any], name: str = REGISTERED_MODEL) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), str(k), str(v))


def resolve_model_uri(uri: str) -> ModelVersionInfo | None:
    """The registered version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``, else ``None``."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not m:
        return None
    name, alias, version = m.groups()
    if alias:
        found = get_alias(name, alias)
        if found is None:
            raise LookupError(f"model URI {uri}: registered model '{name}' has no alias '{alias}' "
                              f"in {tracking_uri()}")
        return found
    return get_version(name, version)


def download_model(uri: str, dst: str | Path) -> Path:
    """Download a model's artifacts (e.g. ``models:/m6rec@champion``) into ``dst``; returns the local folder."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in server logs
    mlflow = _mlflow()
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
