"""The one place that talks to MLflow runs: the store, runs, params, metrics and artifacts.

Store: ``MLFLOW_TRACKING_URI`` when set (the documented override), else a sqlite database ``<tracking.db>``
(``mlflow.db``) in the project root with artifacts in ``<tracking.artifacts>`` (``mlartifacts/``) beside it. For a
sqlite store anywhere, new experiments put their artifacts next to the database file (``M6REC_ARTIFACT_ROOT``
overrides), so a test store in ``tmp_path`` keeps everything in ``tmp_path``. The caller hands over the
``tracking`` section of the params file it was run with (:class:`m6rec.config.TrackingParams`) to every function
that opens the store; functions that act on the active run use the store :func:`start_run` opened. ``mlflow``
itself is imported lazily (it takes seconds), so stages can import this module for free.

Runs go to experiment ``tracking.experiment`` and are tagged with the stage, the git commit and the data version
(:mod:`m6rec.provenance`; ``data_version`` is re-exported here for the stages).

Bundle models and the ``m6rec`` model registry are :mod:`m6rec.registry`, on top of this module.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from m6rec.config import TrackingParams
from m6rec.provenance import data_version, git_commit, project_root  # noqa: F401  (data_version: for the stages)
from m6rec.runtime import signals_raise
from m6rec.store_check import StoreError, check_uri, sqlite_path  # noqa: F401  (StoreError, sqlite_path: callers)

log = logging.getLogger(__name__)

_ACTIVE: dict[str, Any] = {}  # the stage run start_run opened: settings, stage, run_id, child runs by model

# The experiment opens on the model-training views, not the GenAI traces view (MLflow 3's experiment kinds).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
METRIC_SPLITS = ("valid", "test", "cold")  # = m6rec.serving.bundle.METRIC_SPLITS

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


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


def mlflow_module(settings: TrackingParams | None = None):
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


def store_client(settings: TrackingParams | None = None):
    """A client of the store of `settings` (None: the store the active run was started in)."""
    mlflow = mlflow_module(settings)
    return mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())


def _experiment_id(mlflow, settings: TrackingParams) -> str:
    """Id of experiment ``settings.experiment``, created with the artifact root above if missing."""
    exp = mlflow.get_experiment_by_name(settings.experiment)
    if exp is None:
        return mlflow.create_experiment(settings.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                                        artifact_location=artifact_root(mlflow.get_tracking_uri(), settings))
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # experiments made before the tag, or by hand
        store_client().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


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
    mlflow = mlflow_module(settings)
    _ACTIVE.clear()
    _ACTIVE.update(settings=settings, stage=stage, children={})
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
        _ACTIVE["run_id"] = run.info.run_id
        try:
            yield run.info.run_id
        finally:
            _ACTIVE.clear()


def require_active_run(mlflow) -> None:
    if mlflow.active_run() is None:
        raise RuntimeError("no active MLflow run: call this inside `with tracking.start_run(...)`")


def log_epoch(metrics: Mapping[str, float], step: int) -> None:
    """Per-epoch training figures (loss, valid ndcg, ...) at ``step``."""
    log_metrics(metrics, step=step)


def is_model_metrics(metrics: Mapping[str, Any]) -> bool:
    """Whether ``metrics`` has the metrics files' schema, ``{domain: {model: {split: {metric: v}}}}``."""
    return bool(metrics) and all(
        isinstance(models, Mapping) and models and all(
            isinstance(r, Mapping) and any(isinstance(r.get(sp), Mapping) for sp in METRIC_SPLITS)
            for r in models.values())
        for models in metrics.values())


def readable_key(domain: str, split: str, metric: str) -> str:
    """``("ml-100k", "test", "ndcg@20")`` -> ``"ml-100k.test.ndcg_20"``: the one name of a final figure."""
    return metric_name(f"{domain}.{split}.{str(metric).replace('@', '_')}")


def model_figures(metrics: Mapping[str, Any], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per model, the final figures ``names`` (e.g. ``ndcg@20``) of a metrics-file dict under readable keys
    (:func:`readable_key`); non-finite values are left out."""
    out: dict[str, dict[str, float]] = {}
    for domain, models in metrics.items():
        for model, results in models.items():
            figs = out.setdefault(str(model), {})
            for split in METRIC_SPLITS:
                for name in names:
                    value = (results.get(split) or {}).get(name)
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                        figs[readable_key(domain, split, name)] = float(value)
    return out


def headline_metrics() -> tuple[str, ...]:
    settings = _ACTIVE.get("settings")
    return tuple(settings.metrics) if settings is not None else TrackingParams().metrics


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Metrics on the active run. NaN/inf values are skipped.

    A metrics-file dict (``{domain: {model: {split: {metric: v}}}}``, :func:`is_model_metrics`) is logged as the
    final figures ``tracking.metrics`` of each model under readable keys (``<domain>.<split>.<metric>``, e.g.
    ``ml-100k.test.ndcg_20``): on the active run when it holds one model, else in one child run per model (run
    name ``<stage>/<model>``, the stage's params copied, tag ``model``); the whole file is the stage's artifact.
    Anything else is flattened (:func:`flatten_metrics`) onto the active run.
    """
    mlflow = mlflow_module()
    require_active_run(mlflow)
    if step is None and is_model_metrics(metrics):
        figures = model_figures(metrics, headline_metrics())
        if len(figures) == 1:
            flat = next(iter(figures.values()))
            if flat:
                mlflow.log_metrics(flat)
            return
        for model, flat in figures.items():
            with _child_run(mlflow, model):
                if flat:
                    mlflow.log_metrics(flat)
        return
    flat = {k: v for k, v in flatten_metrics(metrics).items() if math.isfinite(v)}
    if flat:
        mlflow.log_metrics(flat, step=step)


@contextlib.contextmanager
def _child_run(mlflow, model: str) -> Iterator[str]:
    """The child run of ``model`` under the active stage run (made once per model, the stage's params copied)."""
    children = _ACTIVE.setdefault("children", {})
    parent = store_client().get_run(mlflow.active_run().info.run_id)  # the fluent Run object holds no later params
    if model in children:
        with mlflow.start_run(run_id=children[model], nested=True) as run:
            yield run.info.run_id
        return
    stage = _ACTIVE.get("stage") or parent.data.tags.get("stage", "run")
    tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
    with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=f"{stage}/{model}", nested=True,
                          tags={**tags, "model": model}) as run:
        children[model] = run.info.run_id
        params = parent.data.params
        if params:
            mlflow.log_params(params)
        yield run.info.run_id


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags on the active run."""
    mlflow = mlflow_module()
    require_active_run(mlflow)
    mlflow.set_tags({str(k): str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole folder as artifact(s) of the active run."""
    mlflow = mlflow_module()
    require_active_run(mlflow)
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        raise FileNotFoundError(f"cannot log artifact: {path} does not exist")
