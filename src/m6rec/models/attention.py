"""History pooling for history-based user representations: multi-interest target attention, or a plain mean.

A user is represented by the items of their recent history ``h_1..h_L`` (item vectors from pretraining, padded on
the left, the most recent item in the last column), not by a user id. Two poolings share one interface:

**attention** (default): multi-interest self-attentive extraction with *label-aware* (target) attention on top::

    a_k(h) = q_k · tanh(W_k h)                        K learned interest queries q_k (one logit per item)
    A_kj  = softmax_j(a_k(h_j) + r_kj)                r_kj: recency bias of column j (given by the caller, e.g.
                                                      learned per domain); padding gets A_kj = 0
    A_0j  = 1 / n                                     plus one uniform "general taste" interest (the mean)
    z_k   = W_v sum_j A_kj h_j                        K + 1 interest vectors per user      [B, K + 1, d]
    s_k(i) = z_k · v_i                                v_i: candidate item vector
    pi_k(i) = softmax_k(g s_k(i))                     target attention over the interests (g: learned scale)
    score(u, i) = sum_k pi_k(i) s_k(i) = u_i · v_i,   u_i = sum_k pi_k(i) z_k
    w_ij  = sum_k pi_k(i) A_kj                        attention of candidate i on history item j

The extraction is ComiRec-SA's (Y. Cen et al., *Controllable Multi-Interest Framework for Recommendation*, KDD 2020,
https://arxiv.org/abs/2005.09347); the candidate-dependent combination is MIND's label-aware attention (C. Li et al.,
*Multi-Interest Network with Dynamic Routing for Recommendation at Tmall*, CIKM 2019, https://arxiv.org/abs/1904.08030).

Why this and not the alternatives:

- DIN-style target attention (G. Zhou et al., KDD 2018, https://arxiv.org/abs/1706.06978) computes
  ``softmax_j(f(h_j, v_i))`` afresh for every candidate: ``n_items x L`` attention scores per user, far too much for
  full-catalogue ranking. Here the history is summarised once into K interests and each candidate only chooses among
  them, so the user-candidate weights ``w_ij`` are still target-dependent (a horror candidate is explained by the
  horror part of the history) but full ranking costs one ``[B, K, d] x [d, n_items]`` product, i.e. K matmuls.
- SASRec-style self-attention (W.-C. Kang, J. McAuley, ICDM 2018) yields one candidate-independent user vector: cheap,
  but its explanation is the same for every recommended item, and it relies on a meaningful order, which the
  music domain lacks (per-user random split). Recency still enters here through ``r_kj``.

The attention logit of an item does not depend on its position (recency is an additive bias), so logits can be
computed once per distinct item of a batch (:meth:`HistoryAttention.item_logits`) instead of once per history slot,
and the value map is applied after pooling (``W_v`` is linear): a training step costs a gather, a softmax and one
``[B, K, L] x [B, L, d]`` product.

``w_ij`` is a convex combination of the K distributions ``A_k``: non-negative, summing to 1 over the user's real
history items, exactly 0 on padding; it is what the service shows as "recommended because you liked ...".

**mean**: ``z = mean_j W_v h_j`` (K = 1, ``w_ij = 1/n``), the comparison baseline with the same value map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

POOLINGS = ("attention", "mean")


@dataclass(frozen=True)
class Interests:
    """A batch of pooled histories: interest vectors ``[B, K, d]`` and their weights on the history ``[B, K, L]``."""

    vectors: Tensor
    weights: Tensor


@dataclass(frozen=True)
class Scored:
    """Scores of candidates with the attention that produced them.

    ``scores [B, N]``; ``gate [B, K, N]`` (pi_k of each candidate); ``weights [B, K, L]`` (A_kj). The attention of
    candidate ``n`` on history column ``j`` is ``sum_k gate[b, k, n] * weights[b, k, j]`` (:meth:`history_weights`).
    """

    scores: Tensor
    gate: Tensor
    weights: Tensor

    def history_weights(self, columns: Tensor) -> Tensor:
        """Attention ``[B, L]`` of each row's candidate at position ``columns[b]`` of the scored items."""
        gate = self.gate.gather(2, columns.view(-1, 1, 1).expand(-1, self.gate.shape[1], 1))  # [B, K, 1]
        return (gate * self.weights).sum(1)


