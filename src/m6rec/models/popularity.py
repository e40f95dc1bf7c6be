"""MostPopular: every user gets the items with the most training interactions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.models.base import PopularityExport, SingleDomain


class MostPopular(SingleDomain):
    name = "mostpop"

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def fit(self, train: sp.csr_matrix) -> "MostPopular":
        self.counts = torch.from_numpy(np.asarray(train.sum(axis=0)).ravel().astype(np.float32))
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.counts is None:
            raise RuntimeError("MostPopular.score called before fit")
        return self.counts.unsqueeze(0).expand(len(users), -1)

    def score_rows(self, rows: sp.csr_matrix) -> torch.Tensor:
        """The same counts for any interaction rows (popularity ignores the user)."""
        return self.score(np.zeros(rows.shape[0], dtype=np.int64))

    def export(self, domain: str) -> PopularityExport:
        self.check_domain(domain)
        if self.counts is None:
            raise RuntimeError("MostPopular.export called before fit")
        return PopularityExport(counts=self.counts.numpy().copy())
