"""Vectorised BPR triple sampling: (user, positive item, negative item) without a Python loop per edge."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.data.negatives import KnownPairs, reject_known


class BPRSampler:
    """Samples one uniform negative per training edge each epoch, rejecting (once, vectorised) known positives.

    Negatives are drawn from `item_low..item_high` of each edge's own block when `item_ranges` is given
    (multi-domain graphs: a user's negatives come from the same domain as the positive).
    """

    def __init__(self, train: sp.csr_matrix, seed: int = 0, item_ranges: np.ndarray | None = None) -> None:
        coo = train.tocoo()
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self.n_items = train.shape[1]
        self.known = KnownPairs(self.users, self.items, self.n_items)
        self.rng = np.random.default_rng(seed)
        if item_ranges is not None:
            item_ranges = np.asarray(item_ranges, dtype=np.int64)
            if item_ranges.shape != (len(self.items), 2):
                raise ValueError(f"item_ranges must have shape ({len(self.items)}, 2), got {item_ranges.shape}")
        self.item_ranges = item_ranges

    def __len__(self) -> int:
        return len(self.users)

    def _draw(self, idx: np.ndarray) -> np.ndarray:
        if self.item_ranges is None:
            return self.rng.integers(0, self.n_items, size=len(idx))
        low, high = self.item_ranges[idx, 0], self.item_ranges[idx, 1]
        return low + (self.rng.random(len(idx)) * (high - low)).astype(np.int64)

    def epoch(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """All training edges in random order with fresh negatives, as batches of int64 tensors."""
        order = self.rng.permutation(len(self.users))
        users = self.users[order]
        neg = reject_known(self._draw(order), lambda idx, items: self.known.contains(users[idx], items),
                           lambda idx: self._draw(order[idx]), rounds=10)
        users = torch.from_numpy(users)
        pos = torch.from_numpy(self.items[order])
        neg_t = torch.from_numpy(neg)
        return [(users[i:i + batch_size], pos[i:i + batch_size], neg_t[i:i + batch_size])
                for i in range(0, len(order), batch_size)]
