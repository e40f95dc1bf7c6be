"""Serving settings (params.yaml section ``serve`` + environment) and loading the bundle to serve.

Which bundle is served, in order of precedence:

1. ``M6REC_BUNDLE`` (env) or ``serve.bundle_dir``: a bundle folder on disk (no MLflow, no model store);
2. the champion a bento packs: the BentoML model named by the bento argument ``model`` (``m6rec.serving.bento_model``,
   set by ``m6rec.orchestration.bento.build_bento``), or ``M6REC_BENTO_MODEL``; no registry is asked;
3. ``M6REC_MODEL_URI`` (env) or ``serve.model_uri`` (default ``models:/m6rec@champion``), fetched from the MLflow
   store named by ``MLFLOW_TRACKING_URI`` (default: ``mlflow.db`` in the working directory) through
   ``m6rec.tracking``. An alias is resolved to its version once, at start-up, so a promotion while the server runs
   does not change what it serves; restart (or redeploy) to pick up a new champion;
4. when that store is missing or unreachable, or the alias is not set: the newest champion in the BentoML model
   store (``serve.model_source: auto``, the default; ``registry`` never falls back, ``store`` never asks the
   registry, env ``M6REC_MODEL_SOURCE``). With neither, start-up fails naming both reasons.

The start-up log says which of these was served (``serving ... from the bundle folder / the BentoML model store /
the MLflow registry``).

Settings are resolved once, at start-up, by :func:`serve_settings`: the ``serve`` and ``tracking`` sections of
``M6REC_PARAMS`` (default ``params.yaml``, skipped when absent, e.g. in a container) with the env overrides
``M6REC_MAX_K``, ``M6REC_MAX_BATCH``, ``M6REC_PRELOAD_ENCODER`` and ``M6REC_MODEL_SOURCE``; the tracking section is
handed to ``m6rec.tracking`` explicitly.

Start-up refuses, with one line naming the fault, rather than serving something unverified: the store must exist
and answer (``tracking.check_store``; a missing ``mlflow.db`` is not created), the alias must resolve, the version
must carry the ``bundle.sha256`` tag written at registration and what was downloaded must hash to it
(``bundle_io.content_hash``); a model-store copy must hash to its ``bundle_sha256`` label; and the bundle must load
with consistent shapes. The service runs this check once before its workers start (:func:`check_served_model`), so
a fault ends ``bentoml serve`` instead of a crash loop.

Downloads go to a cache folder per version, ``<serve.cache_dir>/<name>-v<version>-<hash prefix>`` (default
``<tmp>/m6rec-models-<uid>``), written atomically and reused by every later start and worker; a cached copy that no
longer matches its hash is downloaded again. A URI that is not a registry version is downloaded to a temporary
folder that is removed once loaded (the arrays are read into memory).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m6rec.config import ConfigError, TrackingParams, load_params, section
from m6rec.serving.ann import AnnSettings
from m6rec.serving.bundle import Bundle
from m6rec.serving.bundle_io import HASH_TAG, content_hash, load_bundle
from m6rec.serving.bundle_scorers import BundleError

log = logging.getLogger(__name__)

MODEL_SOURCES = ("auto", "registry", "store")
BENTO_MODEL_ENV = "M6REC_BENTO_MODEL"  # exact tag of the BentoML model to serve (the bento's, or pinned at start-up)


@dataclass(frozen=True)
class ServeParams:
    model_uri: str = "models:/m6rec@champion"  # MLflow model to serve (env M6REC_MODEL_URI overrides)
    bundle_dir: str = ""  # serve this bundle folder instead of MLflow; "" = use model_uri (env M6REC_BUNDLE)
    max_k: int = 100  # largest k a request may ask for (above it: HTTP 400)
    max_history: int = 1000  # most item ids a recommend_items request may send
    explain_n: int = 5  # history items returned by explain when the request does not say
    torch_threads: int = 1  # intra-op threads per worker (requests are small; parallelism comes from workers)
    max_batch: int = 64  # most concurrent recommend requests scored together; 1 = no batching (M6REC_MAX_BATCH)
    # Load the sentence encoder at start-up (True) or on the first text query (False); None = at start-up when the
    # bundle has a text domain (env M6REC_PRELOAD_ENCODER=1/0).
    preload_encoder: bool | None = None
    # Where the model comes from when no bundle folder is set: "auto" (a bento's packed model, else the registry,
    # else the newest champion in the BentoML model store), "registry" or "store" (env M6REC_MODEL_SOURCE).
    model_source: str = "auto"
    cache_dir: str = ""  # MLflow downloads, one folder per version, reused; "" = <tmp>/m6rec-models-<uid>
    # Largest request body (bytes); above it HTTP 413 before the body is read. 1 MiB holds max_history = 1000 ids
    # of the full 256 characters plus a 2,000-character text four times over (whitespace, escapes).
    max_body_bytes: int = 1_048_576
    # A dot-product domain with at least ann_min_items items recommends from an approximate index (IVF, FAISS:
    # m6rec.serving.ann) of ann_nlist cells (0 = 4 sqrt(n_items)), ann_nprobe of them scanned per query
    # (env M6REC_ANN_MIN_ITEMS). Exact top-k passes 5 ms per query at about 200k items x 64 d.
    ann_min_items: int = 200_000
    ann_nlist: int = 0
    ann_nprobe: int = 32

    def __post_init__(self) -> None:
        for name in ("max_k", "max_history", "explain_n", "torch_threads", "max_batch", "max_body_bytes",
                     "ann_min_items", "ann_nprobe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"serve.{name} must be a positive integer, got {value!r}")
        if isinstance(self.ann_nlist, bool) or not isinstance(self.ann_nlist, int) or self.ann_nlist < 0:
            raise ConfigError(f"serve.ann_nlist must be a non-negative integer (0 = 4 sqrt(n_items)), "
                              f"got {self.ann_nlist!r}")
        if self.model_source not in MODEL_SOURCES:
            raise ConfigError(f"serve.model_source must be one of {MODEL_SOURCES}, got {self.model_source!r}")
        if self.preload_encoder is not None and not isinstance(self.preload_encoder, bool):
            raise ConfigError(f"serve.preload_encoder must be true, false or null, got {self.preload_encoder!r}")


def ann_settings(cfg: ServeParams) -> AnnSettings:
    """The approximate index settings of ``cfg`` (``serve.ann_*``)."""
    return AnnSettings(min_items=cfg.ann_min_items, nlist=cfg.ann_nlist, nprobe=cfg.ann_nprobe)


class StartupError(RuntimeError):
    """What the service was asked to serve cannot be served as it is (the message names the fault)."""


@dataclass(frozen=True)
class ServedModel:
    """What the service loaded: the bundle and where it came from."""

    bundle: Bundle
    source: str  # bundle folder, MLflow model URI or BentoML model tag
    version: str | None  # registered model version (registry, or the model store's label)
    aliases: tuple[str, ...] = ()
    origin: str = "folder"  # "folder", "registry" or "store" (the BentoML model store)


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
    for var, key in (("M6REC_MAX_K", "max_k"), ("M6REC_MAX_BATCH", "max_batch"),
                     ("M6REC_ANN_MIN_ITEMS", "ann_min_items")):
        if env.get(var):
            try:
                overrides[key] = int(env[var])
            except ValueError as exc:
                raise ConfigError(f"{var} must be an integer, got {env[var]!r}") from exc
    if env.get("M6REC_PRELOAD_ENCODER"):
        overrides["preload_encoder"] = env["M6REC_PRELOAD_ENCODER"].lower() in ("1", "true", "yes")
    if env.get("M6REC_MODEL_SOURCE"):
        overrides["model_source"] = env["M6REC_MODEL_SOURCE"]
    return (dataclasses.replace(cfg, **overrides) if overrides else cfg), store


def cache_root(cfg: ServeParams) -> Path:
    """Where registry versions are cached: ``serve.cache_dir``, else a per-user folder in the temp dir."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(tempfile.gettempdir()) / f"m6rec-models-{os.getuid()}"


