"""Scores of a bundle's users against its catalogue, computed the way the exporting model computed them.

One class, :class:`DomainScorer`, for every kind of :class:`m6rec.serving.bundle.DomainBundle`:

* ``dot``: ``user_vectors[u] @ item_vectors.T``;
* ``history``: the bundle's :class:`m6rec.models.attention.HistoryAttention` is rebuilt from its weights, every
  user's history is pooled once at construction into interest vectors ``[n_users, K + 1, d]``, and a user's scores
  are ``HistoryAttention.score`` of those interests against the catalogue (K + 1 matrix products and a softmax over
  the interests). The attention a candidate puts on each history item (:meth:`DomainScorer.explain`) is the
  model's own ``w_ij``;
* ``itemitem``, ``graphfilter``, ``popularity``: a user's interaction row (the bundle's train + valid ``history``,
  or any row passed to :meth:`DomainScorer.rows`) through the model's matrices, as the model's ``score_rows``; the
  explanation of an item-item score is each history item's contribution ``matrix[i, item]``;
* ``blend``: the weighted sum of its components' per-user z-scored scores (:func:`standardise`).

Top-k for serving (:meth:`DomainScorer.top_k`) is exact for both; a history scorer uses the model's own bounded
top-k (:meth:`m6rec.models.attention.HistoryAttention.top_k`: the softmax gate runs only on the items whose best
per-interest score can still reach the top k; on the 41k-item ``gowalla-attention`` scenario of
``bench/bench_serving.py`` this cut ``recommend`` from 2.3 to 1.6 ms).

Used by the service (:mod:`m6rec.serving.recommender`) and by the register stage's re-evaluation, so that a model is
served and gated on the same scores it was evaluated with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.models.attention import HistoryAttention, Interests
from m6rec.serving.bundle import DomainBundle
from m6rec.serving.bundle_scorers import BlendScorer, GraphFilterScorer, ItemItemScorer, PopularityScorer

_CHUNK_USERS = 4096  # users pooled per batch at construction
ROW_KINDS = ("itemitem", "graphfilter", "popularity")  # scored from an interaction row


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per-user z-score over the catalogue: ``(s - mean) / std`` of each row (std 0 -> the row is 0)."""
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > 0, (scores - mean) / std.clamp_min(1e-12), torch.zeros_like(scores))


def row_scores(sc: ItemItemScorer | GraphFilterScorer | PopularityScorer, rows: sp.csr_matrix) -> torch.Tensor:
    """Scores ``[B, n_items]`` of interaction rows ``[B, n_items]`` by a row scorer (the model's ``score_rows``)."""
    rows = sp.csr_matrix(rows, dtype=np.float32)
    if isinstance(sc, PopularityScorer):
        return torch.from_numpy(np.asarray(sc.counts, dtype=np.float32)).unsqueeze(0).repeat(rows.shape[0], 1)
    if isinstance(sc, ItemItemScorer):
        if not sc.dense:
            return torch.from_numpy(np.asarray((rows @ sc.matrix).toarray(), dtype=np.float32))
        out = np.zeros(rows.shape, dtype=np.float32)
        out[:, sc.active] = rows.tocsc()[:, sc.active].tocsr() @ sc.matrix
        return torch.from_numpy(out)
    linear = np.asarray(((rows @ sc.norm.T) @ sc.norm).todense(), dtype=np.float32)
    out = torch.from_numpy(linear)
    if sc.basis.shape[0] and sc.alpha:
        basis = torch.from_numpy(np.asarray(sc.basis, dtype=np.float32))
        scaled = torch.from_numpy(rows.multiply(sc.inv_degree[None, :]).toarray().astype(np.float32))
        out = out + sc.alpha * ((scaled @ basis.T) @ basis * torch.from_numpy(sc.sqrt_degree.astype(np.float32)))
    return out


@dataclass(frozen=True)
class PairExplanation:
    """Why one item scores what it does for one history: the score and the weight of every history column."""

    score: float
    columns: np.ndarray  # int64 [n]: positions in the history with a real item
    items: np.ndarray  # int64 [n]: the items at those positions
    weights: np.ndarray  # float32 [n]: their attention weights (sum to 1 over the history)


