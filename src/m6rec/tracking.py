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
import importlib
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

import numpy as np

from m6rec.config import TrackingParams
from m6rec.provenance import data_version, git_commit, project_root  # noqa: F401  (data_version: for the stages)
from m6rec.runtime import signals_raise
from m6rec.store_check import StoreError, check_uri, sqlite_path  # noqa: F401  (StoreError, sqlite_path: callers)

log = logging.getLogger(__name__)

_ACTIVE: dict[str, Any] = {}  # the stage run start_run opened: settings, stage, run_id, child runs by model

REGISTERED_MODEL = "m6rec"
CHAMPION = "champion"  # the served, composed version: per domain the bundle of that domain's champion
DOMAIN_CHAMPION = "champion-{domain}"  # alias of the version that won a domain (see m6rec.stages.register)
BUNDLE_MODEL_TYPE = "m6rec-bundle"
MODEL_ARTIFACT = "model"  # name of the pyfunc model in a training run: runs:/<run id>/model
TAG_HASH = "bundle.sha256"  # = m6rec.serving.bundle_io.HASH_TAG (not imported: this module stays light)
TAG_BUNDLE_MODEL = "bundle.model"
# The experiment opens on the model-training views, not the GenAI traces view (MLflow 3's experiment kinds).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
METRIC_SPLITS = ("valid", "test", "cold")  # = m6rec.serving.bundle.METRIC_SPLITS
# The pyfunc model (m6rec.mlflow_model) is logged from code, by path: MLflow runs MODEL_CODE; the package travels as
# code_paths. Not imported here, so the stages' DVC deps stay what their outputs depend on.
PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CODE = PACKAGE_DIR / "mlflow_model_code.py"
MODEL_BUNDLE_ARTIFACT = "bundle"  # = m6rec.mlflow_model.ARTIFACT

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
    if exp is None:
        return mlflow.create_experiment(settings.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                                        artifact_location=artifact_root(mlflow.get_tracking_uri(), settings))
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # experiments made before the tag, or by hand
        _client().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
    mlflow = _mlflow(settings)
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


def _active_run_required(mlflow) -> None:
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


def _headline() -> tuple[str, ...]:
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
    mlflow = _mlflow()
    _active_run_required(mlflow)
    if step is None and is_model_metrics(metrics):
        figures = model_figures(metrics, _headline())
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
    parent = _client().get_run(mlflow.active_run().info.run_id)  # the fluent Run object holds no later params
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


def model_signature():
    """The pyfunc model's signature (:mod:`m6rec.mlflow_model`): one request per row in, one item per row out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, "domain"), ColSpec(DataType.string, "user"),
                     ColSpec(DataType.long, "k"), ColSpec(Array(DataType.string), "items", required=False)])
    outputs = Schema([ColSpec(DataType.string, "domain"), ColSpec(DataType.string, "user"),
                      ColSpec(DataType.string, "item"), ColSpec(DataType.string, "title"),
                      ColSpec(DataType.double, "score"), ColSpec(DataType.long, "rank")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(bundle_dir: str | Path, meta: Mapping[str, Any], k: int = 5):
    """One request: the bundle's first domain, its first user (read from that domain's ``ids.json``), as columns
    (a DataFrame)."""
    from m6rec.serving.bundle_io import domain_folder

    domain = next(iter(meta["domains"]))
    ids = json.loads((domain_folder(bundle_dir, domain) / "ids.json").read_text(encoding="utf-8"))
    user = str(ids["raw_user"][0]) if ids["raw_user"] else ""
    # Only the training stages log models; the service imports this module to load them and must not import
    # pandas, so pandas is imported here by name, at call time (MLflow's pyfunc example is a DataFrame).
    pd = importlib.import_module("pandas")
    return pd.DataFrame({"domain": [domain], "user": [user], "k": np.array([k], dtype=np.int64)})


def _requirements() -> list[str]:
    """pip requirements of the pyfunc model: the installed versions of what the bundle code imports (given, not
    inferred: inference loads the model in a subprocess, which costs seconds per model)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "numpy", "scipy", "pandas"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _read_bundle_meta(bundle_dir: Path) -> dict[str, Any]:
    meta_file = bundle_dir / "bundle.json"
    if not bundle_dir.is_dir() or not meta_file.is_file():
        raise FileNotFoundError(f"bundle folder not found (no bundle.json): {bundle_dir}")
    return json.loads(meta_file.read_text(encoding="utf-8"))


