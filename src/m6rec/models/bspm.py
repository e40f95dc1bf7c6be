"""BSPM (Choi et al., "Blurring-Sharpening Process Models for Collaborative Filtering", SIGIR 2023): a training-free
graph filter that first blurs a user's interaction row over the item-item graph and then sharpens it again.

With the normalised interaction matrix R̃ = D_U^{-1/2} R D_I^{-1/2}, its item-item filter P̃ = R̃ᵀR̃ and the ideal
low-pass filter L = D_I^{-1/2} V_k V_kᵀ D_I^{1/2} (V_k: top-k right singular vectors of R̃), a user row r goes through

* blurring, dx/dt = x P̃ - x from x(0) = r up to T_b (the heat equation on the item graph), and the ideal low-pass
  process dx/dt = x L - x up to T_idl: with one explicit Euler step of length 1 each (the paper's setting on
  Gowalla) these are exactly r P̃ and r L, the two terms of GF-CF;
* sharpening, dx/dt = -x P̃ from x(0) = blurred + beta * ideal up to T_s, which undoes part of the smoothing and
  brings back what is particular to the user. The ODE is linear, so each solver step is a matrix polynomial in P̃:
  an Euler step is x (I - hP̃), an RK4 step (any 4-stage order-4 scheme) x (I - hP̃ + (hP̃)²/2 - (hP̃)³/6 + (hP̃)⁴/24).

The score is the sharpened row (``final_sharpening``: the ideal term is added before sharpening). P̃ is never formed
(dense, 6.7 GB for Gowalla's 41k items): x P̃ = (x R̃ᵀ) R̃ is two sparse-dense products per application, so a user
batch costs (1 + 4 K_s) applications for RK4, each O(batch x nnz(R)). Memory stays at a few dense batch x items
blocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.models.gfcf import GFCF

_CHUNK = 2048  # users scored at once: a few [_CHUNK, n_items] float32 blocks live


class BSPM(GFCF):
    """Blurring (linear + ideal low-pass filter, as GF-CF) then sharpening by an explicit ODE solver."""

    name = "bspm"

    def __init__(self, k: int = 448, beta: float = 0.2, t_sharpen: float = 2.5, sharpen_steps: int = 1,
                 solver: str = "rk4", seed: int = 0) -> None:
        if solver not in ("euler", "rk4"):
            raise ValueError(f"bspm solver must be 'euler' or 'rk4', got '{solver}'")
        if sharpen_steps < 0 or t_sharpen < 0:
            raise ValueError("bspm t_sharpen and sharpen_steps must be >= 0")
        super().__init__(k=k, alpha=beta, seed=seed)
        self.beta, self.t_sharpen, self.sharpen_steps, self.solver = beta, t_sharpen, sharpen_steps, solver

    def fit(self, train: sp.csr_matrix) -> "BSPM":
        super().fit(train)
        self._norm = self._torch_csr(self.norm)
        self._norm_t = self._torch_csr(self.norm_t)
        return self

    @staticmethod
    def _torch_csr(m: sp.csr_matrix) -> torch.Tensor:
        m = m.tocsr().astype(np.float32)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the two products used here are tested
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                           torch.from_numpy(m.indices.astype(np.int64)),
                                           torch.from_numpy(m.data), size=m.shape, check_invariants=False)

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """x P̃ for a dense block x [B, n_items], as ((R̃ xᵀ)ᵀ R̃) without forming P̃."""
        z = torch.sparse.mm(self._norm, x.T.contiguous())  # [n_users, B]
        return torch.sparse.mm(self._norm_t, z).T  # [B, n_items]

    def sharpen(self, x: torch.Tensor) -> torch.Tensor:
        """Integrates dx/dt = -x P̃ over [0, t_sharpen] in ``sharpen_steps`` steps of the chosen solver."""
        if self.sharpen_steps == 0 or self.t_sharpen == 0:
            return x
        h = self.t_sharpen / self.sharpen_steps
        for _ in range(self.sharpen_steps):
            if self.solver == "euler":
                x = x - h * self.filter(x)
                continue
            # RK4 on a linear autonomous ODE: the degree-4 Taylor polynomial of exp(-h P̃), by Horner's rule
            term, out = x, x.clone()
            for order in range(1, 5):
                term = self.filter(term) * (-h / order)
                out += term
            x = out
        return x

    def rows(self, users: np.ndarray, history: sp.csr_matrix | None) -> sp.csr_matrix:
        """The input rows: the given history (e.g. train + valid at test time) or the training rows."""
        if history is None:
            return self.train[users]
        if not sp.issparse(history) or history.shape != (len(users), self.train.shape[1]):
            raise ValueError(f"bspm history must be a sparse [n_users={len(users)}, n_items={self.train.shape[1]}] "
                             f"matrix, got {type(history).__name__} {getattr(history, 'shape', None)}")
        return sp.csr_matrix(history, dtype=np.float32)

    def full_scores(self, domain: str, users: np.ndarray, history: sp.csr_matrix | None = None) -> torch.Tensor:
        self.check_domain(domain)
        users = np.asarray(users, dtype=np.int64)
        rows = self.rows(users, history)
        out = [self.score_rows(rows[s:s + _CHUNK]) for s in range(0, len(users), _CHUNK)]
        return torch.cat(out) if out else torch.zeros(0, self.train.shape[1])

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.train is None:
            raise RuntimeError("BSPM.score called before fit")
        return self.full_scores(self.domain, users)

    def score_rows(self, rb: sp.csr_matrix) -> torch.Tensor:
        """BSPM scores of interaction rows ``rb`` [B, n_items] (any users, known or not)."""
        blurred = torch.from_numpy(np.asarray(((rb @ self.norm_t) @ self.norm).todense(), dtype=np.float32))
        if self.vt is not None and self.beta > 0:
            scaled = torch.from_numpy(rb.multiply(self.inv_i[None, :]).toarray().astype(np.float32))
            blurred += self.beta * ((scaled @ self.vt.T) @ self.vt * torch.from_numpy(self.sqrt_i))
        return self.sharpen(blurred)