class DomainScorer:
    """Scores of one domain's users (or of an ad-hoc history) against every item."""

    def __init__(self, b: DomainBundle) -> None:
        self.items = torch.from_numpy(np.ascontiguousarray(b.item_vectors, dtype=np.float32))
        self.kind = b.kind
        self.n_users = b.n_users
        self.user_vectors: torch.Tensor | None = None
        self.attention: HistoryAttention | None = None
        self.row_scorer = b.scorer if b.kind in ROW_KINDS else None
        self.row_history: sp.csr_matrix | None = None
        self.components: list[DomainScorer] = []
        self.weights: list[float] = []
        if self.row_scorer is not None:
            if not isinstance(self.row_scorer, PopularityScorer):
                self.row_history = sp.csr_matrix(self.row_scorer.history, dtype=np.float32)
            return
        if isinstance(b.scorer, BlendScorer):
            self.components = [DomainScorer(c) for c in b.scorer.components]
            self.names = list(b.scorer.names)
            self.weights = [float(w) for w in b.scorer.weights]
            return
        if b.scorer is None:
            self.user_vectors = torch.from_numpy(np.ascontiguousarray(b.user_vectors, dtype=np.float32))
            return
        cfg = b.scorer.config
        # The config holds constructor arguments (n_interests = K focused interests, as the model was built with),
        # never the module's attributes, whose names and meaning (K or K + 1) are the model's business.
        att = HistoryAttention(dim=int(cfg["dim"]), n_interests=int(cfg["n_interests"]), max_len=int(cfg["max_len"]),
                               pooling=str(cfg["pooling"]), hidden=cfg.get("hidden"))
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in b.scorer.weights.items()}
        missing, unexpected = att.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"history scorer weights do not fit HistoryAttention({cfg}): missing {missing}, "
                             f"unexpected {unexpected}")
        self.attention = att.eval()
        self.recency = None if b.scorer.recency is None else torch.from_numpy(b.scorer.recency.astype(np.float32))
        self.history = torch.from_numpy(b.scorer.history.astype(np.int64))
        with torch.no_grad():
            self.item_logits = att.item_logits(self.items) if att.pooling == "attention" else None
            parts = [self._pool(self.history[s:s + _CHUNK_USERS]) for s in range(0, self.n_users, _CHUNK_USERS)]
        self.interests = Interests(vectors=torch.cat([p.vectors for p in parts]).contiguous(),
                                   weights=torch.cat([p.weights for p in parts]).contiguous())

    # ------------------------------------------------------------------------------------------------- pooling

    def _pool(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> Interests:
        """Interests of padded histories ``[B, L]`` (:meth:`HistoryAttention.pool`, as the model pools them)."""
        return self.attention.pool(history, self.items, self.item_logits, self.recency, extra)

    # ------------------------------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def users(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]`` of local user indices ``users [B]``."""
        users = torch.as_tensor(users, dtype=torch.int64)
        if self.components:
            return self.combine([c.users(users) for c in self.components])
        if self.row_scorer is not None:
            if self.row_history is None:
                return row_scores(self.row_scorer, sp.csr_matrix((len(users), len(self.items)), dtype=np.float32))
            return row_scores(self.row_scorer, self.row_history[users.numpy()])
        if self.attention is None:
            return self.user_vectors[users] @ self.items.T
        sub = Interests(vectors=self.interests.vectors[users], weights=self.interests.weights[users])
        return self.attention.score(sub, self.items).scores

    @torch.no_grad()
    def top_k(self, users: torch.Tensor, k: int, mask_rows: torch.Tensor | None = None,
              mask_cols: torch.Tensor | None = None, min_candidates: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, items)`` ``[B, k]`` of the best ``k`` items of each of ``users``, best first, with the items
        ``(mask_rows[j], mask_cols[j])`` (row of ``users``, item) left out; rows with fewer than ``k`` items left
        are filled with ``-inf`` values. Exact for both kinds; a history scorer uses the model's bounded top-k
        (:meth:`m6rec.models.attention.HistoryAttention.top_k`)."""
        k = min(k, len(self.items))
        if self.attention is None or self.components:
            scores = self.users(users)
            if mask_rows is not None:
                scores[mask_rows, mask_cols] = float("-inf")
            return torch.topk(scores, k, dim=1)
        sub = Interests(vectors=self.interests.vectors[users], weights=self.interests.weights[users])
        return self.attention.top_k(sub, self.items, k, mask_rows, mask_cols, min_candidates)

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """A blend's scores from its components' scores (same order): ``sum_c w_c * standardise(parts[c])``."""
        out = torch.zeros_like(parts[0])
        for w, p in zip(self.weights, parts):
            if w:
                out += w * standardise(p)
        return out

    @torch.no_grad()
    def rows(self, rows: sp.csr_matrix) -> torch.Tensor:
        """Scores ``[B, n_items]`` of interaction rows (a row scorer: item-item, graph filter, popularity), e.g.
        the rows the evaluation protocol allows for a split."""
        if self.row_scorer is None:
            raise TypeError(f"scoring interaction rows needs a row scorer; this domain scores with {self.kind}")
        return row_scores(self.row_scorer, rows)

    @torch.no_grad()
    def histories(self, history: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]`` of padded histories ``[B, max_len]`` (item indices, -1 = padding), e.g. built
        from other data than the bundle's own (history scorer only)."""
        if self.attention is None:
            raise TypeError("scoring a history needs a history scorer; this domain scores with dot products")
        return self.attention.score(self._pool(history), self.items).scores

    @property
    def max_len(self) -> int:
        """History length of a history scorer (0 for every other kind)."""
        return 0 if self.attention is None else self.attention.max_len

    @torch.no_grad()
    def history_scores(self, items: list[int], extra: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[n_items]`` for an ad-hoc history: ``items`` (oldest first) and ``extra [m, d]`` query vectors.

        Dot scorer: the mean of the items' and the extra vectors. History scorer: the model's pooling of the last
        ``max_len`` of them (the extra vectors count as the most recent).
        """
        if self.components:
            return self.combine([c.history_scores(items, extra).unsqueeze(0) for c in self.components])[0]
        if self.row_scorer is not None:  # the items as an interaction row (extra query vectors have no row)
            cols = np.unique(np.asarray(items, dtype=np.int64))
            row = sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), np.int64), cols)),
                                shape=(1, len(self.items)))
            return row_scores(self.row_scorer, row)[0]
        if self.attention is None:
            return self.items @ self.dot_query(items, extra)
        hist = torch.as_tensor(items[-self.attention.max_len:], dtype=torch.int64).view(1, -1)
        if hist.shape[1] < self.attention.max_len:  # right-align
            pad = torch.full((1, self.attention.max_len - hist.shape[1]), -1, dtype=torch.int64)
            hist = torch.cat([pad, hist], dim=1)
        interests = self._pool(hist, extra)
        return self.attention.score(interests, self.items).scores[0]

    def dot_query(self, items: list[int], extra: torch.Tensor | None = None) -> torch.Tensor:
        """A dot scorer's query vector ``[d]`` for an ad-hoc history: the mean of the items' and the extra
        vectors (its scores are ``item_vectors @ query``)."""
        parts = [self.items[torch.as_tensor(items, dtype=torch.int64)]] if items else []
        if extra is not None and len(extra):
            parts.append(extra)
        return torch.cat(parts).mean(dim=0)

    @torch.no_grad()
    def explain(self, user: int, item: int) -> PairExplanation:
        """The score of ``item`` for ``user`` and the attention it puts on each of the user's history items.

        History scorer: the attention weights; item-item scorer: each history item's contribution
        ``matrix[i, item]`` (the score is their sum). Other kinds have no per-item account (see the recommender's
        similarity explainer).
        """
        if isinstance(self.row_scorer, ItemItemScorer):
            return self._explain_itemitem(user, item)
        if self.attention is None:
            raise TypeError("explain needs a history scorer; this domain scores with dot products")
        sub = Interests(vectors=self.interests.vectors[user:user + 1], weights=self.interests.weights[user:user + 1])
        vec, weights = self.attention.user_vectors(sub, self.items[item:item + 1])
        hist = self.history[user]
        cols = torch.nonzero(hist >= 0).view(-1)
        return PairExplanation(score=float(vec[0] @ self.items[item]), columns=cols.numpy(),
                               items=hist[cols].numpy(), weights=weights[0, cols].numpy())

    def _explain_itemitem(self, user: int, item: int) -> PairExplanation:
        sc = self.row_scorer
        row = self.row_history[user]
        hist, vals = row.indices.astype(np.int64), row.data.astype(np.float32)
        if sc.dense:
            pos = np.searchsorted(sc.active, item)
            col = np.zeros(len(self.items), np.float32)
            if pos < len(sc.active) and sc.active[pos] == item:
                col[sc.active] = sc.matrix[:, pos]
            contrib = vals * col[hist]
        else:
            contrib = vals * np.asarray(sc.matrix[hist][:, [item]].toarray(), dtype=np.float32).ravel()
        return PairExplanation(score=float(contrib.sum()), columns=np.arange(len(hist), dtype=np.int64),
                               items=hist, weights=contrib.astype(np.float32))

    @property
    def explains(self) -> bool:
        """Whether :meth:`explain` gives the model's own account (history and item-item scorers)."""
        return self.attention is not None or isinstance(self.row_scorer, ItemItemScorer)

    def score(self, user: int, item: int) -> float:
        """One user's score of one item."""
        if self.components or self.row_scorer is not None:
            return float(self.users(torch.tensor([user]))[0, item])
        if self.attention is None:
            return float(self.user_vectors[user] @ self.items[item])
        return self.explain(user, item).score
