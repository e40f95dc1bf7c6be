"""History-attention recommender with multi-task heads over pretrained item vectors, for several domains at once.

Representation (shared bottom)::

    v_i  = b_i + r_i + a W t_i          b_i: frozen base from pretraining, r_i: trainable residual (init 0 when a
                                        base exists), t_i: the item's sentence vector, W: text projection (shared
                                        across domains), a: LightGCN's layer-0 weight (so that v_i = the pretrained
                                        item vector at the start)
    interests z = HistoryAttention(v of the user's last L items, recency bias rho_d of the domain)
                                                                        (see m6rec.models.attention)
    u_i  = target-aware user vector for candidate i,  score(u, i) = u_i · v_i

Heads and losses (``w_t`` = task weights; a task with ``w_t = 0`` is not computed at all, so it sends no gradient)::

    retrieval  sampled softmax of the target against N shared uniform negatives of the same domain:
               L_ret  = CE([s(u,i+), s(u,j_1..N)] * exp(c))          (c: learned log logit-scale)
    rating     r_hat = mu_d + f_rating(x_i),  x_i = [u_i, v_i, u_i * v_i, rbar_u - mu_d],  L_rate = MSE on explicit
               domains only; rbar_u: mean rating of the history items (the user's leniency; 0 on implicit domains)
    like       p = sigmoid(f_like(x_i)); label 1 = rating >= threshold (explicit) or any
               interaction (implicit), label 0 = one sampled non-interacted item per example; L_like = BCE
    L = w_ret L_ret + w_rate L_rate + w_like L_like

Why shared-bottom (history encoder + item vectors shared, one small tower per task) rather than MMoE: retrieval must
stay a dot product of the shared vectors for full-catalogue ranking, so it cannot sit behind a gated expert mix; the
three tasks are aligned views of the same preference (a liked, highly rated item is the next item), which is where
shared-bottom works and MMoE's gates have little to separate; and on ~100k interactions per domain and a CPU budget
of seconds per model, fewer parameters win. Negative transfer is measured, not assumed: the multitask stage reports
multi-task against retrieval-only training per domain.

The per-domain recency bias ``rho_d [K, L]`` (how much more the recent items weigh) is the domain's adapter: music
heard in random order and movies rated in sessions need different ones. It starts from the linear prior
``rho_dkj = recency_init * (j - L + 1) / (L - 1)`` (``-recency_init`` for the oldest column, 0 for the newest),
because Adam moves each entry only ~lr per step and a flat start takes many epochs to learn recency; domains
without a meaningful order (a per-user random split) start flat (:meth:`MultiTaskRecommender.set_recency`).

Fine-tuning modes (:meth:`MultiTaskRecommender.set_trainable`): ``zero_shot`` (nothing trains), ``efficient``
(task heads, the logit scale, the domain adapters and the text projection W), ``full`` (every parameter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from m6rec.models.attention import HistoryAttention, Interests, Scored
from m6rec.models.base import HistoryExport
from m6rec.models.finetuning import FINETUNE_MODES, GROUPS, MODE_GROUPS, ParameterGroups
from m6rec.models.item_tables import Batch, Catalogue, ItemTable, _tower

TASKS = ("retrieval", "rating", "like")
_SCORE_BUDGET = 2 ** 25  # floats of [rows, K + 1, n_items] per scoring chunk (128 MB)


class MultiTaskRecommender(ParameterGroups):
    """Shared history encoder and task heads over per-domain item tables (see the module docstring).

    Args:
        domains: domain names, in the order ``Batch.domain`` indexes them.
        n_items: catalogue size of each domain.
        explicit: whether each domain has explicit ratings (rating task).
        dim: item/user vector size (the pretrained model's).
        text_dim: sentence-vector size (0: no text input).
        n_interests, max_len, pooling, gate_scale: see :class:`HistoryAttention`.
        use_position: learn a recency bias per domain (attention pooling only).
        recency_init: slope of its linear prior (see the module docstring).
        hidden: width of the attention keys and of the task towers.
        task_weights: ``{"retrieval": w, "rating": w, "like": w}`` (missing tasks weigh 0).
        temperature: initial softmax temperature of the retrieval loss (its log inverse is learned).
        text_scale: ``a`` in ``v_i = b_i + r_i + a W t_i``.
        residual_std: std of the residuals' initialisation (0 when a pretrained base is loaded; > 0 from scratch).
        text_dtype: storage type of the text buffers.
    """

    def __init__(self, domains: Sequence[str], n_items: Sequence[int], explicit: Sequence[bool], dim: int = 64,
                 text_dim: int = 0, n_interests: int = 4, max_len: int = 50, pooling: str = "attention",
                 use_position: bool = True, recency_init: float = 5.0, gate_scale: float = 5.0, hidden: int = 64,
                 task_weights: dict[str, float] | None = None, temperature: float = 1.0, text_scale: float = 1.0,
                 residual_std: float = 0.0, text_dtype: str = "float16") -> None:
        super().__init__()
        if not (len(domains) == len(n_items) == len(explicit)) or not domains:
            raise ValueError(f"domains, n_items and explicit must be non-empty and of equal length, got "
                             f"{len(domains)}, {len(n_items)}, {len(explicit)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.domains = [str(d) for d in domains]
        self.n_items = [int(n) for n in n_items]
        self.explicit = [bool(e) for e in explicit]
        self.dim, self.text_dim, self.hidden = int(dim), int(text_dim), int(hidden)
        self.text_scale, self.temperature = float(text_scale), float(temperature)
        self.residual_std, self.text_dtype = float(residual_std), text_dtype
        self.task_weights = self.check_task_weights(task_weights or {"retrieval": 1.0})
        self.encoder = HistoryAttention(self.dim, n_interests, max_len, pooling, hidden, gate_scale)
        recency = (self.encoder.n_focused, int(max_len)) if use_position and pooling == "attention" else None
        self.items = nn.ModuleDict({f"d{k}": ItemTable(n, self.dim, self.text_dim, recency, recency_init, text_dtype)
                                    for k, n in enumerate(self.n_items)})
        self.text_proj = nn.Linear(self.text_dim, self.dim, bias=False) if self.text_dim else None
        self.rating_head = _tower(3 * self.dim + 1, self.hidden)
        self.like_head = _tower(3 * self.dim + 1, self.hidden)
        self.retrieval_log_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.temperature)))
        self._args = {"domains": self.domains, "n_items": self.n_items, "explicit": self.explicit, "dim": self.dim,
                      "text_dim": self.text_dim, "n_interests": n_interests, "max_len": max_len,
                      "pooling": pooling, "use_position": use_position, "recency_init": recency_init,
                      "gate_scale": gate_scale,
                      "hidden": self.hidden, "task_weights": dict(self.task_weights),
                      "temperature": self.temperature, "text_scale": self.text_scale,
                      "residual_std": self.residual_std, "text_dtype": text_dtype}
        if self.residual_std > 0:
            for table in self.items.values():
                nn.init.normal_(table.residual, std=self.residual_std)
        if self.text_proj is not None:
            nn.init.normal_(self.text_proj.weight, std=1.0 / math.sqrt(self.text_dim))

    @staticmethod
    def check_task_weights(weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown} in task_weights; tasks: {list(TASKS)}")
        out = {t: float(weights.get(t, 0.0)) for t in TASKS}
        if any(w < 0 for w in out.values()) or not any(out.values()):
            raise ValueError(f"task weights must be >= 0 with at least one > 0, got {out}")
        return out

    def config(self) -> dict:
        """Constructor arguments that rebuild this model (tables and text come with the state dict)."""
        return {**self._args, "task_weights": dict(self.task_weights)}

    def domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise KeyError(f"domain '{domain}' is not in this model; it has {self.domains}")
        return self.domains.index(domain)

    def table(self, domain: int) -> ItemTable:
        return self.items[f"d{domain}"]  # type: ignore[return-value]

    # ---- inputs ----------------------------------------------------------------------------------------------
    def set_items(self, domain: int, base: Tensor | None = None, text: Tensor | None = None,
                  rating_stats: Sequence[float] | None = None) -> None:
        """Fill a domain's frozen inputs (:meth:`ItemTable.fill`)."""
        self.table(domain).fill(self.domains[domain], base, text, rating_stats)

    def set_recency(self, domain: int, recency: Tensor | float) -> None:
        """Set a domain's recency adapter (:meth:`ItemTable.set_recency`)."""
        self.table(domain).set_recency(recency)

    def item_vectors(self, domain: int, items: Tensor | None = None) -> Tensor:
        """``v_i`` of `items` (default: the whole catalogue) of one domain ``[n, dim]``."""
        table = self.table(domain)
        if items is None:
            vecs = table.base + table.residual
            text = table.text
        else:
            vecs = table.base[items] + table.residual[items]
            text = table.text[items] if table.text is not None else None
        if text is not None and self.text_proj is not None:
            vecs = vecs + self.text_scale * self.text_proj(text.float())
        return vecs

    def _gather(self, domain: int, *indices: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """Item vectors of several index tensors, each distinct item projected once; with the attention logits
        of the first tensor's items (None for mean pooling)."""
        flat = torch.cat([i.reshape(-1) for i in indices])
        uniq, inverse = torch.unique(flat, return_inverse=True)
        uniq_vecs = self.item_vectors(domain, uniq)
        vecs = uniq_vecs[inverse]
        out, start = [], 0
        for i in indices:
            out.append(vecs[start:start + i.numel()].view(*i.shape, -1))
            start += i.numel()
        logits = None
        if self.encoder.pooling == "attention":
            first = inverse[:indices[0].numel()]
            logits = self.encoder.item_logits(uniq_vecs)[first].view(*indices[0].shape, -1)
        return out, logits

    def encode(self, domain: int, history: Tensor, history_vecs: Tensor, logits: Tensor | None = None
               ) -> Interests:
        """Interests of padded histories (``history`` -1 = padding) whose item vectors are ``history_vecs``."""
        return self.encoder(history_vecs, history >= 0, logits, self.table(domain).recency)

    # ---- heads -----------------------------------------------------------------------------------------------
    def pair_features(self, domain: int, user: Tensor, item: Tensor, history_rating: Tensor | None) -> Tensor:
        """``x = [u, v, u * v, rbar - mu_d]`` (the last term 0 where there is no history rating)."""
        if history_rating is None or not self.explicit[domain]:
            leniency = torch.zeros(len(user), 1)
        else:
            centred = history_rating.to(user.dtype) - self.table(domain).rating_stats[0]
            leniency = torch.nan_to_num(centred, nan=0.0).unsqueeze(-1)
        return torch.cat([user, item, user * item, leniency], dim=-1)

    def rating_output(self, domain: int, x: Tensor) -> Tensor:
        """Unclipped rating prediction ``mu_d + f_rating(x)`` ``[B]``."""
        return self.table(domain).rating_stats[0] + self.rating_head(x).squeeze(-1)

    def like_logit(self, x: Tensor) -> Tensor:
        return self.like_head(x).squeeze(-1)

    # ---- training ----------------------------------------------------------------------------------------------
    def task_losses(self, batch: Batch) -> dict[str, Tensor]:
        """The loss of every task with a positive weight that applies to the batch's domain."""
        d, w = batch.domain, self.task_weights
        hist_idx = batch.history.clamp_min(0)
        (hist, target, negs, like_negs), logits = self._gather(d, hist_idx, batch.target, batch.negatives,
                                                               batch.like_negatives)
        interests = self.encode(d, batch.history, hist, logits)
        losses: dict[str, Tensor] = {}
        if w["retrieval"] > 0:
            pos = self.encoder.score_pairs(interests, target.unsqueeze(1)).scores  # [B, 1]
            neg = self.encoder.score(interests, negs).scores  # [B, N]
            logits = torch.cat([pos, neg], dim=1) * self.retrieval_log_scale.exp()
            # A negative that is the row's own target is no negative (masked after scaling: -inf * 0 grads = NaN).
            clash = torch.cat([torch.zeros_like(batch.target, dtype=torch.bool).unsqueeze(1),
                               batch.negatives.unsqueeze(0) == batch.target.unsqueeze(1)], dim=1)
            logits = logits.masked_fill(clash, float("-inf"))
            losses["retrieval"] = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.int64))
        need_rating = w["rating"] > 0 and self.explicit[d]
        if need_rating or w["like"] > 0:
            user_pos, _ = self.encoder.user_vectors(interests, target)
            x_pos = self.pair_features(d, user_pos, target, batch.history_rating)
            if need_rating:
                losses["rating"] = F.mse_loss(self.rating_output(d, x_pos), batch.rating)
            if w["like"] > 0:
                user_neg, _ = self.encoder.user_vectors(interests, like_negs)
                x_neg = self.pair_features(d, user_neg, like_negs, batch.history_rating)
                logits = torch.cat([self.like_logit(x_pos), self.like_logit(x_neg)])
                labels = torch.cat([batch.like, torch.zeros_like(batch.like)])
                losses["like"] = F.binary_cross_entropy_with_logits(logits, labels)
        return losses

    def calculate_loss(self, batch: Batch) -> Tensor:
        """The training-loop contract: ``sum_t w_t L_t``."""
        losses = self.task_losses(batch)
        return sum(self.task_weights[t] * loss for t, loss in losses.items())  # type: ignore[return-value]

    # ---- scoring -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def catalogue(self, domain: int) -> Catalogue:
        """Every item's vector and attention logits, computed once for many scoring calls (inference only)."""
        vecs = self.item_vectors(domain)
        logits = self.encoder.item_logits(vecs) if self.encoder.pooling == "attention" else None
        return Catalogue(vectors=vecs, logits=logits)

    def _history(self, domain: int, history: Tensor, cat: Catalogue) -> Interests:
        return self.encoder.pool(history, cat.vectors, cat.logits, self.table(domain).recency)

    @torch.no_grad()
    def score(self, domain: int, history: Tensor, catalogue: Catalogue | None = None,
              candidates: Tensor | None = None) -> Scored:
        """Scores of `candidates` (default: the whole catalogue) for users with padded `history` ``[B, L]``,
        with the attention that produced them (see :class:`m6rec.models.attention.Scored`).

        ``catalogue``: the domain's :meth:`catalogue`, to avoid recomputing it batch after batch.
        """
        cat = catalogue if catalogue is not None else self.catalogue(domain)
        interests = self._history(domain, history, cat)
        cand = cat.vectors if candidates is None else cat.vectors[candidates]
        return self.encoder.score(interests, cand)

    @torch.no_grad()
    def predict_pairs(self, domain: int, history: Tensor, items: Tensor, catalogue: Catalogue | None = None,
                      history_rating: Tensor | None = None) -> dict[str, Tensor]:
        """For one candidate per row: ``score``, ``rating`` (clipped to the training range; explicit domains),
        ``like`` probability and ``attention`` on the history ``[B, L]``. ``history_rating [B]``: mean rating of
        each row's history (explicit domains)."""
        cat = catalogue if catalogue is not None else self.catalogue(domain)
        interests = self._history(domain, history, cat)
        item = cat.vectors[items]
        user, attention = self.encoder.user_vectors(interests, item)
        x = self.pair_features(domain, user, item, history_rating)
        out = {"score": (user * item).sum(-1), "like": torch.sigmoid(self.like_logit(x)), "attention": attention}
        if self.explicit[domain]:
            _, low, high = self.table(domain).rating_stats.tolist()
            if self.task_weights["rating"] > 0:
                out["rating"] = self.rating_output(domain, x).clamp(low, high)
            elif bool(self.table(domain).rating_calibration[2] > 0):
                a, b, _ = self.table(domain).rating_calibration.tolist()
                out["rating"] = (a + b * out["score"]).clamp(low, high)
        return out

    @torch.no_grad()
    def calibrate_ratings(self, domain: int, scores: Tensor, ratings: Tensor) -> tuple[float, float]:
        """Least-squares ``rating ~ a + b * score`` (e.g. over training pairs, each scored with its own past),
        stored for :meth:`predict_pairs` when the rating head is not trained (task weight 0)."""
        a_mat = np.stack([np.ones(len(scores)), scores.numpy()], axis=1).astype(np.float64)
        (a, b), *_ = np.linalg.lstsq(a_mat, ratings.numpy().astype(np.float64), rcond=None)
        self.table(domain).rating_calibration.copy_(torch.tensor([a, b, 1.0]))
        return float(a), float(b)

    # ---- the model contract (m6rec.models.base) ------------------------------------------------------------------
    name = "multitask"

    @property
    def history_len(self) -> int:
        return self.encoder.max_len

    def _weights_version(self) -> tuple[int, ...]:
        # Not `_version`: nn.Module's class attribute of that name is the state-dict format version, and a method
        # there put the whole model (a bound method pickles its instance) into every checkpoint.
        return tuple(t._version for t in (*self.parameters(), *self.buffers()))

    def cached_catalogue(self, domain: int) -> Catalogue:
        """:meth:`catalogue`, kept until a weight changes or the model trains (scoring calls it batch after
        batch)."""
        cache = self.__dict__.setdefault("_catalogues", {})
        version = self._weights_version()
        hit = cache.get(domain)
        if self.training or hit is None or hit[0] != version:
            hit = (version, self.catalogue(domain))
            if not self.training:
                cache[domain] = hit
        return hit[1]

    @torch.no_grad()
    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> Tensor:
        """Scores ``[B, n_items]`` of padded histories ``[B, max_len]`` (the users' ids are not used); rows are
        scored in chunks so that the per-interest scores stay within a fixed memory budget."""
        if history is None:
            raise ValueError("the history model scores users from their history: pass history [B, max_len]")
        k = self.domain_index(domain)
        cat = self.cached_catalogue(k)
        rows = max(1, _SCORE_BUDGET // (self.encoder.n_total * max(1, self.n_items[k])))
        hist = torch.as_tensor(np.asarray(history, dtype=np.int64))
        parts = [self.score(k, hist[s:s + rows], cat).scores for s in range(0, len(hist), rows)]
        return torch.cat(parts) if parts else torch.zeros(0, self.n_items[k])

    @torch.no_grad()
    def top_k(self, domain: str, history: np.ndarray, k: int, exclude: tuple[Tensor, Tensor] | None = None
              ) -> tuple[Tensor, Tensor]:
        """Exact top-`k` ``(scores, items)`` of padded histories, without the full softmax gate
        (:meth:`HistoryAttention.top_k`); ``exclude``: (row, item) pairs left out."""
        d = self.domain_index(domain)
        cat = self.cached_catalogue(d)
        interests = self._history(d, torch.as_tensor(np.asarray(history, dtype=np.int64)), cat)
        rows, cols = exclude if exclude is not None else (None, None)
        return self.encoder.top_k(interests, cat.vectors, k, rows, cols)

    @torch.no_grad()
    def export(self, domain: str) -> HistoryExport:
        """The domain's item vectors, the history pooling's weights and the domain's recency adapter (serving
        rebuilds :class:`HistoryAttention` from them and scores exactly as :meth:`score`)."""
        k = self.domain_index(domain)
        enc, table = self.encoder, self.table(k)
        config = {"dim": enc.dim, "n_interests": int(self._args["n_interests"]), "max_len": enc.max_len,
                  "pooling": enc.pooling, "hidden": enc.hidden}
        text = None
        if table.text is not None and bool(table.text.abs().sum() > 0):
            text = table.text.float().numpy()
        return HistoryExport(
            item_vectors=self.catalogue(k).vectors.float().numpy(), config=config,
            weights={n: t.detach().float().numpy().copy() for n, t in enc.state_dict().items()},
            recency=None if table.recency is None else table.recency.detach().float().numpy().copy(),
            item_text_vectors=text)


__all__ = ["Batch", "Catalogue", "ItemTable", "MultiTaskRecommender", "TASKS", "FINETUNE_MODES", "GROUPS",
           "MODE_GROUPS"]
