"""The layers of :class:`m6rec.models.seqrec.UniversalSeqRec`: the shared text adaptor and the causal encoder block.

:class:`MoEAdaptor` maps frozen sentence vectors into the model's item space with a mixture of parametric-whitening
experts (UniSRec, Hou et al., KDD 2022); :class:`CausalBlock` is one pre-norm causal self-attention block (SASRec,
Kang & McAuley, ICDM 2018) whose attention weights stay readable for ``/explain``; :func:`causal_mask` builds the
mask both read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MoEAdaptor(nn.Module):
    """Mixture of parametric-whitening experts (UniSRec): ``sum_k g_k(t) (t - b_k) W_k``."""

    def __init__(self, text_dim: int, dim: int, n_experts: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_experts, text_dim))
        self.weight = nn.Parameter(torch.empty(n_experts, text_dim, dim))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(text_dim))
        self.router = nn.Linear(text_dim, n_experts, bias=False)
        nn.init.zeros_(self.router.weight)  # start as the plain average of the experts
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: Tensor) -> Tensor:
        t = self.dropout(text)
        experts = torch.einsum("nkt,ktd->nkd", t.unsqueeze(1) - self.bias.unsqueeze(0), self.weight)
        gates = torch.softmax(self.router(t), dim=-1)
        return (gates.unsqueeze(-1) * experts).sum(1)


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention + feed-forward block; :meth:`attention` gives the weights for explanation."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.p_attn = dropout

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1),
                                           dropout_p=self.p_attn if self.training else 0.0)
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(x.shape)))
        return x + self.dropout(self.ff(self.norm2(x)))

    def attention(self, x: Tensor, mask: Tensor) -> Tensor:
        """Head-averaged attention weights ``[B, L, L]`` (query, key)."""
        q, k, _ = self._qkv(x)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return torch.softmax(logits, dim=-1).mean(1)


def causal_mask(valid: Tensor) -> Tensor:
    """``[B, L, L]`` bool: query i may see key j <= i that is a real item; a padding position sees itself only (no
    all-masked rows, whose softmax would be NaN)."""
    n = valid.shape[1]
    tri = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return (tri.unsqueeze(0) & valid.unsqueeze(1)) | eye.unsqueeze(0)
