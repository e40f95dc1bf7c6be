"""Universal sequential recommender: frozen sentence vectors, a shared adaptor, a causal self-attention encoder.

After UniSRec (Hou et al., "Towards Universal Sequence Representation Learning for Recommender Systems", KDD 2022)
and SASRec (Kang & McAuley, ICDM 2018). Every domain's items are their frozen sentence vectors ``t_i`` (unit
length; zero for an item without text), so a domain the model never saw is scored from text alone.

Item vectors (one adaptor shared by every domain, :class:`MoEAdaptor`): ``K`` parametric-whitening experts
``(t - b_k) W_k`` mixed by a softmax gate on ``t``, plus an optional per-domain id embedding (transductive
fine-tuning only; never in zero-shot)::

    e_i = normalise( sum_k softmax(t_i G)_k (t_i - b_k) W_k  [+ id_d[i]] )

User state: the last position of a causal Transformer over ``e`` of the (right-aligned) history plus learned
positions, ``h = normalise(encoder(e_hist)[-1])``. Score of item ``i`` for a user with pooled history text vector
``ū = normalise(sum_k decay^k t_{last-k})`` (recency-weighted; ``decay`` is learned on the source domains)::

    s(u, i) = scale * <h, e_i>  +  beta * <ū, t_i>  +  gate(p_i)

The middle term is the residual path from the raw text vector: with ``beta`` it reaches the plain text-similarity
baseline (:mod:`m6rec.models.textsim`), which the learned part then corrects. With ``center_text`` (default) each
catalogue's vectors are first centred on that catalogue's mean and normalised again (:meth:`attach_domain`): a
label-free statistic that removes the direction every item of a shop shares. Centring plus recency alone, no
training, lifts the text baseline's test NDCG@10 from .0217 to .0344 on amazon-office, .0466 to .0706 on
amazon-scientific and .0174 to .0613 on ml-100k (decay .7, bench/bench_text_kernels.py; bench/bench_transfer.py
reports the model's figures).
``p_i = log(1 + c_i) / log(1 + max c)`` is the item's popularity in the domain's observed input histories (never
test labels), and ``gate`` a tiny MLP learned on the source domains. The whole score is a dot product of
``[scale h, beta ū, 1]`` and ``[e_i, t_i, gate(p_i)]``, which is how :meth:`UniversalSeqRec.export` serves it
(:class:`m6rec.models.base.DotExport`). The layers are in :mod:`m6rec.models.seqrec_layers`.

At inference the three terms can be re-weighted (:meth:`UniversalSeqRec.set_mix`) and the text term replaced by a
soft-max kernel over the history items, ``tau * log mean_j exp(<t_j, t_i> / tau)`` (:meth:`text_kernel`: the mean
cosine as ``tau -> inf``, the best single match as ``tau -> 0``); :func:`m6rec.training.seqrec.calibrate_mix` picks
both on a target's observed input histories (each user's last training item), no label read. The kernel is not a
dot product, so a model using it is not exported.

Training (:meth:`UniversalSeqRec.calculate_loss`): next-item prediction at every position of training sequences
from all source domains, sampled softmax over the batch's distinct target items (mixed domains) with log-Q
correction ``s - log q_j`` for their sampling frequency (Yi et al., RecSys 2019).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m6rec.models.base import DotExport, NotServableError
from m6rec.models.seqrec_layers import CausalBlock, MoEAdaptor, causal_mask

FINETUNE_MODES = ("zero_shot", "efficient", "full", "scratch")
# Parameter groups by name pattern (fnmatch); every parameter belongs to exactly one.
GROUPS = {
    "adaptor": ("adaptor.*",),
    "gate": ("gate.*", "log_scale", "beta", "decay_logit"),
    "encoder": ("encoder.*", "positions.*", "input_norm.*"),
    "ids": ("ids.*",),
}
MODE_GROUPS = {"zero_shot": (), "efficient": ("adaptor", "gate"), "full": ("adaptor", "gate", "encoder", "ids"),
               "scratch": ("adaptor", "gate", "encoder", "ids")}


@dataclass
class DomainTable:
    """What the model knows of one domain's catalogue: normalised text vectors and observed popularity."""

    text: Tensor  # float32 [n_items, text_dim], unit rows (zero: no text), centred on the catalogue if asked
    pop: Tensor  # float32 [n_items], log(1 + count) / log(1 + max count) in [0, 1]
    raw: Tensor | None = None  # the unit sentence vectors before centring (None: the same as `text`)

    @property
    def n_items(self) -> int:
        return int(self.text.shape[0])


