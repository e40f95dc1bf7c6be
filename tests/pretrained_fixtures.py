"""Cheap stand-ins for a pretraining run in tests: PureSVD item factors of each domain's real training matrix."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import svds

from m6rec.data.dataset import DomainData
from m6rec.models.pretrained import PretrainedItems


def svd_items(datas: dict[str, DomainData], dim: int, seed: int = 0) -> PretrainedItems:
    """PureSVD item factors ``V sqrt(S)`` of each domain's training matrix as the history model's item inputs."""
    base = {}
    for d, data in datas.items():
        k = max(1, min(dim, min(data.train.shape) - 1))
        v0 = np.random.default_rng(seed).standard_normal(min(data.train.shape))
        _, s, vt = svds(data.train.astype(np.float64), k=k, v0=v0)
        vecs = np.zeros((data.n_items, dim), dtype=np.float32)
        vecs[:, :k] = (vt.T * np.sqrt(s)).astype(np.float32)
        base[d] = vecs
    return PretrainedItems(base=base, text=dict.fromkeys(datas), text_weight=None, text_scale=1.0,
                           source_domains=tuple(datas))
