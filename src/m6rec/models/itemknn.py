"""ItemKNN: item-item cosine similarity on the training matrix, pruned to the top neighbours of each item.

score(u, j) = sum_{i in I_u} sim(i, j), with sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink)
(Sarwar et al. 2001; the shrink term damps similarities supported by few users).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.models.base import ItemItemExport, SingleDomain


class ItemKNN(SingleDomain):
    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0, chunk: int = 2048) -> None:
        if neighbours <= 0:
            raise ValueError(f"neighbours must be positive, got {neighbours}")
        self.neighbours, self.shrink, self.chunk = neighbours, shrink, chunk
        self.sim: sp.csr_matrix | None = None
        self.train: sp.csr_matrix | None = None

    def fit(self, train: sp.csr_matrix) -> "ItemKNN":
        x = train.tocsc().astype(np.float32)
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        n_items = x.shape[1]
        k = min(self.neighbours, n_items - 1) if n_items > 1 else 0
        rows, cols, vals = [], [], []
        for start in range(0, n_items, self.chunk):
            stop = min(start + self.chunk, n_items)
            co = (xt[start:stop] @ x).toarray()  # [chunk, n_items] co-occurrence counts
            co /= np.outer(norms[start:stop], norms) + self.shrink + 1e-12
            co[np.arange(stop - start), np.arange(start, stop)] = 0.0  # no self-similarity
            if k == 0:
                continue
            top = np.argpartition(-co, k - 1, axis=1)[:, :k]
            top_vals = np.take_along_axis(co, top, axis=1)
            keep = top_vals > 0
            rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
            cols.append(top[keep])
            vals.append(top_vals[keep])
        if rows:
            sim = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n_items, n_items), dtype=np.float32)
        else:
            sim = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.sim = sim
        self.train = train.astype(np.float32).tocsr()
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.sim is None or self.train is None:
            raise RuntimeError("ItemKNN.score called before fit")
        return self.score_rows(self.train[users])

    def score_rows(self, rows: sp.csr_matrix) -> torch.Tensor:
        """Scores of interaction rows ``[B, n_items]`` (e.g. train + valid at test time)."""
        if self.sim is None:
            raise RuntimeError("ItemKNN.score called before fit")
        return torch.from_numpy(np.asarray((rows @ self.sim).toarray(), dtype=np.float32))

    def export(self, domain: str) -> ItemItemExport:
        """The pruned similarity matrix, sparse (top ``neighbours`` per item)."""
        self.check_domain(domain)
        if self.sim is None:
            raise RuntimeError("ItemKNN.export called before fit")
        return ItemItemExport(matrix=self.sim.copy())
