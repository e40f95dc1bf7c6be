"""Inputs of the history model (:mod:`m6rec.models.multitask`): per-domain item tables, catalogues, training batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    """One training batch of a single domain (int64 item indices are domain-local)."""

    domain: int  # index into the model's domains
    history: Tensor  # int64 [B, L]: the items before the target, right-aligned, -1 = padding
    target: Tensor  # int64 [B]: the next item
    negatives: Tensor  # int64 [N]: retrieval negatives shared by the batch
    like_negatives: Tensor  # int64 [B]: one non-interacted item per example (like task, label 0)
    rating: Tensor  # float32 [B]: the target's rating (explicit domains; NaN elsewhere)
    like: Tensor  # float32 [B]: 1.0 if the target counts as liked, else 0.0
    history_rating: Tensor  # float32 [B]: mean rating of the history items (explicit domains; NaN elsewhere)


@dataclass(frozen=True)
class Catalogue:
    """A domain's item vectors ``[n, dim]`` and their attention logits ``[n, K]`` (None for mean pooling)."""

    vectors: Tensor
    logits: Tensor | None


class ItemTable(nn.Module):
    """One domain's item inputs: frozen ``base`` and ``text`` buffers, trainable ``residual``, the domain's
    recency bias ``[K, L]`` (None without one) and rating statistics."""

    def __init__(self, n_items: int, dim: int, text_dim: int, recency_shape: tuple[int, int] | None = None,
                 recency_init: float = 0.0, text_dtype: str = "float16") -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.recency = None
        if recency_shape is not None:
            k, length = recency_shape
            prior = recency_init * torch.linspace(-1.0, 0.0, length) if length > 1 else torch.zeros(length)
            self.recency = nn.Parameter(prior.expand(k, length).clone())
        self.register_buffer("base", torch.zeros(self.n_items, dim))
        self.residual = nn.Parameter(torch.zeros(self.n_items, dim))
        if text_dim:
            self.register_buffer("text", torch.zeros(self.n_items, text_dim, dtype=getattr(torch, text_dtype)))
        else:
            self.text = None
        # mean, low, high of training ratings (explicit domains); zeros elsewhere
        self.register_buffer("rating_stats", torch.zeros(3))
        # (a, b, fitted): ratings as a + b * score for a model without a trained rating head (see calibrate_ratings)
        self.register_buffer("rating_calibration", torch.zeros(3, dtype=torch.float64))


    @torch.no_grad()
    def fill(self, name: str, base: Tensor | None = None, text: Tensor | None = None,
             rating_stats: Sequence[float] | None = None) -> None:
        """Frozen inputs of domain `name`: base vectors ``[n, dim]``, sentence vectors ``[n, text_dim]``, (mean,
        low, high) of its training ratings."""
        if base is not None:
            if tuple(base.shape) != tuple(self.base.shape):
                raise ValueError(f"base for domain {name} must be {tuple(self.base.shape)}, got {tuple(base.shape)}")
            self.base.copy_(base)
        if text is not None:
            if self.text is None or tuple(text.shape) != tuple(self.text.shape):
                want = None if self.text is None else tuple(self.text.shape)
                raise ValueError(f"text for domain {name} must be {want}, got {tuple(text.shape)}")
            self.text.copy_(text.to(self.text.dtype))
        if rating_stats is not None:
            self.rating_stats.copy_(torch.as_tensor(rating_stats, dtype=torch.float32))

    @torch.no_grad()
    def set_recency(self, recency: Tensor | float) -> None:
        """The recency adapter: a ``[K, L]`` table, or the slope of the linear prior (0 = flat, for domains whose
        interactions have no meaningful order). No-op without one."""
        if self.recency is None:
            return
        if isinstance(recency, (int, float)):
            length = self.recency.shape[1]
            recency = float(recency) * torch.linspace(-1.0, 0.0, length) if length > 1 else torch.zeros(length)
        self.recency.copy_(torch.as_tensor(recency).expand_as(self.recency))


def _tower(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
