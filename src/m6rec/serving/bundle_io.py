"""Writing and reading a serving bundle folder (the format is :mod:`m6rec.serving.bundle`'s docstring).

``export_bundle`` writes a folder atomically; ``read_meta`` reads its ``bundle.json`` (cheap, no arrays);
``load_bundle`` loads the arrays and checks them against ``bundle.json``; ``content_hash`` is the sha256 recorded
at registration and checked before serving. Format versions 1 (dot products only) and 2 (optional history scorer)
are read.

A bundle may come from a registry, so nothing in it is trusted: arrays load with ``allow_pickle=False``, domain
names from ``bundle.json`` must be plain folder names that resolve inside the bundle folder (no ``../outside``, no
symlink out), and a truncated or corrupt file is a :class:`BundleError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from m6rec.serving.bundle import (
    DOMAIN_NAME,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    Bundle,
    BundleError,
    DomainBundle,
    HistoryScorer,
    TextProjection,
)


def export_bundle(path: str | Path, domains: Mapping[str, DomainBundle], meta: Mapping[str, Any]) -> Path:
    """Write a bundle folder at ``path`` (replaced atomically if it exists); returns ``path``."""
    path = Path(path)
    if not domains:
        raise BundleError("a bundle needs at least one domain")
    for name in domains:
        if not DOMAIN_NAME.match(name):
            raise BundleError(f"domain name {name!r} cannot be a folder name")
    if any(d.text_projection is not None for d in domains.values()) and not meta.get("encoder"):
        raise BundleError("meta['encoder'] must name the sentence encoder when a domain has a text projection")
    full_meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        # no creation time: a bundle is a DVC out and must be the same bytes for the same inputs (the MLflow
        # run and the decision log record when it was made)
        **dict(meta),
        "domains": {
            name: {"n_users": d.n_users, "n_items": d.n_items, "dim": d.dim, "text_dim": d.text_dim,
                   "has_text_vectors": d.item_text_vectors is not None,
                   "has_text_projection": d.text_projection is not None, "scorer": d.kind,
                   **({"history_scorer": dict(d.scorer.config)} if d.scorer is not None else {})}
            for name, d in domains.items()
        },
    }
    text = json.dumps(full_meta, indent=2, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        for name, d in domains.items():
            folder = tmp / name
            folder.mkdir()
            np.save(folder / "item_vectors.npy", d.item_vectors.astype(np.float32, copy=False))
            if d.scorer is None:
                np.save(folder / "user_vectors.npy", d.user_vectors.astype(np.float32, copy=False))
            else:
                extra = {} if d.scorer.recency is None else {"recency": d.scorer.recency.astype(np.float32)}
                np.savez(folder / "history_scorer.npz", history=d.scorer.history.astype(np.int64), **extra,
                         **{k: np.asarray(v, dtype=np.float32) for k, v in d.scorer.weights.items()})
            np.save(folder / "popularity.npy", d.popularity.astype(np.float32, copy=False))
            sp.save_npz(folder / "seen.npz", sp.csr_matrix(d.seen, dtype=np.float32))
            ids = {"raw_item": list(d.raw_item), "title": list(d.titles), "raw_user": list(d.raw_user)}
            (folder / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
            if d.item_text_vectors is not None:
                np.save(folder / "item_text_vectors.npy", d.item_text_vectors.astype(np.float32, copy=False))
            if d.text_projection is not None:
                np.savez(folder / "text_projection.npz", weight=d.text_projection.weight,
                         bias=d.text_projection.bias)
        (tmp / META_FILE).write_text(text, encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"bundle meta value of type {type(obj).__name__} is not JSON-serialisable")


def read_meta(path: str | Path) -> dict[str, Any]:
    """``bundle.json`` of the bundle at ``path`` (cheap: no arrays)."""
    meta_file = Path(path) / META_FILE
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a serving bundle: {META_FILE} is missing")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"{meta_file}: format_version {meta['format_version']} is newer than this code "
                          f"({FORMAT_VERSION})")
    return meta


HASH_PREFIX = "sha256:"
HASH_TAG = "bundle.sha256"  # the registered model version tag holding content_hash() of its bundle
_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError)  # what numpy/scipy raise on bad bytes


def domain_folder(path: str | Path, name: str) -> Path:
    """The folder of domain ``name`` inside bundle ``path``; a name that is not a plain folder name, or that
    resolves outside the bundle (``..``, a symlink), is a :class:`BundleError`."""
    root = Path(path).resolve()
    if not isinstance(name, str) or not DOMAIN_NAME.match(name) or name in (".", ".."):
        raise BundleError(f"bundle {path}: domain name {name!r} is not a plain folder name")
    folder = (root / name).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise BundleError(f"bundle {path}: domain {name!r} resolves to {folder}, outside the bundle folder")
    return folder


def _inside(file: Path, root: Path) -> Path:
    if file.is_symlink() and not file.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"bundle file {file} links outside the bundle folder")
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    return file


def content_hash(path: str | Path) -> str:
    """``sha256:<hex>`` over the bundle's files: ``bundle.json`` and every file of each domain it lists, in sorted
    path order, each as (relative path, size, bytes). Files outside those (e.g. MLflow's ``MLmodel``) are not
    part of the bundle and not hashed; a listed domain folder that is missing is a :class:`BundleError`."""
    root = Path(path).resolve()
    meta = read_meta(root)
    files = [root / META_FILE]
    for name in meta.get("domains", {}):
        folder = domain_folder(root, name)
        if not folder.is_dir():
            raise BundleError(f"bundle {root}: domain folder {name}/ is missing")
        files += [_inside(f, root) for f in folder.rglob("*") if f.is_file() or f.is_symlink()]
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        rel = file.relative_to(root).as_posix().encode("utf-8")
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return HASH_PREFIX + digest.hexdigest()


def _load_array(file: Path) -> np.ndarray:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    try:
        return np.load(file, allow_pickle=False)
    except _UNREADABLE as exc:  # allow_pickle refusals included: an object array is not bundle data
        raise BundleError(f"bundle file {file} is unreadable (truncated or not a plain array): {exc}") from exc


def _load_csr(file: Path) -> sp.csr_matrix:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    try:
        return sp.load_npz(file).tocsr()
    except _UNREADABLE as exc:
        raise BundleError(f"bundle file {file} is unreadable (truncated or corrupt): {exc}") from exc


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except _UNREADABLE as exc:
        raise BundleError(f"bundle file {file} is unreadable (truncated or not plain arrays): {exc}") from exc


def _load_scorer(file: Path, config: dict[str, Any]) -> HistoryScorer:
    arrays = _load_npz(file)
    if "history" not in arrays:
        raise BundleError(f"{file} has no 'history' array")
    history = arrays.pop("history")
    recency = arrays.pop("recency", None)
    return HistoryScorer(config=config, weights=arrays, history=history, recency=recency)


def load_bundle(path: str | Path, domains: Sequence[str] | None = None) -> Bundle:
    """Load the bundle at ``path`` (all domains, or only ``domains``). Shapes are checked against bundle.json."""
    path = Path(path)
    meta = read_meta(path)
    listed = meta.get("domains", {})
    wanted = list(listed) if domains is None else list(domains)
    unknown = [d for d in wanted if d not in listed]
    if unknown:
        raise BundleError(f"bundle {path} has no domain(s) {unknown}; it has {sorted(listed)}")
    out: dict[str, DomainBundle] = {}
    for name in wanted:
        folder = domain_folder(path, name)
        want = listed[name]
        try:
            for file in folder.iterdir() if folder.is_dir() else ():
                if file.is_symlink():
                    _inside(file, path)
            ids_file = _inside(folder / "ids.json", path)
            try:
                ids = json.loads(ids_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BundleError(f"bundle file {ids_file} is unreadable: {exc}") from exc
            projection = None
            if (folder / "text_projection.npz").is_file():
                npz = _load_npz(_inside(folder / "text_projection.npz", path))
                projection = TextProjection(weight=npz["weight"].astype(np.float32),
                                            bias=npz["bias"].astype(np.float32))
            text_file = folder / "item_text_vectors.npy"
            scorer = None
            if want.get("scorer", "dot") == "history":
                scorer = _load_scorer(folder / "history_scorer.npz", want.get("history_scorer") or {})
            d = DomainBundle(
                item_vectors=_load_array(folder / "item_vectors.npy"),
                user_vectors=None if scorer is not None else _load_array(folder / "user_vectors.npy"),
                scorer=scorer,
                popularity=_load_array(folder / "popularity.npy"),
                seen=_load_csr(folder / "seen.npz"),
                titles=tuple(ids["title"]), raw_item=tuple(ids["raw_item"]), raw_user=tuple(ids["raw_user"]),
                item_text_vectors=_load_array(text_file) if text_file.is_file() else None,
                text_projection=projection,
            )
        except BundleError as exc:
            raise BundleError(f"bundle {path}, domain {name}: {exc}") from exc
        if (d.n_users, d.n_items, d.dim) != (want["n_users"], want["n_items"], want["dim"]):
            raise BundleError(f"bundle {path}, domain {name}: arrays are {d.n_users} users x {d.n_items} items x "
                              f"{d.dim} d but {META_FILE} says {want['n_users']} x {want['n_items']} x {want['dim']}")
        out[name] = d
    return Bundle(meta=meta, domains=out)
