"""The one place that talks to MLflow: runs, metrics, artifacts, bundle models and the `m6rec` model registry.

Store: ``MLFLOW_TRACKING_URI`` when set (the documented override), else a sqlite database ``<tracking.db>``
(``mlflow.db``) in the project root with artifacts in ``<tracking.artifacts>`` (``mlartifacts/``) beside it. For a
sqlite store anywhere, new experiments put their artifacts next to the database file (``M6REC_ARTIFACT_ROOT``
overrides), so a test store in ``tmp_path`` keeps everything in ``tmp_path``. The caller hands over the
``tracking`` section of the params file it was run with (:class:`m6rec.config.TrackingParams`) to every function
that opens the store; functions that act on the active run use the store :func:`start_run` opened. ``mlflow``
itself is imported lazily (it takes seconds), so stages can import this module for free.

Runs go to experiment ``tracking.experiment`` and are tagged with the stage, the git commit and the data version
(:mod:`m6rec.provenance`; ``data_version`` is re-exported here for the stages).

A serving bundle (``m6rec.serving.bundle``) is logged as an MLflow 3 *LoggedModel* whose artifacts are the bundle
files plus a flavour-less ``MLmodel`` file, so it can be registered as a version of model ``m6rec`` and fetched
back with :func:`download_model` (``models:/m6rec@champion`` or ``models:/m6rec/3``). Promotion uses registry
*aliases* (``@champion``), not the stages removed in MLflow 3.

Failing fast: :func:`check_store` tells in seconds, without importing mlflow, whether the store can be used (a
tracking server answers its ``/health``; a sqlite file exists, or may be created, and is a database); the
``preflight`` stage and the service call it before any long work. A run ended by SIGTERM or SIGINT ends FAILED,
not RUNNING for ever (:func:`start_run` turns the signal into an exception inside the run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m6rec.config import TrackingParams
from m6rec.provenance import data_version, git_commit, project_root  # noqa: F401  (data_version: for the stages)
from m6rec.runtime import signals_raise
from m6rec.store_check import StoreError, check_uri, sqlite_path  # noqa: F401  (StoreError, sqlite_path: callers)

log = logging.getLogger(__name__)

REGISTERED_MODEL = "m6rec"
CHAMPION = "champion"
BUNDLE_MODEL_TYPE = "m6rec-bundle"

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


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


def tracking_uri(settings: TrackingParams, root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/<settings.db>`` (root: the project root)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root).resolve() if root is not None else project_root()
    return f"sqlite:///{root / settings.db}"


def artifact_root(uri: str, settings: TrackingParams) -> str | None:
    """Where new experiments keep artifacts: ``M6REC_ARTIFACT_ROOT``, ``<settings.artifacts>/`` beside a sqlite
    file, or ``None`` (let a tracking server decide)."""
    env = os.environ.get("M6REC_ARTIFACT_ROOT")
    if env:
        return Path(env).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / settings.artifacts).as_uri()
    return None


def check_store(settings: TrackingParams, *, must_exist: bool = False, timeout_s: float = 5.0) -> str:
    """Check, in seconds and without mlflow, that the store of ``settings`` can be used; returns its URI.

    See :func:`m6rec.store_check.check_uri`: a server must answer ``/health``; a sqlite file must be a database,
    and must exist when ``must_exist`` (a registry was expected there). Raises :class:`StoreError`.
    """
    return check_uri(tracking_uri(settings), must_exist=must_exist, timeout_s=timeout_s)


def _mlflow(settings: TrackingParams | None = None):
    """Import mlflow; with `settings`, point it at that store (tracking and registry)."""
    import mlflow

    if settings is not None:
        uri = tracking_uri(settings)
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    return mlflow


def _client(settings: TrackingParams | None = None):
    """A client of the store of `settings` (None: the store the active run was started in)."""
    mlflow = _mlflow(settings)
    return mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())


def _experiment_id(mlflow, settings: TrackingParams) -> str:
    """Id of experiment ``settings.experiment``, created with the artifact root above if missing."""
    exp = mlflow.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(settings.experiment,
                                    artifact_location=artifact_root(mlflow.get_tracking_uri(), settings))


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
              data_paths: Sequence[str | Path] | None = None, *, settings: TrackingParams) -> Iterator[str]:
    """Run context for one stage in the store and experiment of ``settings``; yields the run id.

    ``settings`` is the ``tracking`` section of the params file the stage was run with. Logs ``params`` flattened
    (``section.key``) and tags ``stage``, ``git_commit``, ``data_version`` (of ``data_paths``, default the stage's
    data deps in dvc.yaml) plus ``tags``. The run ends FAILED if the body raises, and also when the process gets
    SIGTERM or SIGINT meanwhile (:func:`m6rec.runtime.signals_raise`: exit code 128 + the signal).
    """
    mlflow = _mlflow(settings)
    all_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": data_version(stage=stage, paths=data_paths),
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    with signals_raise(f"stage {stage}: ending its MLflow run as FAILED"), \
            mlflow.start_run(experiment_id=_experiment_id(mlflow, settings), run_name=stage, tags=all_tags) as run:
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


def register_model(model_uri: str, name: str = REGISTERED_MODEL, tags: Mapping[str, Any] | None = None, *,
                   settings: TrackingParams) -> ModelVersionInfo:
    """Register ``model_uri`` (from :func:`log_model`) as a new version of ``name`` in the store of ``settings``."""
    mlflow = _mlflow(settings)
    mv = mlflow.register_model(model_uri, name, tags={str(k): str(v) for k, v in (tags or {}).items()})
    return get_version(name, mv.version, settings=settings)


def registered_model_exists(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> bool:
    """Whether the store of ``settings`` has registered model ``name`` (open the store only after
    :func:`check_store`: mlflow creates a missing sqlite file)."""
    from mlflow.exceptions import MlflowException

    try:
        _client(settings).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return False
        raise
    return True


def get_version(name: str, version: str | int, *, settings: TrackingParams) -> ModelVersionInfo:
    """One registered version (tags and aliases included)."""
    return _info(_client(settings).get_model_version(name, str(version)))


def get_alias(name: str = REGISTERED_MODEL, alias: str = CHAMPION, *,
              settings: TrackingParams) -> ModelVersionInfo | None:
    """The version holding ``alias`` (``None`` if the model or the alias does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return _info(_client(settings).get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(version: str | int, name: str = REGISTERED_MODEL, alias: str = CHAMPION, *,
              settings: TrackingParams) -> None:
    """Point ``alias`` at ``version`` (moving it off any other version)."""
    _client(settings).set_registered_model_alias(name, alias, str(version))


def resolve_model_uri(uri: str, *, settings: TrackingParams) -> ModelVersionInfo | None:
    """The registered version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``, else ``None``."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not m:
        return None
    name, alias, version = m.groups()
    if alias:
        found = get_alias(name, alias, settings=settings)
        if found is None:
            raise LookupError(f"model URI {uri}: registered model '{name}' has no alias '{alias}' "
                              f"in {tracking_uri(settings)}")
        return found
    return get_version(name, version, settings=settings)


def download_model(uri: str, dst: str | Path, *, settings: TrackingParams) -> Path:
    """Download a model's artifacts (e.g. ``models:/m6rec@champion``) into ``dst``; returns the local folder."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in server logs
    mlflow = _mlflow(settings)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
