"""Matrix factorisation baselines.

- PureSVD (Cremonesi et al. 2010): truncated SVD of the binary training matrix, R ≈ U Σ Vᵀ; closed form.
- BPRMF (Rendle et al. 2009): dot-product MF trained with the BPR pairwise loss
  L = -Σ log σ(x̂_ui - x̂_uj) + λ (|p_u|² + |q_i|² + |q_j|²) over sampled (u, i, j).
- BiasedALS: explicit-rating MF r̂_ui = μ + b_u + b_i + p_uᵀ q_i fitted by alternating ridge regressions
  (closed-form per user / per item; Zhou et al. 2008, Koren et al. 2009), reported with RMSE/MAE.

Fold-in (scoring a user from interactions beyond the training ones, e.g. train + valid at test time, as served):
the item vectors stay fixed and the user vector is recomputed from the user's binary row r_u.

- PureSVD: the exact projection p_u = r_u V (V has orthonormal columns, so on the training rows R V = U Σ is the
  fitted user matrix itself: fold-in of the training items reproduces the trained scores).
- BPR-MF (and LightGCN, :func:`ridge_fold_in`): BPR has no closed form for a user given the items, so the user vector
  is the ridge least-squares fit of the user's scores to 1 on their items and 0 on the rest, weighted as in
  implicit ALS (Hu, Koren, Volinsky, ICDM 2008; unit confidence on the positives, weight ``w0`` on the unobserved):
  p_u = (Q_uᵀ Q_u + w0 QᵀQ + λ I)⁻¹ Q_uᵀ 1 (one d×d solve per user). Unlike PureSVD's projection it does not
  reproduce the trained vector on the training items; from train + valid it ranks the test items as well as the
  trained vector on ml-latest-small and better on the other small domains (test NDCG@20 .0308 -> .0545 on
  amazon-scientific; bench/results/test_input.json).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from torch import nn

from m6rec.models.base import DotExport, SingleDomain


def binary_rows(rows: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """A users' interaction rows as a binary float32 csr (any value > 0 counts as an interaction)."""
    rows = sp.csr_matrix(rows, dtype=np.float32, copy=True)
    rows.data = (rows.data > 0).astype(np.float32)
    rows.eliminate_zeros()
    return rows


def ridge_fold_in(rows: sp.spmatrix, items: torch.Tensor, reg: float = 1.0, w0: float = 0.01,
                  prior: torch.Tensor | None = None, batch: int = 1024) -> torch.Tensor:
    """User vectors ``[B, d]`` fitted to the binary `rows` ``[B, n_items]`` with the item vectors `items` fixed:
    ``p_u = (Q_uᵀ Q_u + w0 QᵀQ + reg I)⁻¹ (Q_uᵀ 1 + reg p0_u)`` (see the module docstring); `prior` ``[B, d]``:
    the vectors p0 the fit is shrunk towards (None: 0).

    Each user's Gram matrix is ``base + Σ_i q_i q_iᵀ`` over their items, summed in the row's stored order: one
    sparse product of the batch's rows (with a leading column for ``base``) and the flattened outer products
    ``q_i q_iᵀ`` of the items the batch touches, so memory is (items in the batch) x d², not (interactions) x d².
    Bitwise the same as accumulating the outer products one interaction at a time (the form it replaced). On
    lastfm (d=64, one thread) 1.38 -> 0.49 s median per call and 1.9 -> 1.1 GiB peak RSS; the first call pays
    ~2 s of page faults for the buffer (bench/bench_fold_in.py, bench/results/fold_in.json).
    """
    rows = binary_rows(rows)
    if rows.shape[1] != items.shape[0]:
        raise ValueError(f"fold-in rows have {rows.shape[1]} items, the model {items.shape[0]}")
    q = items.detach().to(torch.float64)
    d = q.shape[1]
    base = w0 * (q.T @ q) + reg * torch.eye(d, dtype=torch.float64)
    qn = q.numpy()
    buf = np.empty((0, d * d))  # reused across batches: fresh pages of this size cost more than the products
    out = []
    for s in range(0, rows.shape[0], batch):
        block = rows[s:s + batch]
        n = block.shape[0]
        cols, local = np.unique(block.indices, return_inverse=True)
        # outer products of the touched items, after `base` as row 0; the rows' entries in their stored order
        if len(buf) < len(cols) + 1:
            buf = np.empty((len(cols) + 1, d * d))
        outer = buf[:len(cols) + 1]
        outer[0] = base.numpy().ravel()
        np.multiply(qn[cols, :, None], qn[cols, None, :], out=outer[1:].reshape(len(cols), d, d))
        indices = np.insert(local.ravel() + 1, block.indptr[:-1], 0)  # column 0 (base) opens every row
        select = sp.csr_matrix((np.ones(len(indices)), indices, block.indptr + np.arange(n + 1)),
                               shape=(n, len(cols) + 1))
        gram = torch.from_numpy(np.asarray(select @ outer)).reshape(n, d, d)
        coo = block.tocoo()
        rhs = torch.zeros(n, d, dtype=torch.float64).index_add_(
            0, torch.from_numpy(coo.row.astype(np.int64)), q[torch.from_numpy(coo.col.astype(np.int64))])
        if prior is not None:
            rhs += reg * prior[s:s + batch].detach().to(torch.float64)
        out.append(torch.linalg.solve(gram, rhs))
    return torch.cat(out).to(items.dtype) if out else torch.zeros(0, d, dtype=items.dtype)


