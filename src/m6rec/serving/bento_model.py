"""The champion bundle as a BentoML model: what a bento packs so that it serves without the MLflow registry.

A registry version is imported once into the BentoML model store (``$BENTOML_HOME/models``) as model
``m6rec-champion``: the bundle folder copied to ``<model>/bundle``, with labels naming where it came from::

    registered_model: m6rec      registry_version: 3      bundle_sha256: sha256:<hex>   (the version's tag)

:func:`import_bundle` is idempotent on those labels (:func:`find_model`): the same version and content is never
imported twice. The service references one such model by its exact tag (the bento argument ``model``, set by
``m6rec.orchestration.bento.build_bento``), so ``bentoml build`` packs it and ``bentoml containerize`` copies it into
the image. :func:`stored_bundle` checks the copy against its ``bundle_sha256`` label before it is served.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from m6rec.serving.bundle_io import content_hash

log = logging.getLogger(__name__)

MODEL_NAME = "m6rec-champion"  # BentoML model name of imported champions
LABEL_MODEL, LABEL_VERSION, LABEL_HASH = "registered_model", "registry_version", "bundle_sha256"
BUNDLE_FOLDER = "bundle"  # the bundle's folder inside the BentoML model


class ModelStoreError(RuntimeError):
    """The BentoML model store holds no usable champion (the message says what is missing or wrong)."""


@dataclass(frozen=True)
class StoredBundle:
    """A champion in the BentoML model store, verified: its bundle folder and its labels."""

    tag: str  # m6rec-champion:<version>
    path: Path  # the bundle folder
    registered_model: str | None
    registry_version: str | None
    bundle_sha256: str


def _models() -> list:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return list(bentoml.models.list(MODEL_NAME))
    except NotFound:
        return []


def find_model(registry_version: str, bundle_sha256: str, registered_model: str = "m6rec") -> str | None:
    """Tag of the stored champion imported from ``registered_model`` v``registry_version`` with that content hash."""
    want = {LABEL_MODEL: registered_model, LABEL_VERSION: str(registry_version), LABEL_HASH: bundle_sha256}
    for model in sorted(_models(), key=lambda m: m.creation_time, reverse=True):
        if all(model.info.labels.get(k) == v for k, v in want.items()):
            return str(model.tag)
    return None


def latest_model() -> str | None:
    """Tag of the most recently imported champion, or None when the store holds none."""
    models = sorted(_models(), key=lambda m: m.creation_time, reverse=True)
    return str(models[0].tag) if models else None


def import_bundle(bundle_dir: str | Path, registry_version: str, bundle_sha256: str,
                  registered_model: str = "m6rec", source_uri: str = "") -> str:
    """Import a verified bundle folder into the BentoML model store (once per version and hash); returns its tag."""
    found = find_model(registry_version, bundle_sha256, registered_model)
    if found:
        log.info("BentoML model %s already holds %s v%s (%s)", found, registered_model, registry_version,
                 bundle_sha256)
        return found
    got = content_hash(Path(bundle_dir))
    if got != bundle_sha256:
        raise ModelStoreError(f"bundle {bundle_dir} hashes to {got}, not {bundle_sha256}: refusing to import it")
    import bentoml

    labels = {LABEL_MODEL: registered_model, LABEL_VERSION: str(registry_version), LABEL_HASH: bundle_sha256}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata={"source": source_uri}) as model:
        shutil.copytree(bundle_dir, model.path_of(BUNDLE_FOLDER))
    log.info("imported %s v%s (%s) into the BentoML model store as %s", registered_model, registry_version,
             bundle_sha256, model.tag)
    return str(model.tag)


def stored_bundle(tag: str) -> StoredBundle:
    """The bundle folder of stored model ``tag``, checked against its ``bundle_sha256`` label."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelStoreError(f"BentoML model {tag} is not in the model store ({exc})") from None
    labels = model.info.labels
    path = Path(model.path_of(BUNDLE_FOLDER))
    expected = labels.get(LABEL_HASH)
    if not expected or not (path / "bundle.json").is_file():
        raise ModelStoreError(f"BentoML model {model.tag} is not an m6rec champion (no '{LABEL_HASH}' label or no "
                              f"{BUNDLE_FOLDER}/bundle.json)")
    got = content_hash(path)
    if got != expected:
        raise ModelStoreError(f"BentoML model {model.tag}: its bundle hashes to {got} but it was imported as "
                              f"{expected}: the stored files were changed; refusing to serve")
    return StoredBundle(tag=str(model.tag), path=path, registered_model=labels.get(LABEL_MODEL),
                        registry_version=labels.get(LABEL_VERSION), bundle_sha256=expected)
