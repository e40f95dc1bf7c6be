"""Text similarity: an untrained open-domain baseline that scores items by what the sentence encoder knows.

A user is the normalised (optionally recency-weighted) mean of the sentence vectors of their history items, and an
item's score is the cosine between that vector and the item's own sentence vector:

    u = normalise(sum_j w_j t_j),   w_j = decay ** (age of history item j),   score(u, i) = <u, normalise(t_i)>

With ``decay = 1`` every history item counts the same (the plain mean). Items without text have a zero vector
(score 0, and no weight in a user's mean). Nothing is learned, so the baseline works on a domain no model has seen
(zero-shot) and on items without any interaction (text-only items).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from m6rec.models.base import DotExport


def domain_text_vectors(embeddings: np.ndarray, meta: Mapping, domains: list[str] | tuple[str, ...] | None = None
                        ) -> dict[str, np.ndarray]:
    """Slice the `text_embeddings` stage's global table into ``{domain: float32 [n_items, dim]}`` (meta.json's
    item offsets and counts)."""
    domains = list(meta["domains"]) if domains is None else list(domains)
    missing = [d for d in domains if d not in meta["item_offsets"]]
    if missing:
        raise KeyError(f"text embeddings have no domain {missing}; they hold {list(meta['domains'])}")
    return {d: np.asarray(embeddings[meta["item_offsets"][d]: meta["item_offsets"][d] + meta["n_items"][d]],
                          dtype=np.float32) for d in domains}


def normalise_rows(vecs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Unit-length rows as float32 (zero rows stay zero)."""
    t = torch.as_tensor(np.asarray(vecs, dtype=np.float32) if isinstance(vecs, np.ndarray) else vecs).float()
    return F.normalize(t, dim=-1)


def pooled_history(table: torch.Tensor, history: np.ndarray | torch.Tensor, decay: float = 1.0) -> torch.Tensor:
    """Normalised weighted mean of ``table[history]`` per row ``[B, dim]`` (``history`` right-aligned, -1 padded;
    the last column is the most recent item and weighs 1, the one before it `decay`, ...). Empty rows: zeros."""
    hist = torch.as_tensor(np.asarray(history), dtype=torch.long) if not torch.is_tensor(history) else history.long()
    if hist.ndim != 2:
        raise ValueError(f"history must be [B, L], got shape {tuple(hist.shape)}")
    length = hist.shape[1]
    weights = torch.tensor([decay ** (length - 1 - j) for j in range(length)], dtype=torch.float32)
    valid = hist >= 0
    w = weights.unsqueeze(0) * valid
    vecs = F.embedding(hist.clamp(min=0), table)  # [B, L, dim]
    return F.normalize((w.unsqueeze(-1) * vecs).sum(1), dim=-1)


class TextSimilarity:
    """Cosine between a user's pooled history text vector and every item's text vector (see the module docstring).

    ``item_text``: ``{domain: float32 [n_items, dim]}`` sentence vectors (zero rows: no text); ``max_len``: most
    recent history items pooled; ``decay``: recency weight per step back (1 = plain mean).
    :meth:`set_histories` gives a domain its users' histories, which :meth:`export` needs for the user vectors.
    """

    name = "textsim"

    def __init__(self, item_text: Mapping[str, np.ndarray], max_len: int = 200, decay: float = 1.0) -> None:
        if max_len < 1:
            raise ValueError(f"TextSimilarity max_len must be >= 1, got {max_len}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"TextSimilarity decay must be in (0, 1], got {decay}")
        self.history_len = int(max_len)
        self.decay = float(decay)
        self.raw_text = {d: np.asarray(v, dtype=np.float32) for d, v in item_text.items()}
        self.tables = {d: normalise_rows(v) for d, v in self.raw_text.items()}
        self.histories: dict[str, np.ndarray] = {}

    def table(self, domain: str) -> torch.Tensor:
        if domain not in self.tables:
            raise KeyError(f"{self.name} has no item text for domain '{domain}'; domains: {sorted(self.tables)}")
        return self.tables[domain]

    def user_vectors(self, domain: str, history: np.ndarray, batch: int = 1024) -> torch.Tensor:
        """Pooled history vector of each row of `history` ``[B, dim]``."""
        table = self.table(domain)
        hist = np.asarray(history)
        if hist.size and hist.max() >= len(table):
            raise ValueError(f"history holds item {int(hist.max())} but domain '{domain}' has {len(table)} items")
        out = [pooled_history(table, hist[s: s + batch], self.decay) for s in range(0, len(hist), batch)]
        return torch.cat(out) if out else torch.zeros(0, table.shape[1])

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        if history is None:
            raise ValueError(f"{self.name} scores users by their history: pass history [B, {self.history_len}]")
        return self.user_vectors(domain, history) @ self.table(domain).T

    def set_histories(self, domain: str, history: np.ndarray) -> None:
        """Every user's serving history ``[n_users, L]`` (e.g. train + valid, as the test split sees it)."""
        self.table(domain)
        self.histories[domain] = np.asarray(history, dtype=np.int64)

    def export(self, domain: str) -> DotExport:
        """Dot export: user vectors from :meth:`set_histories`, items their normalised text vectors; the text
        projection is the identity up to normalisation (a new item is scored by its own sentence vector)."""
        if domain not in self.histories:
            raise KeyError(f"{self.name}.export('{domain}'): call set_histories('{domain}', ...) first")
        table = self.table(domain)
        dim = table.shape[1]
        return DotExport(item_vectors=table.numpy().copy(),
                         user_vectors=self.user_vectors(domain, self.histories[domain]).numpy(),
                         item_text_vectors=self.raw_text[domain],
                         text_projection=(np.eye(dim, dtype=np.float32), np.zeros(dim, dtype=np.float32)))


__all__ = ["TextSimilarity", "domain_text_vectors", "normalise_rows", "pooled_history"]
