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
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from m6rec.models.attention import HistoryAttention, Interests, Scored

TASKS = ("retrieval", "rating", "like")
FINETUNE_MODES = ("zero_shot", "efficient", "full")
# Parameter groups by name pattern (fnmatch); every parameter belongs to exactly one.
GROUPS = {
    "encoder": ("encoder.*",),
    "heads": ("rating_head.*", "like_head.*", "retrieval_log_scale"),
    "text_projection": ("text_proj.*",),
    "adapters": ("items.*.recency",),
    "item_residuals": ("items.*.residual",),
}
MODE_GROUPS = {"zero_shot": (), "efficient": ("heads", "adapters", "text_projection"),
               "full": ("encoder", "heads", "adapters", "text_projection", "item_residuals")}


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


def _tower(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class MultiTaskRecommender(nn.Module):
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
    @torch.no_grad()
    def set_items(self, domain: int, base: Tensor | None = None, text: Tensor | None = None,
                  rating_stats: Sequence[float] | None = None) -> None:
        """Fill a domain's frozen inputs: base vectors ``[n, dim]``, sentence vectors ``[n, text_dim]``,
        (mean, low, high) of its training ratings."""
        table = self.table(domain)
        if base is not None:
            if tuple(base.shape) != tuple(table.base.shape):
                raise ValueError(f"base for domain {self.domains[domain]} must be {tuple(table.base.shape)}, "
                                 f"got {tuple(base.shape)}")
            table.base.copy_(base)
        if text is not None:
            if table.text is None or tuple(text.shape) != tuple(table.text.shape):
                want = None if table.text is None else tuple(table.text.shape)
                raise ValueError(f"text for domain {self.domains[domain]} must be {want}, got {tuple(text.shape)}")
            table.text.copy_(text.to(table.text.dtype))
        if rating_stats is not None:
            table.rating_stats.copy_(torch.as_tensor(rating_stats, dtype=torch.float32))

    @torch.no_grad()
    def set_recency(self, domain: int, recency: Tensor | float) -> None:
        """Set a domain's recency adapter: a ``[K, L]`` table, or the slope of the linear prior (0 = flat, for
        domains whose interactions have no meaningful order)."""
        table = self.table(domain)
        if table.recency is None:
            return
        if isinstance(recency, (int, float)):
            length = table.recency.shape[1]
            recency = float(recency) * torch.linspace(-1.0, 0.0, length) if length > 1 else torch.zeros(length)
        table.recency.copy_(torch.as_tensor(recency).expand_as(table.recency))

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
        idx = history.clamp_min(0)
        logits = None if cat.logits is None else cat.logits[idx]
        return self.encode(domain, history, cat.vectors[idx], logits)

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
            out["rating"] = self.rating_output(domain, x).clamp(low, high)
        return out

    # ---- fine-tuning -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names of each group in :data:`GROUPS` (every parameter is in exactly one)."""
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        for name, _ in self.named_parameters():
            owners = [g for g, patterns in GROUPS.items() if any(fnmatch(name, p) for p in patterns)]
            if len(owners) != 1:
                raise RuntimeError(f"parameter {name} belongs to groups {owners}; fix GROUPS")
            groups[owners[0]].append(name)
        return groups

    def set_trainable_groups(self, groups: Sequence[str]) -> list[str]:
        """Freeze every parameter outside `groups` (names of :data:`GROUPS`); returns the trainable names."""
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; groups: {list(GROUPS)}")
        by_group = self.parameter_groups()
        trainable = {n for g in groups for n in by_group[g]}
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)
        return sorted(trainable)

    def set_trainable(self, mode: str) -> list[str]:
        """Freeze every parameter outside the groups of fine-tuning `mode` (:data:`MODE_GROUPS`)."""
        if mode not in MODE_GROUPS:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; modes: {list(MODE_GROUPS)}")
        return self.set_trainable_groups(MODE_GROUPS[mode])

    def shared_state(self) -> dict[str, Tensor]:
        """Weights that do not depend on a domain's catalogue (encoder, heads, logit scale, text projection)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("items.")}

    def load_shared(self, state: dict[str, Tensor]) -> None:
        """Load :meth:`shared_state` of another model built with the same dims (catalogues may differ)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("items.")]
        if missing or unexpected:
            raise ValueError(f"shared weights do not fit: missing {missing}, unexpected {list(unexpected)}")


__all__ = ["Batch", "Catalogue", "ItemTable", "MultiTaskRecommender", "TASKS", "FINETUNE_MODES", "GROUPS",
           "MODE_GROUPS"]
