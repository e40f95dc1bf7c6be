"""Serving bundles from model exports: the one exporter every model stage calls.

A model hands over plain arrays (``model.export(domain) -> DotExport | HistoryExport``, :mod:`m6rec.models.base`);
this module adds what comes from the domain's data and writes the bundle (format: :mod:`m6rec.serving.bundle`):

- popularity = train interactions per item, seen = train + valid items of each user, titles and raw item ids from
  ``data.items``, raw user ids from ``prepared.users`` (:func:`raw_user_ids`);
- a history scorer's per-user history = each user's last ``max_len`` train + valid items, the input of test-time
  scoring (:func:`m6rec.data.sequences.split_histories`);
- a text projection: the model's own if it exports one, else fitted by ridge regression on the items that have
  training interactions (:func:`fit_text_projection`);
- a row scorer's (item-item, graph filter) per-user history = each user's train + valid row (binary), and, where
  the model exports no item vectors, item vectors from a truncated SVD of the training matrix
  (:func:`item_embedding`, for similar items).

Typical use in a stage::

    meta = bundle_meta("bprmf", "baselines", {d: metrics[d]["bprmf"] for d in datas}, data_version)
    export_model(cfg.bundle, models, datas, prepared, meta)          # one model, or {domain: model}

and for a family of fine-tuned targets on top of an existing bundle::

    export_bundle(cfg.bundle, *merge_bundles(cfg.source_bundle, export_domains(models, targets, prepared), meta))

This module reads pandas-backed :class:`m6rec.data.dataset.DomainData`; the service never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from m6rec.data.dataset import DomainData, Prepared
from m6rec.data.sequences import split_histories
from m6rec.models.base import (
    ROW_EXPORTS,
    DotExport,
    GraphFilterExport,
    HistoryExport,
    ItemItemExport,
    PopularityExport,
    Recommender,
)
from m6rec.serving.bundle import METRIC_SPLITS, DomainBundle, TextProjection, meta_metrics
from m6rec.serving.bundle_io import export_bundle, load_bundle
from m6rec.serving.bundle_scorers import BundleError, GraphFilterScorer, HistoryScorer, ItemItemScorer, PopularityScorer

log = logging.getLogger(__name__)

_RESERVED_META = ("format", "format_version", "domains", "created")  # export_bundle writes these itself


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


def item_embedding(train: sp.csr_matrix, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item vectors ``V_k S_k^1/2`` of a rank-``dim`` truncated SVD of the binary training matrix (float32
    ``[n_items, dim']``, dim' = min(dim, min(shape) - 1), at least 1) for the kinds that score without vectors."""
    from scipy.sparse.linalg import svds

    x = sp.csr_matrix(train, dtype=np.float64)
    x.data[:] = 1.0
    k = max(1, min(dim, min(x.shape) - 1))
    if x.nnz == 0 or min(x.shape) < 2:
        return np.zeros((x.shape[1], k), np.float32)
    v0 = np.random.default_rng(seed).standard_normal(min(x.shape))
    _, s, vt = svds(x, k=k, v0=v0)
    return np.ascontiguousarray((vt.T * np.sqrt(s)[None, :]), dtype=np.float32)


def input_rows(data: DomainData) -> sp.csr_matrix:
    """Each user's train + valid interactions as a binary float32 csr ``[n_users, n_items]`` (the input a row
    scorer serves from, and the evaluation protocol's test-time input)."""
    rows = sp.csr_matrix(data.train + data.valid, dtype=np.float32)
    rows.data[:] = 1.0
    rows.eliminate_zeros()
    rows.sort_indices()
    return rows


def row_scorer(spec: ItemItemExport | GraphFilterExport | PopularityExport, data: DomainData
               ) -> ItemItemScorer | GraphFilterScorer | PopularityScorer:
    """The bundle scorer of a row export, with the users' train + valid rows as their history."""
    if isinstance(spec, PopularityExport):
        return PopularityScorer(counts=np.asarray(spec.counts, dtype=np.float32), users=data.n_users)
    if isinstance(spec, ItemItemExport):
        dense = not sp.issparse(spec.matrix)
        active = None
        if dense:
            active = np.arange(data.n_items, dtype=np.int64) if spec.active is None else \
                np.asarray(spec.active, dtype=np.int64)
        return ItemItemScorer(history=input_rows(data), active=active,
                              matrix=np.ascontiguousarray(spec.matrix, dtype=np.float32) if dense
                              else sp.csr_matrix(spec.matrix, dtype=np.float32))
    return GraphFilterScorer(history=input_rows(data), norm=sp.csr_matrix(spec.norm, dtype=np.float32),
                             basis=np.ascontiguousarray(spec.basis, dtype=np.float32),
                             inv_degree=np.asarray(spec.inv_degree, dtype=np.float32),
                             sqrt_degree=np.asarray(spec.sqrt_degree, dtype=np.float32), alpha=float(spec.alpha))


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


