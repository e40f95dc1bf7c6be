"""LightGCN with text-aware item inputs, over a precomputed normalised adjacency.

LightGCN: X. He, K. Deng, X. Wang, Y. Li, Y. Zhang, M. Wang, *LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation*, SIGIR 2020 (https://arxiv.org/abs/2002.02126).

Maths (users and items of every domain are nodes of one graph; see :mod:`m6rec.graph.build`)::

    x0_u = E_user[u]
    x0_i = E_item[i] + W t_i          t_i: the item's sentence-encoder vector (no term for items without text)
    x^(l+1) = Â x^(l),   Â = D^-1/2 A D^-1/2 (precomputed once, sparse CSR)
    e = sum_{l=0..L} alpha_l x^(l),   alpha_l = 1 / (L + 1)
    score(u, i) = e_u · e_i
    loss = mean_(u,i,j) softplus(e_u·e_j - e_u·e_i)  +  lambda / B * ||x0 of the batch's u, i, j||^2     (BPR)

Item id embeddings of items with text start at zero, so ``E_item`` is a learned residual on top of the text
projection: an item that never receives a gradient (a cold-start item, an item of a domain left out of the graph)
keeps a pure text vector, ``e_i = alpha_0 W t_i`` (it has no neighbours to propagate from).

Fold-in (scoring a user from interactions beyond the training graph, e.g. train + valid at test time, as served):
the propagated item vectors stay fixed and the user's vector is refitted to their items by
:func:`m6rec.models.mf.ridge_fold_in` (re-propagating a graph with the new edges would move every item vector and
change what was selected on validation).

Propagation uses the torch-geometric ``LGConv`` operator (``normalize=False``: the adjacency is already normalised)
or, by default, the same product through :class:`SymmetricSparseMM`, whose backward reuses ``Â`` instead of
transposing it (``Â`` is symmetric), which is several times faster on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv
from torch_geometric.nn.models.lightgcn import BPRLoss

import scipy.sparse as sp

from m6rec.models.base import DotExport
from m6rec.models.mf import ridge_fold_in

PROPAGATIONS = ("symmetric", "lgconv")
FOLD_IN_REG, FOLD_IN_W0 = 10.0, 0.0  # ridge_fold_in's λ and w0: BPR-MF's choice (not tuned on LightGCN)


class SymmetricSparseMM(torch.autograd.Function):
    """``y = Â x`` for a symmetric sparse ``Â``; the gradient w.r.t. ``x`` is ``Â g`` (no CSR transpose)."""

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:  # noqa: D102
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # noqa: D102
        return None, torch.sparse.mm(ctx.adj, grad.contiguous())


class TextLightGCN(nn.Module):
    """LightGCN whose item inputs are an id embedding plus a linear projection of the item's text vector.

    Args:
        n_users, n_items: sizes of the global id spaces (nodes are users first, then items).
        embedding_dim: size of every embedding.
        num_layers: propagation layers L.
        text_dim: size of the sentence-encoder vectors (0: no text, plain LightGCN).
        n_text_items: number of items that have a text vector (rows of the ``text_feats`` buffer).
        text_dtype: storage type of the text buffer ("float16" halves the checkpoint; maths is float32).
        init_std: std of the normal initialisation of id embeddings (item rows with text start at 0).
        propagation: "symmetric" (fast custom backward) or "lgconv" (torch-geometric LGConv); same result.
        reg: L2 weight lambda of :meth:`calculate_loss`.
        id_dropout: in training, the probability that an item with text loses its id embedding for a batch (it is
            then represented by its text alone, as a cold-start item is), so that the text projection has to carry
            the preference signal instead of leaving it to the id embeddings (DropoutNet, Volkovs et al., NeurIPS
            2017). No effect in eval mode.
    """

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, num_layers: int = 3,
                 text_dim: int = 0, n_text_items: int = 0, text_dtype: str = "float16", init_std: float = 0.1,
                 propagation: str = "symmetric", reg: float = 1e-4, id_dropout: float = 0.0) -> None:
        super().__init__()
        if propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
        if n_users <= 0 or n_items <= 0 or embedding_dim <= 0 or num_layers < 0:
            raise ValueError(f"bad sizes: n_users={n_users}, n_items={n_items}, embedding_dim={embedding_dim}, "
                             f"num_layers={num_layers}")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        if (text_dim > 0) != (n_text_items > 0):
            raise ValueError(f"text_dim ({text_dim}) and n_text_items ({n_text_items}) must both be > 0 or both 0")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.embedding_dim, self.num_layers = int(embedding_dim), int(num_layers)
        self.text_dim, self.n_text_items = int(text_dim), int(n_text_items)
        self.init_std = float(init_std)
        self.text_dtype = text_dtype
        self.propagation = propagation
        self.user_emb = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_emb = nn.Embedding(self.n_items, self.embedding_dim)
        self.convs = nn.ModuleList([LGConv(normalize=False) for _ in range(self.num_layers)])
        self.register_buffer("alpha", torch.full((self.num_layers + 1,), 1.0 / (self.num_layers + 1)))
        if self.text_dim:
            self.text_proj = nn.Linear(self.text_dim, self.embedding_dim, bias=False)
            self.register_buffer("text_feats", torch.zeros(self.n_text_items, self.text_dim,
                                                           dtype=getattr(torch, text_dtype)))
            self.register_buffer("text_items", torch.arange(self.n_text_items, dtype=torch.int64))
        else:
            self.text_proj = None
        self.adj: Tensor | None = None  # the normalised adjacency; data, not state (see set_graph)
        self.reg = float(reg)
        self.id_dropout = float(id_dropout)
        self.reset_parameters()

    @classmethod
    def with_text(cls, n_users: int, n_items: int, text_feats: Tensor | None, text_items: Tensor | None,
                  **kwargs) -> TextLightGCN:
        """A fresh model whose items `text_items` (global ids) have the sentence vectors `text_feats`."""
        if text_feats is None or len(text_feats) == 0:
            return cls(n_users, n_items, **kwargs)
        text_items = torch.as_tensor(text_items, dtype=torch.int64)
        if text_feats.dim() != 2 or len(text_feats) != len(text_items):
            raise ValueError(f"text_feats must be [n_text_items, text_dim] matching text_items "
                             f"({len(text_items)}), got {tuple(text_feats.shape)}")
        if text_items.numel() and (text_items.min() < 0 or text_items.max() >= n_items):
            raise ValueError(f"text_items out of range [0, {n_items})")
        model = cls(n_users, n_items, text_dim=int(text_feats.shape[1]), n_text_items=len(text_items), **kwargs)
        model.text_feats.copy_(text_feats.to(model.text_feats.dtype))
        model.text_items.copy_(text_items)
        model.reset_parameters()
        return model

    def config(self) -> dict:
        """Constructor arguments that rebuild this model (the text buffers come with the state dict)."""
        return {"n_users": self.n_users, "n_items": self.n_items, "embedding_dim": self.embedding_dim,
                "num_layers": self.num_layers, "text_dim": self.text_dim, "n_text_items": self.n_text_items,
                "text_dtype": self.text_dtype, "init_std": self.init_std, "propagation": self.propagation,
                "reg": self.reg, "id_dropout": self.id_dropout}

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user_emb.weight, std=self.init_std)
        nn.init.normal_(self.item_emb.weight, std=self.init_std)
        if self.text_proj is not None:
            nn.init.normal_(self.text_proj.weight, std=1.0 / math.sqrt(self.text_dim))
            with torch.no_grad():
                self.item_emb.weight[self.text_items] = 0.0

    def set_graph(self, adj: Tensor) -> TextLightGCN:
        """Attach the normalised adjacency ``[n_users + n_items]^2`` (sparse CSR) used by forward and the loss."""
        n = self.n_users + self.n_items
        if adj.layout != torch.sparse_csr or tuple(adj.shape) != (n, n):
            raise ValueError(f"adj must be a sparse CSR tensor of shape ({n}, {n}), got {adj.layout} "
                             f"{tuple(adj.shape)}")
        self.adj = adj
        self._final = None
        return self

    # ---- representations -------------------------------------------------------------------------------------
    def text_vectors(self, text: Tensor) -> Tensor:
        """``W t`` for sentence vectors `text` ``[n, text_dim]``."""
        if self.text_proj is None:
            raise ValueError("this model was built without text (text_dim = 0)")
        return self.text_proj(text.to(self.text_proj.weight.dtype))

    def input_embeddings(self) -> Tensor:
        """``x0`` of every node ``[n_users + n_items, d]``: users, then items (id embedding + text projection)."""
        items = self.item_emb.weight
        if self.text_proj is not None:
            if self.training and self.id_dropout > 0:
                dropped = self.text_items[torch.rand(self.n_text_items, device=items.device) < self.id_dropout]
                keep = torch.ones(self.n_items, 1, dtype=items.dtype, device=items.device)
                keep[dropped] = 0.0
                items = items * keep
            items = items.index_add(0, self.text_items, self.text_vectors(self.text_feats))
        return torch.cat([self.user_emb.weight, items])

    def propagate(self, x0: Tensor, adj: Tensor | None = None) -> Tensor:
        """``sum_l alpha_l Â^l x0``."""
        adj = self._adj(adj)
        out = x0 * self.alpha[0]
        x = x0
        for layer, conv in enumerate(self.convs, start=1):
            x = SymmetricSparseMM.apply(adj, x) if self.propagation == "symmetric" else conv(x, adj)
            out = out + x * self.alpha[layer]
        return out

    def forward(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final ``(user vectors [n_users, d], item vectors [n_items, d])``."""
        out = self.propagate(self.input_embeddings(), adj)
        return out[: self.n_users], out[self.n_users:]

    def text_item_vectors(self, text: Tensor) -> Tensor:
        """Final vector of a never-seen item (no edges, no id embedding) with sentence vectors `text`."""
        return self.text_vectors(text) * self.alpha[0]

    def text_projection(self) -> tuple[Tensor, Tensor]:
        """``(weight [text_dim, d], bias [d])`` with ``t @ weight + bias == text_item_vectors(t)``."""
        if self.text_proj is None:
            raise ValueError("this model was built without text (text_dim = 0)")
        weight = (self.text_proj.weight.detach().t() * self.alpha[0]).contiguous()
        return weight, torch.zeros(self.embedding_dim, dtype=weight.dtype)

    # ---- training ----------------------------------------------------------------------------------------------
    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, reg: float | None = None,
                 adj: Tensor | None = None) -> Tensor:
        """BPR loss of (user, positive item, negative item) global ids plus L2 on their input embeddings."""
        x0 = self.input_embeddings()
        out = self.propagate(x0, adj)
        pos_nodes, neg_nodes = pos + self.n_users, neg + self.n_users
        u = out[users]
        pos_scores = (u * out[pos_nodes]).sum(-1)
        neg_scores = (u * out[neg_nodes]).sum(-1)
        batch_x0 = torch.cat([x0[users], x0[pos_nodes], x0[neg_nodes]])
        return BPRLoss(self.reg if reg is None else float(reg))(pos_scores, neg_scores, batch_x0)

    def calculate_loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The training-loop contract: `batch` = (users, positive items, negative items), global ids."""
        users, pos, neg = batch
        return self.bpr_loss(users, pos, neg)

    # ---- the model contract (m6rec.models.base) ------------------------------------------------------------------
    history_len = 0
    name = "lightgcn"
    folds_in = True  # export(domain, known=rows): user vectors folded in from `known` (m6rec.serving.export)
    fold_in_reg = FOLD_IN_REG  # λ of ridge_fold_in
    fold_in_w0 = FOLD_IN_W0  # weight of the unobserved items in ridge_fold_in

    def set_domains(self, domains: dict[str, tuple[int, int, int, int]]) -> TextLightGCN:
        """Name the domains of the global id space: ``{domain: (user_offset, n_users, item_offset, n_items)}``.
        A domain's users are scored against that domain's items only."""
        for d, (u0, nu, i0, ni) in domains.items():
            if u0 < 0 or i0 < 0 or u0 + nu > self.n_users or i0 + ni > self.n_items:
                raise ValueError(f"domain {d}: users [{u0}, {u0 + nu}) / items [{i0}, {i0 + ni}) outside the "
                                 f"model's {self.n_users} users / {self.n_items} items")
        self.domains = {d: tuple(int(x) for x in v) for d, v in domains.items()}
        return self

    def train(self, mode: bool = True) -> TextLightGCN:
        self._final = None  # propagated vectors are cached for scoring only while nothing trains
        return super().train(mode)

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """:meth:`forward` without gradients, cached until the model trains again or its weights change."""
        cached = getattr(self, "_final", None)
        if cached is None or self.training or cached[0] is not self.item_emb.weight._version:
            with torch.no_grad():
                users, items = self.forward()
            cached = (self.item_emb.weight._version, users, items)
            if not self.training:
                self._final = cached
        return cached[1], cached[2]

    def _domain(self, domain: str) -> tuple[int, int, int, int]:
        layout = getattr(self, "domains", None)
        if not layout:
            raise ValueError("no domains: call set_domains() first")
        if domain not in layout:
            raise KeyError(f"domain '{domain}' is not in this model; it has {sorted(layout)}")
        return layout[domain]

    @torch.no_grad()
    def fold_in(self, domain: str, users: np.ndarray, rows: sp.spmatrix) -> Tensor:
        """Vectors ``[B, d]`` of the domain's local `users` refitted to their binary `rows` ``[B, n_items of
        domain]`` (the module docstring's fold-in)."""
        _, _, i0, ni = self._domain(domain)
        if rows.shape[0] != len(users):
            raise ValueError(f"fold-in: {rows.shape[0]} rows for {len(users)} users")
        _, item_vecs = self.final_embeddings()
        return ridge_fold_in(rows, item_vecs[i0:i0 + ni], self.fold_in_reg, self.fold_in_w0)

    @torch.no_grad()
    def full_scores(self, domain: str, users: np.ndarray, history: sp.spmatrix | None = None) -> Tensor:
        """Scores ``[B, n_items of domain]`` of the domain's local `users`; with `history` (their rows, csr
        ``[B, n_items of domain]``) from their folded-in vectors."""
        u0, _, i0, ni = self._domain(domain)
        user_vecs, item_vecs = self.final_embeddings()
        if history is not None:
            return self.fold_in(domain, users, history) @ item_vecs[i0:i0 + ni].t()
        rows = torch.from_numpy(u0 + np.asarray(users, dtype=np.int64))
        return user_vecs[rows] @ item_vecs[i0:i0 + ni].t()

    @torch.no_grad()
    def export(self, domain: str, known: sp.spmatrix | None = None) -> DotExport:
        """The domain's propagated user and item vectors (user vectors folded in from `known`, every user's served
        rows, when given); where its items have text, their sentence vectors and the model's own text projection (a
        never-seen item's vector is ``alpha_0 W t``)."""
        u0, nu, i0, ni = self._domain(domain)
        user_vecs, item_vecs = self.final_embeddings()
        if known is not None:
            user_vecs = user_vecs.clone()
            user_vecs[u0:u0 + nu] = self.fold_in(domain, np.arange(nu), known)
        text, projection = None, None
        if self.text_proj is not None:
            local = (self.text_items >= i0) & (self.text_items < i0 + ni)
            if bool(local.any()):
                text = torch.zeros(ni, self.text_dim, dtype=torch.float32)
                text[self.text_items[local] - i0] = self.text_feats[local].float()
                weight, bias = self.text_projection()
                projection = (weight.numpy().astype(np.float32), bias.numpy().astype(np.float32))
        return DotExport(item_vectors=item_vecs[i0:i0 + ni].numpy().copy(),
                         user_vectors=user_vecs[u0:u0 + nu].numpy().copy(),
                         item_text_vectors=None if text is None else text.numpy(), text_projection=projection)

    @torch.no_grad()
    def item_inputs(self) -> tuple[Tensor, Tensor | None]:
        """``(base [n_items, d], text [n_items, text_dim] | None)``: every item's final vector minus its own text
        term ``alpha_0 W t_i``, and the sentence vectors (zero rows for items without text). A history model that
        adds ``alpha_0 W t_i`` back (with a trainable W) starts from exactly the pretrained item vectors."""
        _, items = self.final_embeddings()
        items = items.clone()
        if self.text_proj is None:
            return items, None
        items[self.text_items] -= float(self.alpha[0]) * self.text_vectors(self.text_feats)
        text = torch.zeros(self.n_items, self.text_dim, dtype=self.text_feats.dtype)
        text[self.text_items] = self.text_feats
        return items, text

    def _adj(self, adj: Tensor | None) -> Tensor:
        adj = adj if adj is not None else self.adj
        if adj is None:
            raise ValueError("no adjacency: call set_graph(adj) or pass adj")
        return adj
