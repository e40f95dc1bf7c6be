"""Serving settings (params.yaml section ``serve`` + environment) and loading the bundle to serve.

Which bundle is served, in order of precedence:

1. ``M6REC_BUNDLE`` (env) or ``serve.bundle_dir``: a bundle folder on disk (no MLflow involved);
2. ``M6REC_MODEL_URI`` (env) or ``serve.model_uri`` (default ``models:/m6rec@champion``), fetched from the MLflow
   store named by ``MLFLOW_TRACKING_URI`` (default: ``mlflow.db`` in the working directory) through
   ``m6rec.tracking``. An alias is resolved to its version once, at start-up, so a promotion while the server runs
   does not change what it serves; restart (or redeploy) to pick up a new champion.

Settings are resolved once, at start-up, by :func:`serve_settings`: the ``serve`` and ``tracking`` sections of
``M6REC_PARAMS`` (default ``params.yaml``, skipped when absent, e.g. in a container) with the env overrides
``M6REC_MAX_K``, ``M6REC_MAX_BATCH`` and ``M6REC_PRELOAD_ENCODER``; the tracking section is handed to
``m6rec.tracking`` explicitly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m6rec.config import ConfigError, TrackingParams, load_params, section
from m6rec.serving.bundle import Bundle
from m6rec.serving.bundle_io import load_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeParams:
    model_uri: str = "models:/m6rec@champion"  # MLflow model to serve (env M6REC_MODEL_URI overrides)
    bundle_dir: str = ""  # serve this bundle folder instead of MLflow; "" = use model_uri (env M6REC_BUNDLE)
    max_k: int = 100  # largest k a request may ask for (above it: HTTP 400)
    max_history: int = 1000  # most item ids a recommend_items request may send
    explain_n: int = 5  # history items returned by explain when the request does not say
    torch_threads: int = 1  # intra-op threads per worker (requests are small; parallelism comes from workers)
    max_batch: int = 64  # most concurrent recommend requests scored together; 1 = no batching (M6REC_MAX_BATCH)
    preload_encoder: bool = False  # load the sentence encoder at start-up instead of on the first text query
    cache_dir: str = ""  # where MLflow models are downloaded; "" = a fresh temporary folder
    # Largest request body (bytes); above it HTTP 413 before the body is read. 1 MiB holds max_history = 1000 ids
    # of the full 256 characters plus a 2,000-character text four times over (whitespace, escapes).
    max_body_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        for name in ("max_k", "max_history", "explain_n", "torch_threads", "max_batch", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"serve.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ServedModel:
    """What the service loaded: the bundle and where it came from."""

    bundle: Bundle
    source: str  # bundle folder or MLflow model URI
    version: str | None  # registered model version, when loaded from the registry
    aliases: tuple[str, ...] = ()


def serve_settings(env: dict[str, str] | None = None) -> tuple[ServeParams, TrackingParams]:
    """The ``serve`` (environment overrides applied) and ``tracking`` sections of the service's params file."""
    env = dict(os.environ if env is None else env)
    params_file = Path(env.get("M6REC_PARAMS", "params.yaml"))
    cfg, store = ServeParams(), TrackingParams()
    if params_file.is_file():
        params = load_params(params_file)
        if "serve" in params:
            cfg = section(params, "serve", ServeParams)
        if "tracking" in params:
            store = section(params, "tracking", TrackingParams)
    overrides: dict[str, Any] = {}
    if env.get("M6REC_BUNDLE"):
        overrides["bundle_dir"] = env["M6REC_BUNDLE"]
    if env.get("M6REC_MODEL_URI"):
        overrides["model_uri"] = env["M6REC_MODEL_URI"]
        if not env.get("M6REC_BUNDLE"):
            overrides["bundle_dir"] = ""
    for var, key in (("M6REC_MAX_K", "max_k"), ("M6REC_MAX_BATCH", "max_batch")):
        if env.get(var):
            try:
                overrides[key] = int(env[var])
            except ValueError as exc:
                raise ConfigError(f"{var} must be an integer, got {env[var]!r}") from exc
    if env.get("M6REC_PRELOAD_ENCODER"):
        overrides["preload_encoder"] = env["M6REC_PRELOAD_ENCODER"].lower() in ("1", "true", "yes")
    return (dataclasses.replace(cfg, **overrides) if overrides else cfg), store


def load_served_model(cfg: ServeParams, settings: TrackingParams) -> ServedModel:
    """Load the bundle named by ``cfg`` (a folder, or an MLflow model URI in the store of ``settings``)."""
    if cfg.bundle_dir:
        path = Path(cfg.bundle_dir)
        log.info("serving bundle folder %s", path)
        return ServedModel(bundle=load_bundle(path), source=str(path.resolve()), version=None)

    from m6rec import tracking  # imports mlflow lazily; only needed on this path

    info = tracking.resolve_model_uri(cfg.model_uri, settings=settings)
    uri = info.uri if info is not None else cfg.model_uri  # pin the alias to one version
    dst = Path(cfg.cache_dir) if cfg.cache_dir else Path(tempfile.mkdtemp(prefix="m6rec-model-"))
    if cfg.cache_dir and info is not None:
        dst = dst / f"{info.name}-v{info.version}"
    local = tracking.download_model(uri, dst, settings=settings)
    log.info("serving %s (%s) from %s", cfg.model_uri, uri, tracking.tracking_uri(settings))
    return ServedModel(bundle=load_bundle(local), source=uri,
                       version=info.version if info is not None else None,
                       aliases=info.aliases if info is not None else ())