def domain_bundle(spec: DotExport | HistoryExport, data: DomainData, raw_user: Sequence[str],
                  ridge_alpha: float = 1.0) -> DomainBundle:
    """One domain's serving arrays from a model's export and the domain's data (see the module docstring).

    A dot export's own text projection is kept only where the domain has item text vectors (a domain without text
    was not part of what the projection was trained on); a history export's projection is always fitted.
    """
    if isinstance(spec, ROW_EXPORTS):
        item_vectors = spec.item_vectors if spec.item_vectors is not None else item_embedding(data.train)
        if np.shape(item_vectors)[:1] != (data.n_items,):
            raise BundleError(f"{data.name}: the export's item_vectors have shape {np.shape(item_vectors)}, "
                              f"expected [{data.n_items}, d] (the domain's items)")
        return make_domain_bundle(data, raw_user, item_vectors, None, ridge_alpha=ridge_alpha,
                                  scorer=row_scorer(spec, data))
    if not isinstance(spec, (DotExport, HistoryExport)):
        raise TypeError(f"{data.name}: expected a model export (m6rec.models.base.Export), got "
                        f"{type(spec).__name__}")
    if np.ndim(spec.item_vectors) != 2 or np.shape(spec.item_vectors)[0] != data.n_items:
        raise BundleError(f"{data.name}: the export's item_vectors have shape {np.shape(spec.item_vectors)}, "
                          f"expected [{data.n_items}, d] (the domain's items)")
    if isinstance(spec, HistoryExport):
        scorer = HistoryScorer(
            config=dict(spec.config), weights={k: np.asarray(v, dtype=np.float32) for k, v in spec.weights.items()},
            history=split_histories(data, spec.max_len)["test"],
            recency=None if spec.recency is None else np.asarray(spec.recency, dtype=np.float32))
        return make_domain_bundle(data, raw_user, spec.item_vectors, None, item_text_vectors=spec.item_text_vectors,
                                  ridge_alpha=ridge_alpha, scorer=scorer)
    if np.shape(spec.user_vectors)[:1] != (data.n_users,):
        raise BundleError(f"{data.name}: the export's user_vectors have shape {np.shape(spec.user_vectors)}, "
                          f"expected [{data.n_users}, d] (the domain's users)")
    projection = None
    if spec.text_projection is not None and spec.item_text_vectors is not None:
        weight, bias = spec.text_projection
        projection = TextProjection(weight=np.asarray(weight, dtype=np.float32),
                                    bias=np.asarray(bias, dtype=np.float32))
    return make_domain_bundle(data, raw_user, spec.item_vectors, spec.user_vectors,
                              item_text_vectors=spec.item_text_vectors, text_projection=projection,
                              ridge_alpha=ridge_alpha)


def bundle_meta(model_name: str, stage: str, metrics: Mapping[str, Mapping[str, Any]], data_version: str,
                encoder: str | None = None, encoder_max_seq_length: int | None = None, **extra: Any) -> dict[str, Any]:
    """Bundle-level meta. ``metrics``: the model's own results per domain, ``{domain: {"valid": {...}, "test":
    {...}, "cold": {...}?, other keys}}`` (a metrics file's ``{domain: {model: ...}}`` one level down).

    Stored in the metrics files' schema, ``{domain: {model_name: {split: {metric: v}}}}``, keeping the evaluation
    splits only. The encoder keys are written only with an ``encoder``; ``extra`` keys are added as they are.
    """
    reserved = sorted(set(extra) & set(_RESERVED_META))
    if reserved:
        raise ValueError(f"bundle_meta: {reserved} are written by export_bundle, not passed in")
    recorded: dict[str, dict[str, Any]] = {}
    for domain, results in metrics.items():
        if not isinstance(results, Mapping) or not any(s in results for s in METRIC_SPLITS):
            raise ValueError(f"bundle_meta: metrics[{domain!r}] has none of the splits {list(METRIC_SPLITS)}: pass "
                             f"the model's results per domain ({{domain: {{split: ...}}}}), not a whole metrics file")
        recorded[domain] = {model_name: {s: results[s] for s in METRIC_SPLITS if s in results}}
    meta: dict[str, Any] = {"model": model_name, "stage": stage, "data_version": data_version, "metrics": recorded}
    if encoder:
        meta.update(encoder=encoder, encoder_max_seq_length=encoder_max_seq_length)
    meta.update(extra)
    return meta


