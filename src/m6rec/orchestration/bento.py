"""The DAG's last task: pack the champion into a bento, only when the champion (or the service code) changed.

:func:`build_bento` resolves the registry's champion (``serve.model_uri``, default ``models:/m6rec@champion``), imports
it into the BentoML model store once per version and content hash (``m6rec.serving.bento_model``), and runs
``bentoml build --arg model=<that model's tag>`` so the bento packs it. The bento is labelled with what it holds::

    champion_model: m6rec-champion:<v>  registry_version: 3  bundle_sha256: sha256:...  source_sha256: sha256:...

(``source_sha256``: the bentofile and every file it includes). When a bento with the same labels exists already,
nothing is built and the task ends skipped (exit 99): a daily run on an unchanged champion adds no bento.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

import yaml

from m6rec.orchestration.tasks import SKIP_EXIT_CODE, tool

log = logging.getLogger(__name__)

ALLOW_MISSING_BENTOFILE_ENV = "M6REC_ALLOW_MISSING_BENTOFILE"  # "1": build-bento skips (exit 99) without a bentofile
LABEL_CHAMPION, LABEL_SOURCE = "champion_model", "source_sha256"


def source_digest(bentofile: Path, root: Path) -> str:
    """sha256 over the bentofile and each file its ``include`` lists (path and bytes, in sorted order)."""
    spec = yaml.safe_load(bentofile.read_text(encoding="utf-8")) or {}
    h = hashlib.sha256(bentofile.read_bytes())
    for rel in sorted(spec.get("include") or []):
        for f in sorted(root.glob(rel.lstrip("/"))):
            if f.is_file():
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return f"sha256:{h.hexdigest()}"


def existing_bento(name: str, labels: dict[str, str]) -> str | None:
    """Tag of a bento ``name`` in the BentoML store carrying all of ``labels``, newest first; None if there is none."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentos = bentoml.bentos.list(name)
    except NotFound:
        return None
    for bento in sorted(bentos, key=lambda b: b.info.creation_time, reverse=True):
        if all(bento.info.labels.get(k) == v for k, v in labels.items()):
            return str(bento.tag)
    return None


def champion_labels(bentofile: Path) -> dict[str, str]:
    """Import the registry's champion into the BentoML model store (once) and return the bento's labels."""
    from m6rec.serving import bento_model
    from m6rec.serving.bundle_io import HASH_TAG
    from m6rec.serving.loader import fetch_registry_version, serve_settings

    cfg, settings = serve_settings()
    info, local = fetch_registry_version(cfg, settings)
    digest = info.tags[HASH_TAG]
    tag = bento_model.import_bundle(local, info.version, digest, registered_model=info.name, source_uri=info.uri)
    return {LABEL_CHAMPION: tag, bento_model.LABEL_VERSION: str(info.version), bento_model.LABEL_HASH: digest,
            LABEL_SOURCE: source_digest(bentofile, Path.cwd())}


def build_bento(bentofile: str | Path, force: bool = False) -> int:
    """Pack the champion into a bento (see the module docstring); 0 built, 99 skipped (nothing changed, or no
    bentofile where explicitly allowed), else the failure's exit status."""
    path = Path(bentofile)
    if not path.is_file():
        if os.environ.get(ALLOW_MISSING_BENTOFILE_ENV, "") == "1":
            log.warning("SKIPPED: %s not found in %s and $%s=1: no bento is built", path, Path.cwd(),
                        ALLOW_MISSING_BENTOFILE_ENV)
            return SKIP_EXIT_CODE
        log.error("%s not found in %s: the BentoML service cannot be built", path, Path.cwd())
        return 1
    try:
        labels = champion_labels(path)
    except Exception as exc:  # the registry is down, no alias, a hash mismatch: the task fails naming it
        log.error("cannot pack the champion into a bento: %s: %s", type(exc).__name__, exc)
        return 1
    name = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("name", "m6rec")
    found = existing_bento(name, labels)
    if found and not force:
        log.warning("SKIPPED: bento %s already packs %s (registry v%s) with this code: no new bento", found,
                    labels[LABEL_CHAMPION], labels["registry_version"])
        return SKIP_EXIT_CODE
    cmd = [tool("bentoml"), "build", "-f", str(path), "--arg", f"model={labels[LABEL_CHAMPION]}"]
    for key, value in labels.items():
        cmd += ["--label", f"{key}={value}"]
    cmd.append(".")
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode
