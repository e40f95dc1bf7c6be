"""Writing and reading a serving bundle folder (the format is :mod:`m6rec.serving.bundle`'s docstring).

``export_bundle`` writes a folder atomically; ``read_meta`` reads its ``bundle.json`` (cheap, no arrays);
``load_bundle`` loads the arrays and checks them against ``bundle.json``; ``content_hash`` is the sha256 recorded
at registration and checked before serving. Format versions 1 (dot products only), 2 (optional history scorer) and
3 (item-item, graph-filter, popularity and blend scorers) are read.

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

from m6rec.serving.bundle import DOMAIN_NAME, FORMAT, FORMAT_VERSION, META_FILE, Bundle, DomainBundle, TextProjection
from m6rec.serving.bundle_scorers import (
    BlendScorer,
    BundleError,
    GraphFilterScorer,
    HistoryScorer,
    ItemItemScorer,
    PopularityScorer,
)


def domain_entry(d: DomainBundle) -> dict[str, Any]:
    """A domain's entry in bundle.json's ``domains`` (a blend's lists its components' entries)."""
    entry: dict[str, Any] = {"n_users": d.n_users, "n_items": d.n_items, "dim": d.dim, "text_dim": d.text_dim,
                             "has_text_vectors": d.item_text_vectors is not None,
                             "has_text_projection": d.text_projection is not None, "scorer": d.kind}
    sc = d.scorer
    if isinstance(sc, HistoryScorer):
        entry["history_scorer"] = dict(sc.config)
    elif isinstance(sc, ItemItemScorer):
        entry["item_matrix"] = "dense" if sc.dense else "sparse"
    elif isinstance(sc, GraphFilterScorer):
        entry["graph_filter"] = {"alpha": float(sc.alpha), "rank": int(sc.basis.shape[0])}
    elif isinstance(sc, BlendScorer):
        entry["blend"] = {"names": list(sc.names), "weights": [float(w) for w in sc.weights],
                          "standardise": sc.standardise, "components": [domain_entry(c) for c in sc.components]}
    return entry


def _write_domain(folder: Path, d: DomainBundle) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "item_vectors.npy", d.item_vectors.astype(np.float32, copy=False))
    sc = d.scorer
    if sc is None:
        np.save(folder / "user_vectors.npy", d.user_vectors.astype(np.float32, copy=False))
    elif isinstance(sc, HistoryScorer):
        extra = {} if sc.recency is None else {"recency": sc.recency.astype(np.float32)}
        np.savez(folder / "history_scorer.npz", history=sc.history.astype(np.int64), **extra,
                 **{k: np.asarray(v, dtype=np.float32) for k, v in sc.weights.items()})
    elif isinstance(sc, ItemItemScorer):
        sp.save_npz(folder / "history.npz", sp.csr_matrix(sc.history, dtype=np.float32))
        if sc.dense:
            np.save(folder / "item_matrix.npy", np.asarray(sc.matrix, dtype=np.float32))
            np.save(folder / "item_active.npy", np.asarray(sc.active, dtype=np.int64))
        else:
            sp.save_npz(folder / "item_matrix.npz", sp.csr_matrix(sc.matrix, dtype=np.float32))
    elif isinstance(sc, GraphFilterScorer):
        sp.save_npz(folder / "history.npz", sp.csr_matrix(sc.history, dtype=np.float32))
        sp.save_npz(folder / "filter_norm.npz", sp.csr_matrix(sc.norm, dtype=np.float32))
        np.savez(folder / "filter.npz", basis=sc.basis.astype(np.float32),
                 inv_degree=sc.inv_degree.astype(np.float32), sqrt_degree=sc.sqrt_degree.astype(np.float32))
    elif isinstance(sc, PopularityScorer):
        np.save(folder / "popularity_scores.npy", sc.counts.astype(np.float32))
    elif isinstance(sc, BlendScorer):
        for i, c in enumerate(sc.components):
            _write_domain(folder / "components" / str(i), c)
    np.save(folder / "popularity.npy", d.popularity.astype(np.float32, copy=False))
    sp.save_npz(folder / "seen.npz", sp.csr_matrix(d.seen, dtype=np.float32))
    ids = {"raw_item": list(d.raw_item), "title": list(d.titles), "raw_user": list(d.raw_user)}
    (folder / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    if d.item_text_vectors is not None:
        np.save(folder / "item_text_vectors.npy", d.item_text_vectors.astype(np.float32, copy=False))
    if d.text_projection is not None:
        np.savez(folder / "text_projection.npz", weight=d.text_projection.weight, bias=d.text_projection.bias)


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
        "domains": {name: domain_entry(d) for name, d in domains.items()},
    }
    text = json.dumps(full_meta, indent=2, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        for name, d in domains.items():
            _write_domain(tmp / name, d)
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


def _read_row_scorer(folder: Path, want: Mapping[str, Any], root: Path) -> Any:
    kind = want.get("scorer", "dot")
    if kind == "itemitem":
        history = _load_csr(_inside(folder / "history.npz", root))
        if want.get("item_matrix") == "dense":
            return ItemItemScorer(history=history, matrix=_load_array(_inside(folder / "item_matrix.npy", root)),
                                  active=_load_array(_inside(folder / "item_active.npy", root)))
        return ItemItemScorer(history=history, matrix=_load_csr(_inside(folder / "item_matrix.npz", root)))
    if kind == "graphfilter":
        arrays = _load_npz(_inside(folder / "filter.npz", root))
        missing = sorted({"basis", "inv_degree", "sqrt_degree"} - set(arrays))
        if missing:
            raise BundleError(f"{folder / 'filter.npz'} lacks {missing}")
        alpha = (want.get("graph_filter") or {}).get("alpha")
        if not isinstance(alpha, (int, float)):
            raise BundleError(f"{META_FILE} gives no numeric graph_filter.alpha")
        return GraphFilterScorer(history=_load_csr(_inside(folder / "history.npz", root)),
                                 norm=_load_csr(_inside(folder / "filter_norm.npz", root)),
                                 basis=arrays["basis"], inv_degree=arrays["inv_degree"],
                                 sqrt_degree=arrays["sqrt_degree"], alpha=float(alpha))
    if kind == "popularity":
        return PopularityScorer(counts=_load_array(_inside(folder / "popularity_scores.npy", root)),
                                users=int(want["n_users"]))
    if kind == "blend":
        spec = want.get("blend") or {}
        comps = spec.get("components")
        if not isinstance(comps, list) or not comps:
            raise BundleError(f"{META_FILE} blend entry lists no components")
        parts = tuple(_read_domain(folder / "components" / str(i), c, root) for i, c in enumerate(comps))
        return BlendScorer(components=parts, names=tuple(str(n) for n in spec.get("names", [])),
                           weights=tuple(float(w) for w in spec.get("weights", [])),
                           standardise=str(spec.get("standardise", "user-z")))
    raise BundleError(f"unknown scorer kind {kind!r}")


def _read_domain(folder: Path, want: Mapping[str, Any], path: Path) -> DomainBundle:
    """One domain folder (or a blend's component folder) as a DomainBundle, checked against its entry."""
    if not isinstance(want, Mapping):
        raise BundleError(f"{META_FILE} domain entry must be a mapping")
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
        projection = TextProjection(weight=npz["weight"].astype(np.float32), bias=npz["bias"].astype(np.float32))
    text_file = folder / "item_text_vectors.npy"
    kind = want.get("scorer", "dot")
    scorer = None
    if kind == "history":
        scorer = _load_scorer(folder / "history_scorer.npz", want.get("history_scorer") or {})
    elif kind != "dot":
        scorer = _read_row_scorer(folder, want, path)
    try:
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
    except KeyError as exc:
        raise BundleError(f"{ids_file} or {META_FILE} lacks {exc}") from exc
    if (d.n_users, d.n_items, d.dim) != (want.get("n_users"), want.get("n_items"), want.get("dim")):
        raise BundleError(f"arrays are {d.n_users} users x {d.n_items} items x {d.dim} d but {META_FILE} says "
                          f"{want.get('n_users')} x {want.get('n_items')} x {want.get('dim')}")
    return d


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
        try:
            out[name] = _read_domain(folder, listed[name], path)
        except BundleError as exc:
            raise BundleError(f"bundle {path}, domain {name}: {exc}") from exc
    return Bundle(meta=meta, domains=out)
