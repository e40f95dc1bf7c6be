"""The one model contract every m6rec model follows (RecBole's in spirit).

A model

- trains through ``calculate_loss(batch) -> Tensor`` (gradient-trained models; :func:`m6rec.training.loop.fit` calls
  it) or ``fit(...)`` in closed form (MostPopular, ItemKNN, PureSVD, GF-CF, BiasedALS);
- scores a whole catalogue with ``full_scores(domain, users, history=None) -> Tensor [B, n_items]``: ``users`` are
  the domain's local user indices; a model that represents a user by their recent items (``history_len > 0``) reads
  ``history`` instead, int64 ``[B, history_len]``, oldest first, right-aligned, -1 padded, built by the evaluation
  protocol from the interactions the split may see (:func:`m6rec.evaluation.protocol.evaluate`);
- exports what serving needs for a domain with ``export(domain) -> DotExport | HistoryExport``: plain arrays, no
  file access (:mod:`m6rec.serving.export` turns them and the domain's data into a serving bundle).

Models own their maths (losses, scores, calibration, top-k); no model reads files or talks to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class DotExport:
    """A domain scored as ``user_vectors @ item_vectors.T`` (MF, LightGCN).

    ``text_projection``: the model's own map from sentence-encoder space into item space, ``(weight [text_dim, d],
    bias [d])`` with ``t @ weight + bias`` (None: the exporter fits one by ridge regression when the domain has
    ``item_text_vectors``).
    """

    item_vectors: np.ndarray  # float32 [n_items, d]
    user_vectors: np.ndarray  # float32 [n_users, d]
    item_text_vectors: np.ndarray | None = None  # float32 [n_items, text_dim]
    text_projection: tuple[np.ndarray, np.ndarray] | None = None

    kind = "dot"


@dataclass(frozen=True, eq=False)
class HistoryExport:
    """A domain whose users are their recent items, pooled by :class:`m6rec.models.attention.HistoryAttention`.

    ``config``: the pooling's constructor arguments; ``weights``: its state dict as float32 arrays; ``recency``: the
    domain's recency bias ``[K, max_len]`` (None without one). The per-user histories are data, not model: the
    exporter builds them from the domain's train + valid interactions.
    """

    item_vectors: np.ndarray  # float32 [n_items, d]
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    recency: np.ndarray | None = None
    item_text_vectors: np.ndarray | None = None

    kind = "history"

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])


Export = DotExport | HistoryExport


class NotServableError(TypeError):
    """The model has no serving export (yet): the message says which model."""


@runtime_checkable
class Recommender(Protocol):
    """What the evaluation protocol and the exporter rely on (see the module docstring)."""

    name: str
    history_len: int

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        ...

    def export(self, domain: str) -> Export:
        ...


class SingleDomain:
    """Mixin for a model fitted on one domain's matrix: ``domain`` is checked, not used.

    The fitted domain's name is ``self.domain`` (None until fitted or when built outside a stage: any name is then
    accepted).
    """

    name = "model"
    history_len = 0
    domain: str | None = None

    def check_domain(self, domain: str) -> None:
        if self.domain is not None and domain is not None and domain != self.domain:
            raise KeyError(f"{self.name} was fitted on domain '{self.domain}', not '{domain}'")

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        self.check_domain(domain)
        return self.score(np.asarray(users, dtype=np.int64))

    def score(self, users: np.ndarray) -> torch.Tensor:  # pragma: no cover - each model defines it
        raise NotImplementedError

    def export(self, domain: str) -> Export:
        raise NotServableError(f"{self.name} has no serving export")


__all__ = ["DotExport", "HistoryExport", "Export", "NotServableError", "Recommender", "SingleDomain"]