class PureSVD(SingleDomain):
    name = "puresvd"
    folds_in = True  # export(domain, known=rows): user vectors folded in from `known` (m6rec.serving.export)

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.dim, self.seed = dim, seed
        self.user_vectors: torch.Tensor | None = None
        self.item_vectors: torch.Tensor | None = None

    def fit(self, train: sp.csr_matrix) -> "PureSVD":
        k = max(1, min(self.dim, min(train.shape) - 1))
        v0 = np.random.default_rng(self.seed).standard_normal(min(train.shape))
        u, s, vt = svds(train.astype(np.float64), k=k, v0=v0)
        self.user_vectors = torch.from_numpy((u * s).astype(np.float32))
        self.item_vectors = torch.from_numpy(vt.T.astype(np.float32).copy())
        return self

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.user_vectors is None:
            raise RuntimeError("PureSVD.score called before fit")
        return self.user_vectors[torch.as_tensor(users)] @ self.item_vectors.T

    def fold_in(self, rows: sp.spmatrix) -> torch.Tensor:
        """User vectors ``r_u V`` of the binary `rows` ``[B, n_items]`` (exactly ``U Σ`` on the training rows)."""
        if self.item_vectors is None:
            raise RuntimeError("PureSVD.fold_in called before fit")
        rows = binary_rows(rows)
        return torch.from_numpy(np.asarray(rows @ self.item_vectors.numpy(), dtype=np.float32))

    def full_scores(self, domain: str, users: np.ndarray, history: sp.spmatrix | None = None) -> torch.Tensor:
        """Scores of `users` from their fitted vectors, or folded in from `history` (their rows) when given."""
        self.check_domain(domain)
        if history is None:
            return self.score(np.asarray(users, dtype=np.int64))
        return self.fold_in(history) @ self.item_vectors.T

    def export(self, domain: str, known: sp.spmatrix | None = None) -> DotExport:
        """Item vectors and user vectors: the fitted ones, or folded in from `known` (every user's served rows)."""
        self.check_domain(domain)
        if self.user_vectors is None:
            raise RuntimeError("PureSVD.export called before fit")
        users = self.user_vectors if known is None else self.fold_in(known)
        return DotExport(item_vectors=self.item_vectors.numpy().copy(), user_vectors=users.numpy().copy())


class BPRMF(SingleDomain, nn.Module):
    name = "bprmf"
    folds_in = True  # export(domain, known=rows): user vectors folded in from `known` (m6rec.serving.export)
    # ridge_fold_in's λ and w0, chosen on ml-latest-small's validation split (fold-in of the training items, NDCG@20
    # on valid) over λ ∈ {0.3, 1, 3, 10}, w0 ∈ {0, 0.01, 0.03}, with or without the trained vector as prior
    fold_in_reg = 10.0
    fold_in_w0 = 0.0

    def __init__(self, n_users: int, n_items: int, dim: int = 64, reg: float = 1e-4, init_std: float = 0.1) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim, self.reg = n_users, n_items, dim, reg
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1)

    def calculate_loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        users, pos, neg = batch
        u, p, n = self.user(users), self.item(pos), self.item(neg)
        x = (u * (p - n)).sum(-1)
        l2 = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(users)
        return -nn.functional.logsigmoid(x).mean() + self.reg * l2

    @torch.no_grad()
    def score(self, users: np.ndarray) -> torch.Tensor:
        """Full-catalogue scores for `users` ([len(users), n_items])."""
        return self.user.weight[torch.as_tensor(users)] @ self.item.weight.T

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight.detach().clone(), self.item.weight.detach().clone()

    @torch.no_grad()
    def fold_in(self, rows: sp.spmatrix) -> torch.Tensor:
        """User vectors of the binary `rows` ``[B, n_items]``, item vectors fixed (:func:`ridge_fold_in`)."""
        return ridge_fold_in(rows, self.item.weight, self.fold_in_reg, self.fold_in_w0)

    @torch.no_grad()
    def full_scores(self, domain: str, users: np.ndarray, history: sp.spmatrix | None = None) -> torch.Tensor:
        """Scores of `users` from their trained vectors, or folded in from `history` (their rows) when given."""
        self.check_domain(domain)
        if history is None:
            return self.score(np.asarray(users, dtype=np.int64))
        return self.fold_in(history) @ self.item.weight.T

    def export(self, domain: str, known: sp.spmatrix | None = None) -> DotExport:
        """Item vectors and user vectors: the trained ones, or folded in from `known` (every user's served rows)."""
        self.check_domain(domain)
        users, items = self.factors()
        if known is not None:
            users = self.fold_in(known)
        return DotExport(item_vectors=items.numpy(), user_vectors=users.numpy())


