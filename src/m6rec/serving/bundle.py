"""The serving bundle: everything the recommender service needs from a trained model, as plain arrays.

Every candidate model exports one bundle (``export_bundle``); the register stage logs it to MLflow and the
BentoML service loads it (``load_bundle``). A domain scores users in one of two ways:

* ``dot``: ``score(u, i) = user_vectors[u] @ item_vectors[i]``; any model whose scores factorise that way (MF,
  LightGCN, PureSVD, ...) exports its two matrices;
* ``history``: a user is their recent items, pooled by :class:`m6rec.models.attention.HistoryAttention` (multi-interest
  target attention or a mean): the bundle holds each user's history and the pooling's weights, and
  :mod:`m6rec.serving.scoring` rebuilds the module, so that serving scores exactly as the model did in evaluation and
  can show the attention behind a recommendation.

Nothing is pickled: arrays are ``.npy`` / ``.npz`` (loaded with ``allow_pickle=False``) and everything else is JSON.

Layout of a bundle folder::

    bundle.json                       format version, model, metrics, data_version, encoder, created, and
                                      per domain: n_users, n_items, dim, text_dim (0 without text vectors)
    <domain>/item_vectors.npy         float32 [n_items, d]
    <domain>/user_vectors.npy         float32 [n_users, d] (dot scorer)
    <domain>/history_scorer.npz       (history scorer) ``history`` int64 [n_users, L]: each user's last L items, oldest
                                      first, right-aligned, -1 padded; ``recency`` [K, L] (optional); every other key
                                      is a HistoryAttention state-dict entry; its constructor arguments are
                                      bundle.json's ``domains.<domain>.history_scorer``
    <domain>/popularity.npy           float32 [n_items]: train interactions per item (fallback ranking)
    <domain>/seen.npz                 scipy csr [n_users, n_items], train + valid items of each user (masked)
    <domain>/ids.json                 {"raw_item": [...], "title": [...], "raw_user": [...]} (source ids, display)
    <domain>/item_text_vectors.npy    optional float32 [n_items, text_dim]: sentence-encoder vectors of the items
    <domain>/text_projection.npz      optional: weight [text_dim, d], bias [d]; encoder space -> item space

The text projection maps a sentence-encoder vector ``t`` to ``t @ weight + bias`` in item space. Models with their
own projection export it; otherwise :func:`fit_text_projection` fits one by ridge regression from the items' text
vectors to their item vectors. Bundle-level ``meta`` keys: ``model`` (name, as in the metrics files), ``metrics``
(the model's ``{domain: {split: {metric: v}}}``), ``data_version`` (of the data the model was trained and
validated on: ``m6rec.tracking.data_version(paths=["data/validated"])``, so that the register stage can tell whether
the metrics still apply), ``encoder`` (sentence-encoder name as in the ``text_embeddings`` stage; required when a
domain has a text projection), optionally ``encoder_max_seq_length``, ``created`` (ISO time, filled in by
``export_bundle``) and ``explainer`` (default ``"similarity"``, see ``m6rec.serving.recommender``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # the service loads bundles without pandas: keep its start-up light
    from m6rec.data.dataset import DomainData, Prepared

FORMAT = "m6rec-bundle"
FORMAT_VERSION = 2  # 2: optional history scorer (1: dot products only; still read)
META_FILE = "bundle.json"
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class BundleError(ValueError):
    """A bundle folder or a DomainBundle is malformed (names the file or array at fault)."""


@dataclass(frozen=True, eq=False)
class TextProjection:
    """Affine map from sentence-encoder space to item space: ``t @ weight + bias``."""

    weight: np.ndarray  # float32 [text_dim, d]
    bias: np.ndarray  # float32 [d]

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[1],):
            raise BundleError(f"text_projection: weight must be [text_dim, d] and bias [d], got "
                              f"{self.weight.shape} and {self.bias.shape}")

    def apply(self, text_vectors: np.ndarray) -> np.ndarray:
        """Project ``[n, text_dim]`` (or ``[text_dim]``) encoder vectors into item space."""
        return (np.asarray(text_vectors, dtype=np.float32) @ self.weight + self.bias).astype(np.float32)


@dataclass(frozen=True, eq=False)
class HistoryScorer:
    """Users scored from their recent items by a :class:`m6rec.models.attention.HistoryAttention`.

    ``config``: its constructor arguments (``dim``, ``n_interests``, ``max_len``, ``pooling``, ``hidden``);
    ``weights``: its state dict as float32 arrays; ``recency``: the domain's recency bias ``[K, max_len]`` (None
    without one); ``history``: int64 ``[n_users, max_len]``, each user's items oldest first, right-aligned, -1 padded.
    """

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    history: np.ndarray
    recency: np.ndarray | None = None

    def __post_init__(self) -> None:
        missing = sorted({"dim", "n_interests", "max_len", "pooling"} - set(self.config))
        if missing:
            raise BundleError(f"history_scorer config lacks {missing}")
        length = int(self.config["max_len"])
        if self.history.ndim != 2 or self.history.shape[1] != length:
            raise BundleError(f"history_scorer.history must be [n_users, {length}], got {self.history.shape}")
        if not np.issubdtype(self.history.dtype, np.integer):
            raise BundleError(f"history_scorer.history must hold integer item indices, got {self.history.dtype}")
        if self.recency is not None and (self.recency.ndim != 2 or self.recency.shape[1] != length):
            raise BundleError(f"history_scorer.recency must be [K, {length}], got {self.recency.shape}")
        for name, arr in self.weights.items():
            if name in _SCORER_RESERVED:
                raise BundleError(f"history_scorer weight name {name!r} is reserved")
            if not np.isfinite(arr).all():
                raise BundleError(f"history_scorer weight {name} holds NaN or inf values")


_SCORER_RESERVED = ("history", "recency")


@dataclass(frozen=True, eq=False)
class DomainBundle:
    """One domain's serving arrays (shapes checked on construction). Exactly one of ``user_vectors`` (dot scorer)
    and ``scorer`` (history scorer) is given."""

    item_vectors: np.ndarray  # float32 [n_items, d]
    user_vectors: np.ndarray | None  # float32 [n_users, d]; None with a history scorer
    popularity: np.ndarray  # float32 [n_items]
    seen: sp.csr_matrix  # [n_users, n_items], train + valid
    titles: tuple[str, ...]  # [n_items]
    raw_item: tuple[str, ...]  # [n_items]
    raw_user: tuple[str, ...]  # [n_users]
    item_text_vectors: np.ndarray | None = None  # float32 [n_items, text_dim]
    text_projection: TextProjection | None = None
    scorer: HistoryScorer | None = None

    def __post_init__(self) -> None:
        n_items, d = _shape2(self.item_vectors, "item_vectors")
        if (self.user_vectors is None) == (self.scorer is None):
            raise BundleError("a domain needs exactly one of user_vectors (dot scorer) and scorer (history scorer)")
        if self.scorer is None:
            n_users, du = _shape2(self.user_vectors, "user_vectors")
            if du != d:
                raise BundleError(f"user_vectors has dim {du} but item_vectors has dim {d}")
        else:
            n_users = int(self.scorer.history.shape[0])
            if int(self.scorer.config["dim"]) != d:
                raise BundleError(f"history_scorer dim {self.scorer.config['dim']} != item_vectors dim {d}")
            hist = self.scorer.history
            if hist.size and (hist.max() >= n_items or hist.min() < -1):
                raise BundleError(f"history_scorer.history holds item indices outside [-1, {n_items})")
        checks = [
            ("popularity", self.popularity.shape, (n_items,)),
            ("seen", self.seen.shape, (n_users, n_items)),
            ("titles", (len(self.titles),), (n_items,)),
            ("raw_item", (len(self.raw_item),), (n_items,)),
            ("raw_user", (len(self.raw_user),), (n_users,)),
        ]
        if self.item_text_vectors is not None:
            checks.append(("item_text_vectors", self.item_text_vectors.shape[:1], (n_items,)))
        if self.text_projection is not None:
            checks.append(("text_projection.bias", self.text_projection.bias.shape, (d,)))
            if self.item_text_vectors is not None:
                checks.append(("text_projection.weight", self.text_projection.weight.shape[:1],
                               self.item_text_vectors.shape[1:2]))
        for name, got, want in checks:
            if tuple(got) != tuple(want):
                raise BundleError(f"{name} has shape {tuple(got)}, expected {tuple(want)}")
        if len(set(self.raw_item)) != n_items:
            raise BundleError("raw_item ids are not unique")
        if len(set(self.raw_user)) != n_users:
            raise BundleError("raw_user ids are not unique")

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @property
    def n_users(self) -> int:
        if self.scorer is not None:
            return int(self.scorer.history.shape[0])
        return int(self.user_vectors.shape[0])

    @property
    def kind(self) -> str:
        """How users are scored: ``"dot"`` or ``"history"``."""
        return "dot" if self.scorer is None else "history"

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def text_dim(self) -> int:
        if self.text_projection is not None:
            return int(self.text_projection.weight.shape[0])
        return 0 if self.item_text_vectors is None else int(self.item_text_vectors.shape[1])


def _shape2(arr: np.ndarray, name: str) -> tuple[int, int]:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise BundleError(f"{name} must be a 2-D numpy array, got {getattr(arr, 'shape', type(arr).__name__)}")
    if not np.isfinite(arr).all():
        raise BundleError(f"{name} holds NaN or inf values")
    return int(arr.shape[0]), int(arr.shape[1])


def fit_text_projection(text_vecs: np.ndarray, item_vecs: np.ndarray, alpha: float = 1.0,
                        mask: np.ndarray | None = None) -> TextProjection:
    """Ridge regression from text vectors to item vectors (with an unpenalised bias).

    ``W = (Xc^T Xc + alpha I)^-1 Xc^T Yc`` on the centred rows selected by ``mask`` (e.g. items seen in training:
    cold or unseen items have untrained item vectors and should not be fitted), ``b = mean(Y) - mean(X) W``.
    """
    X = np.asarray(text_vecs, dtype=np.float64)
    Y = np.asarray(item_vecs, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"text_vecs [n, text_dim] and item_vecs [n, d] must have the same rows, got "
                         f"{X.shape} and {Y.shape}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (X.shape[0],):
            raise ValueError(f"mask has shape {mask.shape}, expected ({X.shape[0]},)")
        X, Y = X[mask], Y[mask]
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to fit a text projection, got {X.shape[0]}")
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - x_mean, Y - y_mean
    gram = Xc.T @ Xc + alpha * np.eye(X.shape[1])
    W = np.linalg.solve(gram, Xc.T @ Yc)
    b = y_mean - x_mean @ W
    return TextProjection(weight=W.astype(np.float32), bias=b.astype(np.float32))


def raw_user_ids(prepared: Prepared, domain: str) -> tuple[str, ...]:
    """Source user ids of ``domain`` in local index order."""
    users = prepared.users[prepared.users["domain"] == domain].sort_values("user")
    return tuple(users["raw_user"].astype(str))


def make_domain_bundle(data: DomainData, raw_user: Sequence[str], item_vectors: np.ndarray,
                       user_vectors: np.ndarray | None, item_text_vectors: np.ndarray | None = None,
                       text_projection: TextProjection | None = None,
                       ridge_alpha: float = 1.0, scorer: HistoryScorer | None = None) -> DomainBundle:
    """A DomainBundle from a model's vectors (``user_vectors``, or a history ``scorer``) and the domain's data.

    Popularity = train counts; seen = train + valid; titles and raw ids from ``data.items`` / ``raw_user``. With
    text vectors and no ``text_projection``, one is fitted with :func:`fit_text_projection` on the items that have
    training interactions (cold and unseen items have no learnt vector to regress onto).
    """
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if user_vectors is not None:
        user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
    popularity = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32)
    seen = (data.train + data.valid).tocsr()
    seen.data[:] = 1.0
    seen = sp.csr_matrix(seen, dtype=np.float32)
    seen.sort_indices()
    if item_text_vectors is not None:
        item_text_vectors = np.ascontiguousarray(item_text_vectors, dtype=np.float32)
        if text_projection is None:
            text_projection = fit_text_projection(item_text_vectors, item_vectors, ridge_alpha, mask=popularity > 0)
    return DomainBundle(
        item_vectors=item_vectors, user_vectors=user_vectors, popularity=popularity, seen=seen,
        titles=tuple(data.items["title"].fillna("").astype(str)),
        raw_item=tuple(data.items["raw_item"].astype(str)), raw_user=tuple(str(u) for u in raw_user),
        item_text_vectors=item_text_vectors, text_projection=text_projection, scorer=scorer,
    )


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded bundle: ``meta`` (the whole bundle.json, per-domain shapes under ``"domains"``) and the arrays."""

    meta: dict[str, Any]
    domains: dict[str, DomainBundle]


def export_bundle(path: str | Path, domains: Mapping[str, DomainBundle], meta: Mapping[str, Any]) -> Path:
    """Write a bundle folder at ``path`` (replaced atomically if it exists); returns ``path``."""
    path = Path(path)
    if not domains:
        raise BundleError("a bundle needs at least one domain")
    for name in domains:
        if not _DOMAIN_NAME.match(name):
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
