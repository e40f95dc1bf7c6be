"""Bundle models and the ``m6rec`` model registry, on the store and active run of :mod:`m6rec.tracking`.

A serving bundle (``m6rec.serving.bundle``) is logged as an MLflow 3 *LoggedModel* whose artifacts are the bundle
files plus a flavour-less ``MLmodel`` file, so it can be registered as a version of model ``m6rec`` and fetched
back with :func:`download_model` (``models:/m6rec@champion`` or ``models:/m6rec/3``). Promotion uses registry
*aliases* (``@champion``), not the stages removed in MLflow 3. Like :mod:`m6rec.tracking`, ``mlflow`` is imported
only when a function needs it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m6rec.config import TrackingParams
from m6rec.tracking import (
    METRIC_SPLITS,
    headline_metrics,
    mlflow_module,
    model_figures,
    require_active_run,
    store_client,
    tracking_uri,
)

REGISTERED_MODEL = "m6rec"
CHAMPION = "champion"  # the served, composed version: per domain the bundle of that domain's champion
DOMAIN_CHAMPION = "champion-{domain}"  # alias of the version that won a domain (see m6rec.stages.register)
BUNDLE_MODEL_TYPE = "m6rec-bundle"
MODEL_ARTIFACT = "model"  # name of the pyfunc model in a training run: runs:/<run id>/model
TAG_HASH = "bundle.sha256"  # = m6rec.serving.bundle_io.HASH_TAG (not imported: this module stays light)
TAG_BUNDLE_MODEL = "bundle.model"
# The pyfunc model (m6rec.mlflow_model) is logged from code, by path: MLflow runs MODEL_CODE; the package travels as
# code_paths. Not imported here, so the stages' DVC deps stay what their outputs depend on.
PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CODE = PACKAGE_DIR / "mlflow_model_code.py"
MODEL_BUNDLE_ARTIFACT = "bundle"  # = m6rec.mlflow_model.ARTIFACT


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
    mlflow = mlflow_module()
    require_active_run(mlflow)
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
    mlflow = mlflow_module()
    require_active_run(mlflow)
    bundle_dir = Path(bundle_dir)
    meta = _read_bundle_meta(bundle_dir)
    run_id = mlflow.active_run().info.run_id
    log_model(bundle_dir, name)
    model = str(meta.get("model") or "model")
    own = {}  # the bundle's own figures per domain; older bundles file them right under the domain
    for d, entry in (meta.get("metrics") or {}).items():
        if isinstance(entry, Mapping):
            own[d] = {model: entry if any(sp in entry for sp in METRIC_SPLITS) else entry.get(model) or {}}
    figures = model_figures(own, headline_metrics()).get(model, {})
    have = store_client().get_run(run_id).data.metrics
    new = {k: v for k, v in figures.items() if k not in have}
    if new:
        mlflow.log_metrics(new)
    if prepared is not None:
        log_datasets(prepared, list(meta.get("domains") or ()))
    return f"runs:/{run_id}/{name}"


def log_datasets(prepared: Any, domains: Sequence[str], source: str | None = None) -> None:
    """Each domain's train/valid/test (and cold) interactions as MLflow datasets of the active run.

    A split already logged to the active run from the same source is not logged again (a stage that logs several
    bundles, as baselines does, logs its data once). The schema is :func:`frame_schema`'s, the one MLflow infers,
    without MLflow's per-value walk of string columns (0.7 s per split of the default data).
    """
    mlflow = mlflow_module()
    require_active_run(mlflow)
    import mlflow.data

    frame = prepared.interactions
    src = source or str(prepared.meta.get("source") or "data/validated")
    done = _LOGGED_INPUTS.setdefault(mlflow.active_run().info.run_id, set())
    for domain in domains:
        rows = frame[frame["domain"] == domain]
        if rows.empty:
            continue
        for split, part in rows.groupby("split", sort=True):
            key = (src, domain, str(split))
            if key in done:
                continue
            part = part.reset_index(drop=True)
            ds = mlflow.data.from_pandas(part, source=src, name=f"{domain}/{split}")
            ds.schema = frame_schema(part)  # replaces the lazily inferred one (a functools.cached_property)
            mlflow.log_input(ds, context=str(split), tags={"domain": domain, "split": str(split)})
            done.add(key)


_LOGGED_INPUTS: dict[str, set[tuple[str, str, str]]] = {}  # run id -> (source, domain, split) logged to it


def frame_schema(frame: Any):
    """The MLflow schema of a DataFrame, equal to ``mlflow.models.infer_signature(frame).inputs``, without MLflow's
    per-value walk of text columns: a text column (pandas' string dtype, or objects that pandas' vectorised
    ``infer_dtype`` finds all ``str``) without nulls is a required string column; a numeric column's type is its
    dtype's; any other column is inferred by MLflow; a column is required when it holds no null."""
    pd = importlib.import_module("pandas")
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, DataType, Schema

    cols = []
    for name in frame.columns:
        col = frame[name]
        complete = bool(col.notna().all())
        text = isinstance(col.dtype, pd.StringDtype) or (
            col.dtype == object and pd.api.types.infer_dtype(col, skipna=False) == "string")
        if text and complete and len(col):
            kind = DataType.string
        else:
            # a numpy numeric or datetime column's type is its dtype's: a slice is enough
            part = col.iloc[:1000] if col.dtype.kind in "biufcmM" and complete else col
            with warnings.catch_warnings():  # "integer columns cannot represent missing values": not a model input
                warnings.simplefilter("ignore", UserWarning)
                kind = infer_signature(part.to_frame()).inputs.inputs[0].type
        cols.append(ColSpec(kind, name, required=complete))
    return Schema(cols)


