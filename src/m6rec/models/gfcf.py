"""GF-CF (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021): a training-free graph
filter.

With the normalised interaction matrix R̃ = D_U^{-1/2} R D_I^{-1/2} and its top-k right singular vectors V_k,

    score(u) = r_u (R̃ᵀ R̃) + α · r_u D_I^{-1/2} V_k V_kᵀ D_I^{1/2}

The first term is a linear low-pass filter on the item-item graph, the second an ideal low-pass filter. R̃ᵀR̃ is never
formed (it is dense, 6.7 GB for Gowalla): each user batch computes (r_b R̃ᵀ) R̃ with two sparse products.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from m6rec.models.base import GraphFilterExport, SingleDomain

_CHUNK = 1024  # users scored at once


class GFCF(SingleDomain):
    name = "gfcf"

    def __init__(self, k: int = 256, alpha: float = 0.3, seed: int = 0) -> None:
        self.k, self.alpha, self.seed = k, alpha, seed
        self.train: sp.csr_matrix | None = None

    def fit(self, train: sp.csr_matrix) -> "GFCF":
        r = train.astype(np.float32).tocsr()
        du = np.asarray(r.sum(axis=1)).ravel()
        di = np.asarray(r.sum(axis=0)).ravel()
        inv_u = np.where(du > 0, 1.0 / np.sqrt(np.maximum(du, 1e-12)), 0.0)
        inv_i = np.where(di > 0, 1.0 / np.sqrt(np.maximum(di, 1e-12)), 0.0)
        self.norm = (sp.diags(inv_u) @ r @ sp.diags(inv_i)).astype(np.float32).tocsr()
        self.norm_t = self.norm.T.tocsr()
        self.inv_i = inv_i.astype(np.float32)
        self.sqrt_i = np.sqrt(di).astype(np.float32)
        k = min(self.k, min(r.shape) - 1)
        if self.alpha > 0 and k >= 1:
            v0 = np.random.default_rng(self.seed).standard_normal(min(r.shape))
            _, _, vt = svds(self.norm.astype(np.float64), k=k, v0=v0)
            self.vt = torch.from_numpy(vt.astype(np.float32))  # [k, n_items]
        else:
            self.vt = None
        self.train = r
        return self

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        """Scores in chunks of ``_CHUNK`` users: the sparse intermediate ``r_b R̃ᵀ`` grows with the batch. A sparse
        ``history`` (the users' rows the split may see) replaces the training rows."""
        self.check_domain(domain)
        if self.train is None:
            raise RuntimeError("GFCF.score called before fit")
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(history, dtype=np.float32) if sp.issparse(history) else self.train[users]
        return torch.cat([self.score_rows(rows[s:s + _CHUNK]) for s in range(0, rows.shape[0], _CHUNK)] or
                         [torch.zeros(0, self.train.shape[1])])

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.train is None:
            raise RuntimeError("GFCF.score called before fit")
        return self.score_rows(self.train[users])

    def score_rows(self, rb: sp.csr_matrix) -> torch.Tensor:
        """Scores of interaction rows ``[B, n_items]`` through both filters."""
        linear = torch.from_numpy(np.asarray(((rb @ self.norm_t) @ self.norm).todense(), dtype=np.float32))
        if self.vt is None:
            return linear
        scaled = torch.from_numpy(rb.multiply(self.inv_i[None, :]).toarray().astype(np.float32))
        ideal = (scaled @ self.vt.T) @ self.vt * torch.from_numpy(self.sqrt_i)
        return linear + self.alpha * ideal

    def export(self, domain: str) -> GraphFilterExport:
        """R̃, the ideal low-pass basis and the degree normalisation (the item vectors are the basis' columns)."""
        self.check_domain(domain)
        if self.train is None:
            raise RuntimeError("GFCF.export called before fit")
        n_items = self.train.shape[1]
        basis = np.zeros((0, n_items), np.float32) if self.vt is None else self.vt.numpy().copy()
        return GraphFilterExport(norm=self.norm.copy(), basis=basis, inv_degree=self.inv_i.copy(),
                                 sqrt_degree=self.sqrt_i.copy(), alpha=float(self.alpha if self.vt is not None else 0),
                                 item_vectors=None if self.vt is None else np.ascontiguousarray(basis.T))