def log_model(bundle_dir: str | Path, name: str = MODEL_ARTIFACT, tags: Mapping[str, Any] | None = None) -> str:
    """Log a serving-bundle folder as the pyfunc model ``name`` of the active run; returns ``models:/<model_id>``.

    The model is :class:`m6rec.mlflow_model.BundleRecommender` (logged from code, nothing pickled) with the bundle
    as its artifact ``bundle``, a signature and an input example, and the ``m6rec`` package as ``code_paths``,
    so ``mlflow.pyfunc.load_model`` works in a fresh process. The LoggedModel and the run are tagged
    ``bundle.sha256`` (:func:`m6rec.serving.bundle_io.content_hash`) and ``bundle.model``.
    """
    mlflow = _mlflow()
    _active_run_required(mlflow)
    from m6rec.serving.bundle_io import content_hash

    bundle_dir = Path(bundle_dir)
    meta = _read_bundle_meta(bundle_dir)
    digest = content_hash(bundle_dir)
    model_tags = {TAG_HASH: digest, TAG_BUNDLE_MODEL: str(meta.get("model") or ""),
                  **{str(k): str(v) for k, v in (tags or {}).items()}}
    info = mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), artifacts={MODEL_BUNDLE_ARTIFACT: str(bundle_dir)},
        code_paths=[str(PACKAGE_DIR)], signature=model_signature(),
        input_example=input_example(bundle_dir, meta), pip_requirements=_requirements(),
        metadata={"format": BUNDLE_MODEL_TYPE, "bundle_model": str(meta.get("model") or "")},
        model_type=BUNDLE_MODEL_TYPE, tags=model_tags)
    mlflow.set_tags({TAG_HASH: digest, TAG_BUNDLE_MODEL: model_tags[TAG_BUNDLE_MODEL]})
    return f"models:/{info.model_id}"


def log_bundle_model(bundle_dir: str | Path, prepared: Any = None, *, name: str = MODEL_ARTIFACT) -> str:
    """What a training stage calls once it has written its serving bundle: the bundle as the pyfunc model of the
    stage's run (:func:`log_model`), so the registry's versions lead to the run that trained them; returns
    ``runs:/<run id>/<name>``.

    Also on the run: the model's final figures from the bundle's meta under readable keys (``tracking.metrics``,
    :func:`readable_key`) where the run does not have them yet, and, with ``prepared``
    (:class:`m6rec.data.dataset.Prepared`), each served domain's splits as datasets (``mlflow.log_input``, named
    ``<domain>/<split>``, context = the split).
    """
    mlflow = _mlflow()
    _active_run_required(mlflow)
    bundle_dir = Path(bundle_dir)
    meta = _read_bundle_meta(bundle_dir)
    run_id = mlflow.active_run().info.run_id
    log_model(bundle_dir, name)
    model = str(meta.get("model") or "model")
    own = {}  # the bundle's own figures per domain; older bundles file them right under the domain
    for d, entry in (meta.get("metrics") or {}).items():
        if isinstance(entry, Mapping):
            own[d] = {model: entry if any(sp in entry for sp in METRIC_SPLITS) else entry.get(model) or {}}
    figures = model_figures(own, _headline()).get(model, {})
    have = _client().get_run(run_id).data.metrics
    new = {k: v for k, v in figures.items() if k not in have}
    if new:
        mlflow.log_metrics(new)
    if prepared is not None:
        log_datasets(prepared, list(meta.get("domains") or ()))
    return f"runs:/{run_id}/{name}"


def log_datasets(prepared: Any, domains: Sequence[str], source: str | None = None) -> None:
    """Each domain's train/valid/test (and cold) interactions as MLflow datasets of the active run."""
    mlflow = _mlflow()
    _active_run_required(mlflow)
    import mlflow.data

    frame = prepared.interactions
    src = source or str(prepared.meta.get("source") or "data/validated")
    for domain in domains:
        rows = frame[frame["domain"] == domain]
        if rows.empty:
            continue
        for split, part in rows.groupby("split", sort=True):
            ds = mlflow.data.from_pandas(part.reset_index(drop=True), source=src, name=f"{domain}/{split}")
            mlflow.log_input(ds, context=str(split), tags={"domain": domain, "split": str(split)})


def find_logged_model(content_hash: str, *, settings: TrackingParams) -> tuple[str, str] | None:
    """The newest READY model of the experiment logged from a bundle with this ``bundle.sha256``, as
    ``(runs:/<run id>/<name>, run id)``; None when no run logged it."""
    mlflow = _mlflow(settings)
    exp = mlflow.get_experiment_by_name(settings.experiment)
    if exp is None:
        return None
    found = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], filter_string=f"tags.`{TAG_HASH}` = '{content_hash}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
    for m in found:
        if str(getattr(m.status, "name", m.status)).endswith("READY") and m.source_run_id:
            return f"runs:/{m.source_run_id}/{m.name}", m.source_run_id
    return None


def bundle_root(folder: str | Path) -> Path:
    """The serving bundle inside a downloaded model folder: the folder itself, a child, or the pyfunc model's
    ``artifacts/<name>/``."""
    folder = Path(folder)
    for candidate in (folder, *sorted(folder.glob("*")), *sorted(folder.glob("artifacts/*"))):
        if (candidate / "bundle.json").is_file():
            return candidate
    raise FileNotFoundError(f"model folder {folder} holds no serving bundle (no bundle.json)")


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


def aliases(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> dict[str, str]:
    """Every alias of registered model ``name`` -> its version (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client(settings).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}
        raise
    return {str(a): str(v) for a, v in (model.aliases or {}).items()}


def versions(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> list[ModelVersionInfo]:
    """Every version of ``name`` (oldest first; empty when the model does not exist)."""
    found = _client(settings).search_model_versions(f"name = '{name}'")
    return sorted((_info(mv) for mv in found), key=lambda v: int(v.version))


def set_version_tags(name: str, version: str | int, tags: Mapping[str, Any], *, settings: TrackingParams) -> None:
    """Set (overwrite) tags of one registered version."""
    client = _client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), str(key), str(value))


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