def popularity_feature(counts: np.ndarray) -> Tensor:
    """``log(1 + c) / log(1 + max c)`` (zeros when nothing was observed): comparable across domain sizes."""
    c = np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0.0))
    top = c.max() if c.size else 0.0
    return torch.from_numpy((c / top if top > 0 else c).astype(np.float32))


class UniversalSeqRec(nn.Module):
    """Text-based universal sequence recommender (see the module docstring for the maths).

    Constructor args are plain numbers (a checkpoint rebuilds the model from :meth:`config`); domains' catalogues
    are attached with :meth:`attach_domain` (data, not weights), id embeddings with :meth:`enable_ids`.
    """

    name = "seqrec"

    def __init__(self, text_dim: int = 384, dim: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50,
                 n_experts: int = 4, dropout: float = 0.2, adaptor_dropout: float = 0.1,
                 init_scale: float = 10.0, init_beta: float = 10.0, center_text: bool = True,
                 init_decay: float = 0.8) -> None:
        super().__init__()
        self.args = dict(text_dim=text_dim, dim=dim, layers=layers, heads=heads, max_len=max_len,
                         n_experts=n_experts, dropout=dropout, adaptor_dropout=adaptor_dropout,
                         init_scale=init_scale, init_beta=init_beta, center_text=center_text,
                         init_decay=init_decay)
        if not 0.0 < init_decay < 1.0:
            raise ValueError(f"UniversalSeqRec init_decay must be in (0, 1), got {init_decay}")
        self.history_len = int(max_len)
        self.adaptor = MoEAdaptor(text_dim, dim, n_experts, adaptor_dropout)
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.input_norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.encoder.append(nn.LayerNorm(dim))  # final norm, applied after the blocks
        self.gate = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.beta = nn.Parameter(torch.tensor(float(init_beta)))
        # recency weight of the pooled history text (decay per step back), learned on the source domains
        self.decay_logit = nn.Parameter(torch.tensor(math.log(init_decay / (1.0 - init_decay))))
        self.ids = nn.ModuleDict()
        self.tables: dict[str, DomainTable] = {}
        self.histories: dict[str, np.ndarray] = {}
        # Multipliers of the three score terms at inference (1, 1, 1 = the trained model); see :meth:`set_mix`.
        self.mix = {"seq": 1.0, "text": 1.0, "pop": 1.0}
        # None: the text term is the trained <ū, t_i>; a float: the soft-max kernel of :meth:`text_kernel`.
        self.text_tau: float | None = None

    def config(self) -> dict[str, Any]:
        return dict(self.args)

    # ---- catalogues --------------------------------------------------------------------------------------------
    def attach_domain(self, domain: str, text: np.ndarray | Tensor, counts: np.ndarray | None = None) -> None:
        """Give the model a domain's item sentence vectors ``[n_items, text_dim]`` and item interaction counts from
        its observed input histories (None: no popularity, e.g. a brand-new domain).

        With ``center_text`` the unit vectors are centred on the catalogue's mean (items with text) and normalised
        again: sentence vectors of one catalogue share a large common direction (a shop's "office product"), which
        dominates every cosine; removing it is a label-free statistic of the catalogue, so it holds zero-shot."""
        t = raw = F.normalize(torch.as_tensor(np.asarray(text, dtype=np.float32)), dim=-1)
        if t.ndim != 2 or t.shape[1] != self.args["text_dim"]:
            raise ValueError(f"domain '{domain}' text vectors must be [n_items, {self.args['text_dim']}], "
                             f"got {tuple(t.shape)}")
        counts = np.zeros(len(t)) if counts is None else np.asarray(counts, dtype=np.float64)
        if counts.shape != (len(t),):
            raise ValueError(f"domain '{domain}' counts must have shape ({len(t)},), got {counts.shape}")
        has = t.norm(dim=-1) > 0
        if self.args["center_text"] and has.any():
            t = torch.where(has.unsqueeze(-1), F.normalize(t - t[has].mean(0, keepdim=True), dim=-1), t)
        self.tables[domain] = DomainTable(text=t, pop=popularity_feature(counts), raw=raw)

    def table(self, domain: str) -> DomainTable:
        if domain not in self.tables:
            raise KeyError(f"{self.name} has no catalogue for domain '{domain}' (attach_domain first); "
                           f"domains: {sorted(self.tables)}")
        return self.tables[domain]

    def enable_ids(self, domain: str) -> None:
        """Per-domain item id embeddings (zero at start) added to the adapted text vectors: transductive only."""
        if domain not in self.ids:
            emb = nn.Embedding(self.table(domain).n_items, self.args["dim"])
            nn.init.zeros_(emb.weight)
            self.ids[domain] = emb

    # ---- the maths ---------------------------------------------------------------------------------------------
    def item_vectors(self, domain: str, items: Tensor | None = None) -> Tensor:
        """Normalised adapted vectors ``e`` of `items` (default: the whole catalogue) ``[n, dim]``."""
        tab = self.table(domain)
        text = tab.text if items is None else tab.text[items]
        e = self.adaptor(text)
        if domain in self.ids:
            e = e + (self.ids[domain].weight if items is None else self.ids[domain](items))
        return F.normalize(e, dim=-1)

    def pop_score(self, domain: str, items: Tensor | None = None) -> Tensor:
        return self.gate_score(self.table(domain).pop if items is None else self.table(domain).pop[items])

    def gate_score(self, pop: Tensor) -> Tensor:
        """The popularity term ``gate(p)`` of popularity features ``p`` (:func:`popularity_feature`)."""
        return self.gate(pop.unsqueeze(-1)).squeeze(-1)

    def _hidden(self, domain: str, hist: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder input ``[B, L, dim]`` and its mask for right-aligned, -1 padded `hist`."""
        valid = hist >= 0
        e = self.item_vectors(domain, hist.clamp(min=0).reshape(-1)).view(*hist.shape, -1)
        e = e * valid.unsqueeze(-1)
        pos = self.positions.weight[-hist.shape[1]:]
        x = self.input_dropout(self.input_norm(e + pos.unsqueeze(0)))
        return x, causal_mask(valid)

    def encode(self, domain: str, hist: Tensor) -> Tensor:
        """Normalised states at every position ``[B, L, dim]``."""
        x, mask = self._hidden(domain, hist)
        for block in self.encoder[:-1]:
            x = block(x, mask)
        return F.normalize(self.encoder[-1](x), dim=-1)

    @property
    def decay(self) -> Tensor:
        return torch.sigmoid(self.decay_logit)

    def text_state(self, domain: str, hist: Tensor) -> Tensor:
        """Causal pooled history text ``ū`` at every position ``[B, L, text_dim]``: the normalised sum of the
        history's vectors so far, the one ``k`` steps back weighted ``decay ** k``."""
        t = self.table(domain).text[hist.clamp(min=0)] * (hist >= 0).unsqueeze(-1)
        steps = torch.arange(hist.shape[1])
        back = steps.unsqueeze(1) - steps.unsqueeze(0)  # [L, L]: position t, item j -> t - j
        w = torch.where(back >= 0, self.decay ** back.clamp(min=0).float(), torch.zeros(()))
        return F.normalize(torch.einsum("tj,bjd->btd", w, t), dim=-1)

    def user_state(self, domain: str, history: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """``(h, ū)`` at the last position of each history row; zeros for an empty history."""
        hist = torch.as_tensor(np.asarray(history), dtype=torch.long) if not torch.is_tensor(history) else history
        hist = self._fit_len(hist)
        h = self.encode(domain, hist)[:, -1]
        u = self.text_state(domain, hist)[:, -1]
        empty = ~(hist >= 0).any(1, keepdim=True)
        return h.masked_fill(empty, 0.0), u

    def _fit_len(self, hist: Tensor) -> Tensor:
        n = self.history_len
        if hist.shape[1] >= n:
            return hist[:, -n:].long()
        return F.pad(hist.long(), (n - hist.shape[1], 0), value=-1)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def calculate_loss(self, batch: Mapping[str, Any]) -> Tensor:
        """Sampled softmax with log-Q correction over the batch's distinct targets (see the module docstring).

        ``batch``: ``domain`` (a catalogue name), ``inputs`` and ``targets`` int64 ``[B, L]`` (-1: no target),
        ``log_q`` float32 ``[n_items]``: log sampling frequency of each item as a target.
        """
        domain, inputs, targets = batch["domain"], batch["inputs"], batch["targets"]
        keep = targets >= 0
        h = self.encode(domain, inputs)[keep]  # [P, d]
        u = self.text_state(domain, inputs)[keep]  # [P, t]
        pos = targets[keep]
        cand, label = torch.unique(pos, return_inverse=True)
        e = self.item_vectors(domain, cand)
        logits = self.scale * h @ e.T + self.beta * u @ self.table(domain).text[cand].T + self.pop_score(domain, cand)
        logits = logits - batch["log_q"][cand].unsqueeze(0)
        return F.cross_entropy(logits, label)

    @torch.no_grad()
    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> Tensor:
        if history is None:
            raise ValueError(f"{self.name} scores users by their history: pass history [B, {self.history_len}]")
        was = self.training
        self.eval()
        try:
            h, u = self.user_state(domain, history)
            tab = self.table(domain)
            m = self.mix
            text = u @ tab.text.T if self.text_tau is None else self.text_kernel(domain, history, self.text_tau)
            return m["seq"] * self.scale * h @ self.item_vectors(domain).T + m["text"] * self.beta * text \
                + m["pop"] * self.pop_score(domain).unsqueeze(0)
        finally:
            self.train(was)

    @torch.no_grad()
    def explain(self, domain: str, history: np.ndarray) -> np.ndarray:
        """Last layer's head-averaged attention of the last position over each history item ``[B, L]`` (0 on
        padding; columns as in the model's input window, the last column being the most recent item)."""
        was = self.training
        self.eval()
        try:
            hist = self._fit_len(torch.as_tensor(np.asarray(history), dtype=torch.long))
            x, mask = self._hidden(domain, hist)
            blocks = list(self.encoder[:-1])
            for block in blocks[:-1]:
                x = block(x, mask)
            w = blocks[-1].attention(x, mask)[:, -1]
            return (w * (hist >= 0)).numpy()
        finally:
            self.train(was)

    @torch.no_grad()
    def text_kernel(self, domain: str, history: np.ndarray | Tensor, tau: float, chunk: int = 32) -> Tensor:
        """Soft-max text similarity ``tau * log mean_j exp(<t_j, t_i> / tau)`` over the history items ``j``
        ``[B, n_items]``: the mean cosine as ``tau -> inf`` (the ranking of :meth:`text_state`'s term), the best
        single match as ``tau -> 0``. Not a dot product, hence inference only (not exported)."""
        hist = self._fit_len(torch.as_tensor(np.asarray(history), dtype=torch.long))
        text = self.table(domain).text
        out = []
        for s in range(0, len(hist), chunk):
            h = hist[s: s + chunk]
            valid = h >= 0
            w = torch.log(valid.float() / valid.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1)  # log(1/n), -inf pad
            sims = text[h.clamp(min=0)] @ text.T / tau + w
            k = tau * torch.logsumexp(sims, dim=1)
            out.append(torch.where(valid.any(1, keepdim=True), k, torch.zeros_like(k)))
        return torch.cat(out) if out else torch.zeros(0, len(text))

    def set_mix(self, seq: float = 1.0, text: float = 1.0, pop: float = 1.0) -> None:
        """Multipliers of the sequence, text-residual and popularity terms of the score (inference only; e.g.
        calibrated on a target's observed histories, or 0 to ablate a term)."""
        self.mix = {"seq": float(seq), "text": float(text), "pop": float(pop)}

    # ---- serving -----------------------------------------------------------------------------------------------
    def set_histories(self, domain: str, history: np.ndarray) -> None:
        """Every user's serving history ``[n_users, L]`` (e.g. train + valid) for :meth:`export`."""
        self.table(domain)
        self.histories[domain] = np.asarray(history, dtype=np.int64)

    @torch.no_grad()
    def export(self, domain: str) -> DotExport:
        """Dot export ``[scale h, beta ū, 1] . [e_i, t_i, gate(p_i)]`` (exactly :meth:`full_scores` for the users'
        serving histories). The text projection is left to the exporter (ridge on the concatenated vectors)."""
        if domain not in self.histories:
            raise KeyError(f"{self.name}.export('{domain}'): call set_histories('{domain}', ...) first")
        if self.text_tau is not None:
            raise NotServableError(f"{self.name} with the text kernel (text_tau={self.text_tau}) is not a dot "
                                   "product: set text_tau = None to export, or serve it as a text-kernel bundle")
        was = self.training
        self.eval()
        try:
            tab = self.table(domain)
            hs, us = [], []
            hist = self.histories[domain]
            for s in range(0, len(hist), 1024):
                h, u = self.user_state(domain, hist[s: s + 1024])
                hs.append(h)
                us.append(u)
            h, u = torch.cat(hs), torch.cat(us)
            m = self.mix
            users = torch.cat([m["seq"] * self.scale * h, m["text"] * self.beta * u,
                               torch.full((len(h), 1), m["pop"])], 1)
            items = torch.cat([self.item_vectors(domain), tab.text, self.pop_score(domain).unsqueeze(1)], 1)
            return DotExport(item_vectors=items.numpy().astype(np.float32),
                             user_vectors=users.numpy().astype(np.float32),
                             item_text_vectors=(tab.text if tab.raw is None else tab.raw).numpy())
        finally:
            self.train(was)

    # ---- fine-tuning -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        for name, _ in self.named_parameters():
            owners = [g for g, pats in GROUPS.items() if any(fnmatch(name, p) for p in pats)]
            if len(owners) != 1:
                raise RuntimeError(f"parameter {name} belongs to groups {owners}; fix GROUPS")
            groups[owners[0]].append(name)
        return groups

    def set_trainable(self, mode: str) -> list[str]:
        """Freeze every parameter outside the groups of fine-tuning `mode` (:data:`MODE_GROUPS`)."""
        if mode not in MODE_GROUPS:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; modes: {list(MODE_GROUPS)}")
        groups = self.parameter_groups()
        trainable = {n for g in MODE_GROUPS[mode] for n in groups[g]}
        for name, p in self.named_parameters():
            p.requires_grad_(name in trainable)
        return sorted(trainable)

    def shared_state(self) -> dict[str, Tensor]:
        """Weights that do not depend on a domain's catalogue (everything but id embeddings)."""
        return {k: v.clone() for k, v in self.state_dict().items() if not k.startswith("ids.")}


def sequence_chunks(indptr: np.ndarray, items: np.ndarray, max_len: int, users: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Training windows of every user's time-ordered sequence: inputs ``s[a:b-1]`` and targets ``s[a+1:b]`` for
    consecutive blocks ending at the sequence's end, right-aligned and -1 padded ``([n, L], [n, L])``."""
    users = np.arange(len(indptr) - 1) if users is None else np.asarray(users, dtype=np.int64)
    ins, outs = [], []
    for u in users:
        s = items[indptr[u]: indptr[u + 1]]
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            block = s[start:end]
            x, y = np.full(max_len, -1, np.int64), np.full(max_len, -1, np.int64)
            x[max_len - len(block) + 1:] = block[:-1]
            y[max_len - len(block) + 1:] = block[1:]
            ins.append(x)
            outs.append(y)
            end = start + 1
            if start == 0:
                break
    if not ins:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(ins), np.stack(outs)


__all__ = ["FINETUNE_MODES", "GROUPS", "MODE_GROUPS", "DomainTable", "UniversalSeqRec", "popularity_feature",
           "sequence_chunks"]