def export_domains(model: Recommender | Mapping[str, Recommender], datas: Mapping[str, DomainData],
                   prepared: Prepared, ridge_alpha: float = 1.0) -> dict[str, DomainBundle]:
    """``model.export(d)`` of every domain of ``datas`` as DomainBundles; ``model`` is one model for all domains
    or one per domain (single-domain models, fine-tuned targets)."""
    models = model if isinstance(model, Mapping) else dict.fromkeys(datas, model)
    missing = [d for d in datas if d not in models]
    if missing:
        raise KeyError(f"no model for domain(s) {missing}; models are given for {sorted(models)}")
    return {d: domain_bundle(models[d].export(d, known=data.train + data.valid) if getattr(models[d], "folds_in", False)
                             else models[d].export(d), data, raw_user_ids(prepared, d), ridge_alpha)
            for d, data in datas.items()}


def export_model(path: str | Path, model: Recommender | Mapping[str, Recommender], datas: Mapping[str, DomainData],
                 prepared: Prepared, meta: Mapping[str, Any], ridge_alpha: float = 1.0) -> Path:
    """Write the serving bundle of ``model`` on every domain of ``datas`` at ``path``; returns ``path``.

    ``meta`` comes from :func:`bundle_meta`.
    """
    domains = export_domains(model, datas, prepared, ridge_alpha)
    log.info("exporting %s (%s) to %s", meta.get("model"), ", ".join(f"{d}: {b.kind}" for d, b in domains.items()),
             path)
    return export_bundle(path, domains, meta)


def merge_bundles(source: str | Path, new_domains: Mapping[str, DomainBundle], meta: Mapping[str, Any]
                  ) -> tuple[dict[str, DomainBundle], dict[str, Any]]:
    """The domains and meta of one bundle made of the bundle at ``source`` plus ``new_domains`` (which replace
    source domains of the same name), for :func:`m6rec.serving.bundle_io.export_bundle`.

    ``meta`` (from :func:`bundle_meta`) names the merged model and records the new domains' metrics; each source
    domain keeps its recorded metrics, filed under the merged model's name. The encoder is the source's unless
    ``meta`` names one; two different encoders cannot share a bundle.
    """
    src = load_bundle(source)
    model = str(meta["model"])
    src_model = str(src.meta.get("model") or "model")
    metrics: dict[str, dict[str, Any]] = {}
    for d, by_model in meta_metrics(src.meta).items():
        results = by_model.get(src_model, next(iter(by_model.values())) if len(by_model) == 1 else None)
        if d in src.domains and results is not None:
            metrics[d] = {model: results}
    metrics.update(meta_metrics(meta))
    merged = {**dict(meta), "metrics": metrics}
    if src.meta.get("encoder"):
        if merged.get("encoder") and merged["encoder"] != src.meta["encoder"]:
            raise BundleError(f"{source} was encoded with {src.meta['encoder']!r} but meta names "
                              f"{merged['encoder']!r}: a bundle has one sentence encoder")
        if not merged.get("encoder"):
            merged.update(encoder=src.meta["encoder"], encoder_max_seq_length=src.meta.get("encoder_max_seq_length"))
    domains = dict(src.domains)
    domains.update(new_domains)
    log.info("merged %s (%s) with new domain(s) %s as %s", source, src_model, sorted(new_domains), model)
    return domains, merged


__all__ = ["fit_text_projection", "item_embedding", "input_rows", "row_scorer", "raw_user_ids", "make_domain_bundle", "domain_bundle", "bundle_meta",
           "export_domains", "export_model", "merge_bundles"]