def find_logged_model(content_hash: str, *, settings: TrackingParams) -> tuple[str, str] | None:
    """The newest READY model of the experiment logged from a bundle with this ``bundle.sha256``, as
    ``(runs:/<run id>/<name>, run id)``; None when no run logged it."""
    mlflow = mlflow_module(settings)
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
    mlflow = mlflow_module(settings)
    mv = mlflow.register_model(model_uri, name, tags={str(k): str(v) for k, v in (tags or {}).items()})
    return get_version(name, mv.version, settings=settings)


def registered_model_exists(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> bool:
    """Whether the store of ``settings`` has registered model ``name`` (open the store only after
    :func:`check_store`: mlflow creates a missing sqlite file)."""
    from mlflow.exceptions import MlflowException

    try:
        store_client(settings).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return False
        raise
    return True


def get_version(name: str, version: str | int, *, settings: TrackingParams) -> ModelVersionInfo:
    """One registered version (tags and aliases included)."""
    return _info(store_client(settings).get_model_version(name, str(version)))


def get_alias(name: str = REGISTERED_MODEL, alias: str = CHAMPION, *,
              settings: TrackingParams) -> ModelVersionInfo | None:
    """The version holding ``alias`` (``None`` if the model or the alias does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return _info(store_client(settings).get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def aliases(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> dict[str, str]:
    """Every alias of registered model ``name`` -> its version (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        model = store_client(settings).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}
        raise
    return {str(a): str(v) for a, v in (model.aliases or {}).items()}


def versions(name: str = REGISTERED_MODEL, *, settings: TrackingParams) -> list[ModelVersionInfo]:
    """Every version of ``name`` (oldest first; empty when the model does not exist)."""
    found = store_client(settings).search_model_versions(f"name = '{name}'")
    return sorted((_info(mv) for mv in found), key=lambda v: int(v.version))


def set_version_tags(name: str, version: str | int, tags: Mapping[str, Any], *, settings: TrackingParams) -> None:
    """Set (overwrite) tags of one registered version."""
    client = store_client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), str(key), str(value))


def set_alias(version: str | int, name: str = REGISTERED_MODEL, alias: str = CHAMPION, *,
              settings: TrackingParams) -> None:
    """Point ``alias`` at ``version`` (moving it off any other version)."""
    store_client(settings).set_registered_model_alias(name, alias, str(version))


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
    mlflow = mlflow_module(settings)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
