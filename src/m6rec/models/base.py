"""The one model contract every m6rec model follows (RecBole's in spirit).

A model

- trains through ``calculate_loss(batch) -> Tensor`` (gradient-trained models; :func:`m6rec.training.loop.fit` calls
  it) or ``fit(...)`` in closed form (MostPopular, ItemKNN, PureSVD, GF-CF, BiasedALS);
- scores a whole catalogue with ``full_scores(domain, users, history=None) -> Tensor [B, n_items]``: ``users`` are
  the domain's local user indices; a model that represents a user by their recent items (``history_len > 0``) reads
  ``history`` instead, int64 ``[B, history_len]``, oldest first, right-aligned, -1 padded, built by the evaluation
  protocol from the interactions the split may see (:func:`m6rec.evaluation.protocol.evaluate`);
- exports what serving needs for a domain with ``export(domain) -> Export``: plain arrays, no file access
  (:mod:`m6rec.serving.export` turns them and the domain's data into a serving bundle). Every model exports one:
  factor models a :class:`DotExport`, attention models a :class:`HistoryExport`, item-item models (ItemKNN, EASE)
  an :class:`ItemItemExport`, graph filters (GF-CF) a :class:`GraphFilterExport`, MostPopular a
  :class:`PopularityExport`.

Models scored from a user's interaction row (``history_len == 0``: MostPopular, ItemKNN, EASE, GF-CF) read
``history`` when it is a scipy sparse matrix: the rows ``[B, n_items]`` of ``users`` the split may see (at test
time train + valid); without it they use their training rows.

Models own their maths (losses, scores, calibration, top-k); no model reads files or talks to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
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


@dataclass(frozen=True, eq=False)
class ItemItemExport:
    """A domain scored as ``history_row @ matrix`` (ItemKNN, EASE): a user's score of item j is the sum over the
    items i they interacted with of ``matrix[i, j]``.

    ``matrix``: scipy csr ``[n_items, n_items]`` (sparse: ItemKNN's top-k neighbours) or a dense float32 array over
    the items ``active`` (int64, sorted; every other item's row and column are zero; None = all items).
    ``item_vectors``: optional ``[n_items, d]`` embedding for similar items and text projection (None: the exporter
    fits a truncated SVD of the training matrix).
    """

    matrix: np.ndarray | sp.csr_matrix
    active: np.ndarray | None = None
    item_vectors: np.ndarray | None = None

    kind = "itemitem"


@dataclass(frozen=True, eq=False)
class GraphFilterExport:
    """A domain scored by GF-CF's filters: ``r (R̃ᵀ R̃) + alpha · ((r * inv_degree) @ basisᵀ @ basis) * sqrt_degree``.

    ``norm``: R̃ = D_U^-1/2 R D_I^-1/2, csr ``[n_train_users, n_items]``; ``basis``: the ideal low-pass basis
    (top right singular vectors of R̃) ``[k, n_items]`` (k = 0: linear filter only); ``inv_degree`` / ``sqrt_degree``:
    ``D_I^-1/2`` / ``D_I^1/2`` as ``[n_items]`` vectors.
    """

    norm: sp.csr_matrix
    basis: np.ndarray
    inv_degree: np.ndarray
    sqrt_degree: np.ndarray
    alpha: float
    item_vectors: np.ndarray | None = None

    kind = "graphfilter"


@dataclass(frozen=True, eq=False)
class PopularityExport:
    """A domain whose every user gets ``counts`` (training interactions per item) as scores."""

    counts: np.ndarray
    item_vectors: np.ndarray | None = None

    kind = "popularity"


Export = DotExport | HistoryExport | ItemItemExport | GraphFilterExport | PopularityExport
ROW_EXPORTS = (ItemItemExport, GraphFilterExport, PopularityExport)  # scored from a user's interaction row


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
        """Scores of ``users``; a model that defines ``score_rows`` scores a sparse ``history`` (the users'
        interaction rows the split may see) when one is given."""
        self.check_domain(domain)
        if sp.issparse(history) and hasattr(self, "score_rows"):
            return self.score_rows(sp.csr_matrix(history, dtype=np.float32))
        return self.score(np.asarray(users, dtype=np.int64))

    def score(self, users: np.ndarray) -> torch.Tensor:  # pragma: no cover - each model defines it
        raise NotImplementedError

    def export(self, domain: str) -> Export:
        raise NotServableError(f"{self.name} has no serving export")


__all__ = ["DotExport", "HistoryExport", "ItemItemExport", "GraphFilterExport", "PopularityExport", "ROW_EXPORTS",
           "Export", "NotServableError", "Recommender", "SingleDomain"]