class HistoryAttention(nn.Module):
    """Pools item vectors of a user's history into K interest vectors and scores candidates against them.

    Args:
        dim: size of item vectors.
        n_interests: K focused interests (attention pooling adds the uniform one; the mean pooling has only it).
        max_len: the most history columns L accepted.
        pooling: "attention" or "mean" (see the module docstring).
        hidden: size of the attention keys (default ``dim``).
        gate_scale: initial scale g of the interest gate ``softmax_k(g s_k)`` (learned, kept positive).
    """

    def __init__(self, dim: int, n_interests: int = 4, max_len: int = 50, pooling: str = "attention",
                 hidden: int | None = None, gate_scale: float = 5.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if dim <= 0 or n_interests <= 0 or max_len <= 0 or gate_scale <= 0:
            raise ValueError(f"bad sizes: dim={dim}, n_interests={n_interests}, max_len={max_len}, "
                             f"gate_scale={gate_scale}")
        self.dim, self.max_len, self.pooling = int(dim), int(max_len), pooling
        self.n_focused = int(n_interests) if pooling == "attention" else 0  # K, the constructor's n_interests
        self.n_total = self.n_focused + 1  # K + 1 interest vectors: the uniform one comes first
        self.hidden = int(hidden or dim)
        self.value = nn.Linear(self.dim, self.dim, bias=False)
        if pooling == "attention":
            self.key = nn.Linear(self.dim, self.hidden)
            self.queries = nn.Parameter(torch.empty(self.n_focused, self.hidden))
            self.gate_log_scale = nn.Parameter(torch.tensor(math.log(gate_scale)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The value map starts as the identity: interests begin as weighted means of the pretrained item vectors.
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(self.dim))
        if self.pooling == "attention":
            nn.init.xavier_uniform_(self.key.weight)
            nn.init.zeros_(self.key.bias)
            # Distinct, fairly sharp queries: the focused interests start on different parts of the history (the
            # uniform interest already covers the whole of it).
            nn.init.normal_(self.queries, std=1.0)

    def item_logits(self, items: Tensor) -> Tensor:
        """Focused-interest logits ``a_k(v) = q_k · tanh(W_k v)`` of item vectors ``[..., d]`` -> ``[..., K]``."""
        if self.pooling == "mean":
            raise ValueError("mean pooling has no attention logits")
        # tanh(x) = 2 sigmoid(2x) - 1: same values; this CPU build's tanh backward is far slower than sigmoid's.
        keys = 2.0 * torch.sigmoid(2.0 * self.key(items)) - 1.0
        return keys @ self.queries.t()

    def forward(self, history: Tensor, mask: Tensor, logits: Tensor | None = None,
                recency: Tensor | None = None) -> Interests:
        """Interests of histories ``[B, L, d]`` whose real items are ``mask [B, L]`` (False = padding).

        ``logits [B, L, K]``: :meth:`item_logits` of the history items when already computed (e.g. once per
        distinct item of a batch); by default computed here. ``recency [K, max_len]``: bias ``r`` of each interest
        and column, the last column being the most recent item (histories are right-aligned).
        """
        if history.dim() != 3 or mask.shape != history.shape[:2]:
            raise ValueError(f"history must be [B, L, d] with mask [B, L], got {tuple(history.shape)} and "
                             f"{tuple(mask.shape)}")
        length = history.shape[1]
        maskf = mask.to(history.dtype)
        weights = (maskf / maskf.sum(1, keepdim=True).clamp_min(1.0)).unsqueeze(1)  # [B, 1, L]: uniform
        if self.pooling == "attention":
            if length > self.max_len:
                raise ValueError(f"history has {length} columns but the model was built for max_len={self.max_len}")
            if logits is None:
                logits = self.item_logits(history)
            logits = logits.transpose(1, 2)  # [B, K, L]
            if recency is not None:
                logits = logits + recency[:, recency.shape[1] - length:]
            logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min)
            # Rows without any history become uniform here and then exactly 0 after the mask.
            weights = torch.cat([weights, torch.softmax(logits, dim=-1) * maskf.unsqueeze(1)], dim=1)
        return Interests(vectors=self.value(torch.bmm(weights, history)), weights=weights)

    def pool(self, history: Tensor, items: Tensor, item_logits: Tensor | None, recency: Tensor | None = None,
             extra: Tensor | None = None) -> Interests:
        """Interests of padded histories ``[B, L]`` of indices into a catalogue ``items [N, d]`` (-1 = padding), with
        the catalogue's :meth:`item_logits` ``[N, K]`` computed once (None for mean pooling). ``extra [m, d]``:
        vectors appended to a single history as its most recent items (e.g. a projected text query)."""
        vecs = items[history.clamp_min(0)]
        mask = history >= 0
        logits = None if item_logits is None else item_logits[history.clamp_min(0)]
        if extra is not None and len(extra):
            vecs = torch.cat([vecs, extra.unsqueeze(0)], dim=1)[:, -self.max_len:]
            mask = torch.cat([mask, torch.ones(1, len(extra), dtype=torch.bool)], dim=1)[:, -self.max_len:]
            if logits is not None:
                logits = torch.cat([logits, self.item_logits(extra).unsqueeze(0)], dim=1)[:, -self.max_len:]
        return self(vecs, mask, logits, recency)

    @property
    def gate_scale(self) -> Tensor:
        return self.gate_log_scale.exp() if self.pooling == "attention" else torch.ones(())

    def gate(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum_k pi_k s_k, pi)`` for per-interest scores ``logits [B, K, ...]`` (pi over dim 1)."""
        if self.pooling == "mean":
            return logits[:, 0], torch.ones_like(logits)
        pi = torch.softmax(logits * self.gate_scale, dim=1)
        return (pi * logits).sum(1), pi

    def score(self, interests: Interests, items: Tensor) -> Scored:
        """Every user against every candidate ``items [N, d]``: K matmuls, no per-candidate attention pass."""
        logits = torch.einsum("bkd,nd->bkn", interests.vectors, items)  # one [B*K, d] x [d, N] product
        scores, pi = self.gate(logits)
        return Scored(scores=scores, gate=pi, weights=interests.weights)

    def score_pairs(self, interests: Interests, items: Tensor) -> Scored:
        """Each user against their own candidates ``items [B, C, d]`` -> scores ``[B, C]``."""
        logits = torch.einsum("bkd,bcd->bkc", interests.vectors, items)
        scores, pi = self.gate(logits)
        return Scored(scores=scores, gate=pi, weights=interests.weights)

    def user_vectors(self, interests: Interests, items: Tensor) -> tuple[Tensor, Tensor]:
        """Target-aware user vectors ``u_i = sum_k pi_k(i) z_k`` for one candidate per row ``items [B, d]``.

        Returns ``(u [B, d], attention on the history [B, L])``; ``u_i · v_i`` equals :meth:`score`'s score.
        """
        logits = torch.einsum("bkd,bd->bk", interests.vectors, items)
        _, pi = self.gate(logits)
        user = torch.einsum("bk,bkd->bd", pi, interests.vectors)
        return user, torch.einsum("bk,bkl->bl", pi, interests.weights)


    @torch.no_grad()
    def top_k(self, interests: Interests, items: Tensor, k: int, mask_rows: Tensor | None = None,
              mask_cols: Tensor | None = None, min_candidates: int = 64) -> tuple[Tensor, Tensor]:
        """Exact ``(values, indices)`` ``[B, k]`` of the best `k` of `items` for each row, best first, with the
        pairs ``(mask_rows[j], mask_cols[j])`` left out (rows with fewer than `k` items left get ``-inf``).

        The gate is not computed for every item: an item's score is a convex combination of its per-interest
        scores, so it is at most their maximum. The gate runs on the items with the highest such bound, and that
        set (first ``max(4 k, min_candidates)`` items) grows fourfold until the k-th exact score is at least the
        largest bound left outside it.
        """
        n_items = len(items)
        k = min(k, n_items)
        logits = torch.einsum("bkd,nd->bkn", interests.vectors, items)  # [B, K + 1, N]
        bound = logits.amax(dim=1)
        if mask_rows is not None:
            bound[mask_rows, mask_cols] = float("-inf")
        size = min(n_items, max(4 * k, min_candidates))
        while True:
            bounds, cand = torch.topk(bound, size, dim=1)
            exact, _ = self.gate(logits.gather(2, cand.unsqueeze(1).expand(-1, logits.shape[1], -1)))
            exact = exact.masked_fill(torch.isinf(bounds), float("-inf"))  # masked items stay out
            values, pos = torch.topk(exact, k, dim=1)
            last = bounds[:, -1]
            done = (last <= values[:, -1]) | torch.isneginf(last)  # nothing outside can beat the k-th
            if size == n_items or bool(done.all()):
                return values, cand.gather(1, pos)
            size = min(n_items, 4 * size)


__all__ = ["HistoryAttention", "Interests", "Scored", "POOLINGS"]