def _bundle_root(folder: Path) -> Path:
    """The bundle inside a downloaded model folder: at its top, one level down, or the pyfunc model's
    ``artifacts/<name>/`` (m6rec.mlflow_model)."""
    if (folder / "bundle.json").is_file():
        return folder
    inner = ([p for p in (*folder.iterdir(), *folder.glob("artifacts/*")) if (p / "bundle.json").is_file()]
             if folder.is_dir() else [])
    if len(inner) != 1:
        raise StartupError(f"downloaded model folder {folder} holds no serving bundle (no bundle.json)")
    return inner[0]


def _download(registry, uri: str, entry: Path, settings: TrackingParams) -> Path:
    """Download ``uri`` into cache folder ``entry`` atomically (a partial download never becomes the entry)."""
    entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        rel = registry.download_model(uri, tmp, settings=settings).resolve().relative_to(tmp.resolve())
        if entry.exists():  # stale: moved aside first, so the swap below is one rename
            stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}-stale-", dir=entry.parent))
            os.replace(entry, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process (a worker, a parallel start) put the same entry in place first
            log.info("%s appeared meanwhile: using it", entry)
        return entry / rel
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _verified_copy(registry, info, cfg: ServeParams, settings: TrackingParams) -> Path:
    """The cached bundle of registry version ``info``, downloaded if absent or stale, checked against its tag."""
    expected = info.tags.get(HASH_TAG)
    if not expected:
        raise StartupError(f"{info.uri} has no '{HASH_TAG}' tag: it was registered without a content hash, so what "
                           f"is served cannot be verified; register it again (m6rec.stages.register)")
    # The hash is in the name: versions of different stores never share an entry, equal content may.
    entry = cache_root(cfg) / f"{info.name}-v{info.version}-{expected.removeprefix('sha256:')[:16]}"
    if entry.is_dir():
        try:
            local = _bundle_root(entry)
            if content_hash(local) == expected:
                log.info("%s: cached copy %s verified", info.uri, local)
                return local
        except (StartupError, BundleError, OSError) as exc:
            log.warning("%s: cached copy %s unusable (%s)", info.uri, entry, exc)
        log.warning("%s: cached copy %s does not match its registered hash: downloading again", info.uri, entry)
    local = _bundle_root(_download(registry, info.uri, entry, settings))
    got = content_hash(local)
    if got != expected:
        raise StartupError(f"{info.uri}: the downloaded bundle hashes to {got} but version {info.version} was "
                           f"registered as {expected}: its artifacts were changed or replaced; refusing to serve")
    return local


def _from_store(tag: str) -> ServedModel:
    from m6rec.serving import bento_model

    stored = bento_model.stored_bundle(tag)
    log.info("serving BentoML model %s (%s v%s, %s) from the BentoML model store, no registry asked", stored.tag,
             stored.registered_model, stored.registry_version, stored.bundle_sha256)
    return ServedModel(bundle=load_bundle(stored.path), source=stored.tag, version=stored.registry_version,
                       origin="store")


def _from_registry(cfg: ServeParams, settings: TrackingParams) -> ServedModel:
    from m6rec import registry, tracking  # imports mlflow lazily; only needed on this path

    tracking.check_store(settings, must_exist=True)  # before mlflow, which would create an empty sqlite store
    info = registry.resolve_model_uri(cfg.model_uri, settings=settings)
    if info is None:  # not a registry version (runs:/, models:/m-...): nothing recorded to verify against
        log.warning("%s is not a registered version: served without a content-hash check", cfg.model_uri)
        tmp = Path(tempfile.mkdtemp(prefix="m6rec-model-"))
        try:
            bundle = load_bundle(_bundle_root(registry.download_model(cfg.model_uri, tmp, settings=settings)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ServedModel(bundle=bundle, source=cfg.model_uri, version=None, origin="registry")
    local = _verified_copy(registry, info, cfg, settings)
    log.info("serving %s (%s, %s) from the MLflow registry at %s", cfg.model_uri, info.uri, info.tags[HASH_TAG],
             tracking.tracking_uri(settings))
    return ServedModel(bundle=load_bundle(local), source=info.uri, version=info.version, aliases=info.aliases,
                       origin="registry")


def fetch_registry_version(cfg: ServeParams, settings: TrackingParams) -> tuple[Any, Path]:
    """``(version info, verified local bundle folder)`` of the registered version ``cfg.model_uri`` names (an alias
    resolved now); raises when the store cannot be used, the URI is not a registered version, or the hash fails."""
    from m6rec import registry, tracking

    tracking.check_store(settings, must_exist=True)
    info = registry.resolve_model_uri(cfg.model_uri, settings=settings)
    if info is None:
        raise StartupError(f"{cfg.model_uri} is not a registered model version (models:/<name>@<alias> or "
                           f"models:/<name>/<version>): nothing to verify it against")
    return info, _verified_copy(registry, info, cfg, settings)


def load_served_model(cfg: ServeParams, settings: TrackingParams, bento_model: str | None = None) -> ServedModel:
    """Load the bundle named by ``cfg`` (a folder, the BentoML model ``bento_model`` a bento packs, or an MLflow
    model URI in the store of ``settings``, else the model store's newest champion), verified as the module
    docstring says; any fault raises with a message naming it."""
    if cfg.bundle_dir:
        path = Path(cfg.bundle_dir)
        log.info("serving bundle folder %s (no registry, no model store)", path)
        return ServedModel(bundle=load_bundle(path), source=str(path.resolve()), version=None)
    if bento_model and cfg.model_source != "registry":
        return _from_store(bento_model)
    if cfg.model_source == "store":
        from m6rec.serving import bento_model as store

        latest = store.latest_model()
        if latest is None:
            raise StartupError(f"serve.model_source is 'store' but the BentoML model store holds no "
                               f"'{store.MODEL_NAME}' model; import one with "
                               f"`python -m m6rec.orchestration build-bento`")
        return _from_store(latest)
    from m6rec.store_check import StoreError

    try:
        return _from_registry(cfg, settings)
    except (StoreError, LookupError) as exc:  # no registry to ask (a fault in what it holds is no reason to fall back)
        if cfg.model_source == "registry":
            raise
        from m6rec.serving import bento_model as store

        latest = store.latest_model()
        if latest is None:
            raise StartupError(f"no model to serve: the MLflow registry cannot be used ({type(exc).__name__}: "
                               f"{exc}) and the BentoML model store holds no '{store.MODEL_NAME}' model (build a "
                               f"bento with `python -m m6rec.orchestration build-bento`, or set M6REC_BUNDLE)") from None
        log.warning("the MLflow registry cannot be used (%s: %s): falling back to the BentoML model store",
                    type(exc).__name__, exc)
        return _from_store(latest)


def check_served_model(env: dict[str, str] | None = None, bento_model: str | None = None) -> ServedModel:
    """Verify and cache what the service would serve, before any worker starts; returns it.

    The choice is pinned for the workers in ``env`` (default ``os.environ``, which the workers inherit): a registry
    alias to the version verified here (``M6REC_MODEL_URI``), a model-store model to its exact tag
    (``M6REC_BENTO_MODEL``), so every worker serves exactly this. Raises on any fault (see the module docstring).
    """
    target = os.environ if env is None else env
    cfg, store = serve_settings(dict(target))
    served = load_served_model(cfg, store, bento_model or target.get(BENTO_MODEL_ENV) or None)
    if served.origin == "registry" and served.version is not None:
        target["M6REC_MODEL_URI"] = served.source
        target["M6REC_MODEL_SOURCE"] = "registry"
    elif served.origin == "store":
        target[BENTO_MODEL_ENV] = served.source
        target["M6REC_MODEL_SOURCE"] = "store"
    return served
