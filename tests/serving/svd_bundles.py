"""Test helper: serving bundles from real data with a quick model computed here (truncated SVD of train).

Not a model class: a few lines of scipy so that bundle, register and service tests run on real interactions
before any model stage exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse.linalg as sla

from m6rec.data.dataset import Prepared, domain_data
from m6rec.serving.bundle import DomainBundle
from m6rec.serving.export import fit_text_projection, make_domain_bundle, raw_user_ids


def svd_vectors(train, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) vectors of a rank-`dim` truncated SVD of the binary train matrix (PureSVD-style)."""
    dim = min(dim, min(train.shape) - 1)
    u, s, vt = sla.svds(train.astype(np.float64), k=dim, random_state=seed)
    root = np.sqrt(s)
    return (u * root).astype(np.float32), (vt.T * root).astype(np.float32)


def svd_domain(prepared: Prepared, domain: str, dim: int, random: bool = False, seed: int = 0,
               text_vectors: np.ndarray | None = None, fit_mask: np.ndarray | None = None,
               ridge_alpha: float = 1.0) -> DomainBundle:
    """A DomainBundle of `domain`: SVD vectors, or seeded Gaussian ones when `random` (a deliberately bad model).

    `text_vectors` [n_items, text_dim] with `fit_mask` fits the text projection on the masked rows only and
    exports no item text vectors (tests encode a few titles, not the catalogue).
    """
    data = domain_data(prepared, domain)
    if random:
        rng = np.random.default_rng(seed)
        users = rng.standard_normal((data.n_users, dim)).astype(np.float32)
        items = rng.standard_normal((data.n_items, dim)).astype(np.float32)
    else:
        users, items = svd_vectors(data.train, dim, seed)
    projection = None
    if text_vectors is not None:
        projection = fit_text_projection(text_vectors, items, ridge_alpha, mask=fit_mask)
    return make_domain_bundle(data, raw_user_ids(prepared, domain), items, users, text_projection=projection)


def svd_bundle(prepared: Prepared, domains: Sequence[str], dim: int, random: bool = False,
               seed: int = 0) -> dict[str, DomainBundle]:
    return {d: svd_domain(prepared, d, dim, random=random, seed=seed) for d in domains}
