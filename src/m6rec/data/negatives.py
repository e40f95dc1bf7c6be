"""Sampled negatives that are not known interactions: one membership table and one rejection loop for every sampler
(BPR triples, the multi-domain graph, the history model's like task, the like AUC)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class KnownPairs:
    """(user, item) pairs as sorted integer keys ``user * stride + item``, for vectorised membership tests."""

    def __init__(self, users: np.ndarray, items: np.ndarray, stride: int) -> None:
        self.stride = int(stride)
        self.keys = np.unique(np.asarray(users, dtype=np.int64) * self.stride + np.asarray(items, dtype=np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (users[i], items[i]) is a known pair."""
        if not len(self.keys):
            return np.zeros(len(users), dtype=bool)
        keys = np.asarray(users, dtype=np.int64) * self.stride + np.asarray(items, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys


def reject_known(neg: np.ndarray, clashes: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 draw: Callable[[np.ndarray], np.ndarray], rounds: int) -> np.ndarray:
    """Redraw (in place, up to `rounds` times) the entries of `neg` that clash with a known pair.

    ``clashes(idx, items)``: bool per position ``idx`` holding ``items``; ``draw(idx)``: fresh items for those
    positions. Only the clashing positions are redrawn, in index order, so a sampler's random stream stays the same
    whatever its membership test; leftovers after the last round (very heavy users) are rare and harmless.
    """
    todo = np.flatnonzero(clashes(np.arange(len(neg)), neg))
    for _ in range(rounds):
        if not todo.size:
            break
        neg[todo] = draw(todo)
        todo = todo[clashes(todo, neg[todo])]
    return neg