class BiasedALS:
    """Explicit ratings: μ + b_u + b_i + p_uᵀ q_i by alternating closed-form ridge solves."""

    name = "als"

    def __init__(self, dim: int = 32, reg: float = 5.0, iterations: int = 10, seed: int = 0) -> None:
        self.dim, self.reg, self.iterations, self.seed = dim, reg, iterations, seed
        self.mu = 0.0
        self.P: torch.Tensor | None = None  # [n_users, dim + 2]: factors, bias, 1
        self.Q: torch.Tensor | None = None  # [n_items, dim + 2]: factors, 1, bias

    @staticmethod
    def _solve(rows: torch.Tensor, cols: torch.Tensor, r: torch.Tensor, fixed: torch.Tensor, n_rows: int,
               reg: float, free_bias_col: int, fixed_bias_col: int) -> torch.Tensor:
        """Ridge solve for every row's vector given the fixed side's vectors (biases stay unpenalised-ish)."""
        d = fixed.shape[1]
        # The fixed side's own bias column is a constant offset for this solve: subtract it from the target.
        target = r - fixed[cols, fixed_bias_col]
        x = fixed[cols].clone()
        x[:, fixed_bias_col] = 0.0
        x[:, free_bias_col] = 1.0
        gram = torch.zeros(n_rows, d, d, dtype=torch.float64)
        gram.index_add_(0, rows, x.unsqueeze(2) * x.unsqueeze(1))
        rhs = torch.zeros(n_rows, d, dtype=torch.float64)
        rhs.index_add_(0, rows, x * target.unsqueeze(1))
        eye = torch.eye(d, dtype=torch.float64) * reg
        eye[fixed_bias_col, fixed_bias_col] = 1.0  # keeps the system non-singular; that coordinate is pinned below
        sol = torch.linalg.solve(gram + eye, rhs)
        sol[:, fixed_bias_col] = 1.0
        return sol

    def fit(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int
            ) -> "BiasedALS":
        if len(ratings) == 0:
            raise ValueError("BiasedALS.fit needs at least one rating")
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.tensor(np.asarray(users), dtype=torch.long)
        i = torch.tensor(np.asarray(items), dtype=torch.long)
        self.mu = float(np.mean(ratings))
        r = torch.tensor(np.asarray(ratings), dtype=torch.float64) - self.mu
        d = self.dim
        # Layout: columns 0..d-1 factors; column d = user bias (P) / 1 (Q); column d+1 = 1 (P) / item bias (Q).
        P = torch.zeros(n_users, d + 2, dtype=torch.float64)
        Q = torch.zeros(n_items, d + 2, dtype=torch.float64)
        Q[:, :d] = torch.randn(n_items, d, generator=gen, dtype=torch.float64) * 0.1
        Q[:, d] = 1.0
        for _ in range(self.iterations):
            P = self._solve(u, i, r, Q, n_users, self.reg, free_bias_col=d, fixed_bias_col=d + 1)
            Q = self._solve(i, u, r, P, n_items, self.reg, free_bias_col=d + 1, fixed_bias_col=d)
        self.P, self.Q = P, Q
        return self

    def predict(self, users: np.ndarray, items: np.ndarray, low: float | None = None, high: float | None = None
                ) -> np.ndarray:
        if self.P is None:
            raise RuntimeError("BiasedALS.predict called before fit")
        u = torch.tensor(np.asarray(users), dtype=torch.long)
        i = torch.tensor(np.asarray(items), dtype=torch.long)
        pred = (self.P[u] * self.Q[i]).sum(-1).numpy() + self.mu
        if low is not None or high is not None:
            pred = np.clip(pred, low, high)
        return pred
