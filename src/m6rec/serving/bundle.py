"""The serving bundle format: everything the recommender service needs from a trained model, as plain arrays.

Every candidate model exports one bundle (:func:`m6rec.serving.export.export_model` builds it from the model's
``export(domain)`` and the domain's data); the register stage logs it to MLflow and the BentoML service loads it
(:func:`m6rec.serving.bundle_io.load_bundle`). This module holds the format only: the dataclasses, their checks and
the meta schema; :mod:`m6rec.serving.bundle_io` reads and writes a folder. Neither touches pandas or ``m6rec.data``,
so that the service starts light. A domain scores users in one of two ways:

* ``dot``: ``score(u, i) = user_vectors[u] @ item_vectors[i]``; any model whose scores factorise that way (MF,
  LightGCN, PureSVD, ...) exports its two matrices;
* ``history``: a user is their recent items, pooled by :class:`m6rec.models.attention.HistoryAttention` (multi-interest
  target attention or a mean): the bundle holds each user's history and the pooling's weights, and
  :mod:`m6rec.serving.scoring` rebuilds the module, so that serving scores exactly as the model did in evaluation and
  can show the attention behind a recommendation;
* ``itemitem`` (ItemKNN, EASE): ``score(u) = history[u] @ matrix``; ``history`` is each user's train + valid row,
  ``matrix`` sparse ``[n_items, n_items]`` or dense over the ``active`` items;
* ``graphfilter`` (GF-CF): ``score(u) = (h R̃ᵀ) R̃ + alpha ((h * inv_degree) basisᵀ basis) * sqrt_degree`` with
  ``h = history[u]``;
* ``popularity`` (MostPopular): every user scores ``counts``;
* ``blend``: ``sum_c weight_c * z_c(u)`` over component domain bundles, with ``z_c`` the per-user z-score of component
  c's scores over the catalogue (``(s - mean) / std``).

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
    <domain>/history.npz              (itemitem, graphfilter) scipy csr [n_users, n_items]: train + valid, binary
    <domain>/item_matrix.npz|.npy     (itemitem) csr [n_items, n_items], or dense [n_active, n_active] with
    <domain>/item_active.npy          int64 [n_active] (dense only); bundle.json ``item_matrix``: sparse | dense
    <domain>/filter_norm.npz          (graphfilter) csr R̃ [n_train_users, n_items]
    <domain>/filter.npz               (graphfilter) basis [k, n_items], inv_degree, sqrt_degree [n_items]; alpha in
                                      bundle.json ``graph_filter``
    <domain>/popularity_scores.npy    (popularity) float32 [n_items]
    <domain>/components/<i>/          (blend) one domain folder per component, same layout; bundle.json ``blend``:
                                      names, weights, standardise, components (each component's domain entry)
    <domain>/popularity.npy           float32 [n_items]: train interactions per item (fallback ranking)
    <domain>/seen.npz                 scipy csr [n_users, n_items], train + valid items of each user (masked)
    <domain>/ids.json                 {"raw_item": [...], "title": [...], "raw_user": [...]} (source ids, display)
    <domain>/item_text_vectors.npy    optional float32 [n_items, text_dim]: sentence-encoder vectors of the items
    <domain>/text_projection.npz      optional: weight [text_dim, d], bias [d]; encoder space -> item space

The text projection maps a sentence-encoder vector ``t`` to ``t @ weight + bias`` in item space (the model's own, or
fitted by ridge regression by :func:`m6rec.serving.export.fit_text_projection`). Bundle-level ``meta`` keys:
``model`` (name), ``stage``, ``metrics`` (the schema of the metrics files, ``{domain: {model: {split: {metric:
v}}}}`` with model = ``meta["model"]``; bundles written before carry ``{domain: {split: {metric: v}}}``: read both
through :func:`meta_metrics`), ``data_version`` (of the data the model was trained and validated on:
``m6rec.tracking.data_version(paths=["data/validated"])``, so that the register stage can tell whether the metrics
still apply), ``encoder`` (sentence-encoder name as in the ``text_embeddings`` stage; required when a domain has a
text projection), optionally ``encoder_max_seq_length``, ``created`` (ISO time, in bundles written before bundles became
content-deterministic only) and ``explainer`` (default ``"similarity"``, see ``m6rec.serving.recommender``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from m6rec.serving.bundle_scorers import BundleError, HistoryScorer, RowScorer

FORMAT = "m6rec-bundle"
FORMAT_VERSION = 3  # 3: item-item, graph-filter, popularity and blend scorers; 2: history scorer; 1: dot only (all read)
META_FILE = "bundle.json"
METRIC_SPLITS = ("valid", "test", "cold")  # the evaluation splits a bundle's meta records
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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
    scorer: "HistoryScorer | RowScorer | None" = None

    def __post_init__(self) -> None:
        n_items, d = _shape2(self.item_vectors, "item_vectors")
        if (self.user_vectors is None) == (self.scorer is None):
            raise BundleError("a domain needs exactly one of user_vectors (dot scorer) and scorer (history scorer)")
        if self.scorer is not None and not isinstance(self.scorer, HistoryScorer):
            if not hasattr(self.scorer, "check"):
                raise BundleError(f"unknown scorer type {type(self.scorer).__name__}")
            self.scorer.check(n_items)
            n_users = self.scorer.n_users
        elif self.scorer is None:
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
        if isinstance(self.scorer, HistoryScorer):
            return int(self.scorer.history.shape[0])
        if self.scorer is not None:
            return self.scorer.n_users
        return int(self.user_vectors.shape[0])

    @property
    def kind(self) -> str:
        """How users are scored: ``dot``, ``history``, ``itemitem``, ``graphfilter``, ``popularity`` or ``blend``."""
        return "dot" if self.scorer is None else self.scorer.kind

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


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded bundle: ``meta`` (the whole bundle.json, per-domain shapes under ``"domains"``) and the arrays."""

    meta: dict[str, Any]
    domains: dict[str, DomainBundle]




def meta_metrics(meta: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A bundle meta's metrics in the metrics files' schema, ``{domain: {model: {split: {metric: v}}}}``.

    The one place that reads both shapes: bundles written before this schema (served champions in existing
    registries) carry ``{domain: {split: {metric: v}}}``, which is filed under ``meta["model"]``.
    """
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise BundleError(f"bundle meta 'metrics' must be a mapping, got {type(metrics).__name__}")
    model = str(meta.get("model") or "model")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for domain, entry in metrics.items():
        if not isinstance(entry, Mapping):
            raise BundleError(f"bundle meta metrics[{domain!r}] must be a mapping, got {type(entry).__name__}")
        out[str(domain)] = {model: dict(entry)} if _is_split_level(entry) else {str(m): dict(r)
                                                                                for m, r in entry.items()}
    return out


def _is_split_level(entry: Mapping[str, Any]) -> bool:
    # Old shape: the split names sit right under the domain and hold {metric: number}; in the new one they sit a
    # level lower, under the model name.
    splits = [entry[s] for s in METRIC_SPLITS if s in entry]
    return bool(splits) and all(isinstance(r, Mapping) and all(not isinstance(v, Mapping) for v in r.values())
                                for r in splits)
