"""Writing and reading a serving bundle folder (the format is :mod:`m6rec.serving.bundle`'s docstring).

``export_bundle`` writes a folder atomically; ``read_meta`` reads its ``bundle.json`` (cheap, no arrays);
``load_bundle`` loads the arrays and checks them against ``bundle.json``. Format versions 1 (dot products only) and
2 (optional history scorer) are read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
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
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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


def _load_array(file: Path) -> np.ndarray:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    return np.load(file, allow_pickle=False)


def _load_csr(file: Path) -> sp.csr_matrix:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    return sp.load_npz(file).tocsr()


def _load_scorer(file: Path, config: dict[str, Any]) -> HistoryScorer:
    if not file.is_file():
        raise BundleError(f"bundle file missing: {file}")
    with np.load(file, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
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
        folder = path / name
        ids_file = folder / "ids.json"
        if not ids_file.is_file():
            raise BundleError(f"bundle file missing: {ids_file}")
        ids = json.loads(ids_file.read_text(encoding="utf-8"))
        projection = None
        if (folder / "text_projection.npz").is_file():
            with np.load(folder / "text_projection.npz", allow_pickle=False) as npz:
                projection = TextProjection(weight=npz["weight"].astype(np.float32),
                                            bias=npz["bias"].astype(np.float32))
        text_file = folder / "item_text_vectors.npy"
        want = listed[name]
        try:
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
