"""BPR triples over a multi-domain graph: each edge's negative comes from the positive's own domain.

Negatives are drawn uniformly from a per-domain pool of allowed items (by default every item of the domain except the
held-out cold-start items, which no model may train on, not even as negatives). Sampling is vectorised: one draw per
edge, then vectorised rounds that redraw only the negatives that happen to be known positives.
"""

from __future__ import annotations

import numpy as np
import torch

from m6rec.data.negatives import KnownPairs, reject_known


class DomainNegativeSampler:
    """Every training edge once per epoch, in random order, with one fresh same-domain negative.

    Args:
        edge_user, edge_item, edge_domain: global ids and domain index of each training edge.
        item_pools: per domain index, the global item ids that may be negatives (a domain with edges must have a
            non-empty pool).
        seed: seed of the sampler's generator.
        max_rounds: redraws of negatives that hit a known positive (heavy users need a few).
    """

    def __init__(self, edge_user: np.ndarray, edge_item: np.ndarray, edge_domain: np.ndarray,
                 item_pools: list[np.ndarray], seed: int = 0, max_rounds: int = 10) -> None:
        self.users = np.asarray(edge_user, dtype=np.int64)
        self.items = np.asarray(edge_item, dtype=np.int64)
        self.domains = np.asarray(edge_domain, dtype=np.int64)
        if not (len(self.users) == len(self.items) == len(self.domains)):
            raise ValueError("edge_user, edge_item and edge_domain differ in length")
        sizes = np.array([len(p) for p in item_pools], dtype=np.int64)
        used = np.unique(self.domains)
        if used.size and (used.max() >= len(item_pools) or (sizes[used] == 0).any()):
            empty = [int(d) for d in used if d >= len(item_pools) or sizes[d] == 0]
            raise ValueError(f"domains {empty} have training edges but no items to draw negatives from")
        self.pool = np.concatenate([np.asarray(p, dtype=np.int64) for p in item_pools]) if item_pools else \
            np.zeros(0, np.int64)
        self.pool_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.pool_size = sizes
        self.known = KnownPairs(self.users, self.items, int(max(self.items.max(initial=0),
                                                                self.pool.max(initial=0))) + 1)
        self.rng = np.random.default_rng(seed)
        self.max_rounds = int(max_rounds)

    def __len__(self) -> int:
        return len(self.users)

    def draw(self, domains: np.ndarray) -> np.ndarray:
        """One uniform negative from the pool of each given domain index."""
        offset = (self.rng.random(len(domains)) * self.pool_size[domains]).astype(np.int64)
        return self.pool[self.pool_start[domains] + offset]

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair is a training edge."""
        return self.known.contains(users, items)

    def epoch(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of (users, positives, negatives) int64 tensors covering every edge once."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = self.rng.permutation(len(self.users))
        users, pos, dom = self.users[order], self.items[order], self.domains[order]
        neg = reject_known(self.draw(dom), lambda idx, items: self.known.contains(users[idx], items),
                           lambda idx: self.draw(dom[idx]), self.max_rounds)
        u, p, n = torch.from_numpy(users), torch.from_numpy(pos), torch.from_numpy(neg)
        return [(u[i:i + batch_size], p[i:i + batch_size], n[i:i + batch_size])
                for i in range(0, len(order), batch_size)]
