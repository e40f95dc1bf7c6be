"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a closed-form item-item model.

With the Gram matrix G = XᵀX of the training matrix and P = (G + λI)⁻¹,

    B = I − P · diag(1 / diag(P)),  diag(B) = 0,  score(u) = x_u B

Only the items with training interactions (the *active* items) enter G: every other item's row and column of B are
zero, so B is stored dense over the active items (``[n_active, n_active]`` float32) and the inverse is a Cholesky
factorisation and inverse of an ``n_active``² matrix (LAPACK ``spotrf`` + ``spotri``, ~n³ flops).

λ is chosen on the validation split (:func:`m6rec.training.baselines.fit_baseline` refits B for each value of
``baselines.ease_lambdas`` and keeps the best validation figure).

Size limit (``max_items``) and Gowalla: B and G are dense, 4·n² bytes each in float32, and the inverse costs ~n³
flops. Measured on this 2-core box (one thread, shared): Cholesky inverse of a 2,048² float32 matrix 0.43 s, of a
4,096² one 2.8 s (the n³ law). Gowalla has 40,981 items: each dense matrix is 40,981² × 4 B = 6.3 GiB, and the fit
holds G, its inverse and B (plus the symmetrisation's temporaries) at once, ~19-30 GiB: more than the 24 GiB here.
The inverse alone would take ~(40,981 / 4,096)³ × 2.8 s ≈ 47 min per λ on one core (~25 min on both), so a
4-value λ grid is 2-3 hours. EASE therefore does not fit Gowalla on this box; ``max_items`` (default 20,000)
refuses it with a clear error. The small domains fit: at most 13,385 active items (lastfm), 0.67 GiB per matrix.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
import torch

from m6rec.models.base import ItemItemExport, SingleDomain

log = logging.getLogger(__name__)


def symmetrise_upper(a: np.ndarray, block: int = 1024) -> None:
    """Copy the strict upper triangle of the square C-ordered ``a`` onto its strict lower one, in place."""
    n = a.shape[0]
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        a[r0:r1, :r0] = a[:r0, r0:r1].T
        square = a[r0:r1, r0:r1]
        lower = np.tril_indices(r1 - r0, -1)
        square[lower] = square.T[lower]


class EASE(SingleDomain):
    name = "ease"

    def __init__(self, lam: float = 500.0, max_items: int = 20000) -> None:
        if lam <= 0:
            raise ValueError(f"EASE lambda must be positive, got {lam}")
        self.lam, self.max_items = float(lam), int(max_items)
        self.train: sp.csr_matrix | None = None
        self.active: np.ndarray | None = None
        self.B: np.ndarray | None = None  # float32 [n_active, n_active]
        self._gram: np.ndarray | None = None

    def gram(self, train: sp.csr_matrix) -> np.ndarray:
        """G = XᵀX over the active items (cached, so that a λ grid factorises it once per value only)."""
        x = train.astype(np.float32).tocsc()
        active = np.flatnonzero(np.diff(x.indptr) > 0).astype(np.int64)
        if len(active) > self.max_items:
            raise ValueError(f"EASE: {len(active)} active items exceed max_items={self.max_items} (the dense "
                             f"item x item matrices would need ~{3 * 4 * len(active) ** 2 / 2**30:.1f} GiB)")
        xa = x[:, active]
        self.active = active
        self._gram = np.asarray((xa.T @ xa).toarray(), dtype=np.float32)
        return self._gram

    def fit(self, train: sp.csr_matrix, lam: float | None = None) -> "EASE":
        """Fit B for ``lam`` (default: the constructor's); the Gram matrix is reused across calls on one train."""
        if lam is not None:
            if lam <= 0:
                raise ValueError(f"EASE lambda must be positive, got {lam}")
            self.lam = float(lam)
        if self._gram is None or self.train is None or self.train.shape != train.shape or \
                self.train.nnz != train.nnz:
            self.gram(train)
        g = self._gram.copy()
        g[np.diag_indices_from(g)] += self.lam
        # G is symmetric, so its transpose is the same matrix in the Fortran order LAPACK wants: no copy
        c, info = lapack.spotrf(g.T, lower=1, overwrite_a=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky of G + {self.lam} I failed (info {info})")
        p, info = lapack.spotri(c, lower=1, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: inverse of G + {self.lam} I failed (info {info})")
        # spotri filled the lower triangle of the Fortran-ordered p, i.e. the upper triangle of its C-ordered
        # transpose; mirroring that into the lower one, a block of rows at a time, makes the symmetric P in C order
        # with no full-size temporary or transposing copy (bitwise the same as tril(P) + tril(P, -1)ᵀ:
        # bench/bench_ease.py)
        p = p.T
        symmetrise_upper(p)
        diag = np.diag(p).copy()
        p /= -diag[None, :]
        p[np.diag_indices_from(p)] = 0.0
        self.B = p
        self.train = train.astype(np.float32).tocsr()
        return self

    def release(self) -> None:
        """Drop the cached Gram matrix (after the λ grid)."""
        self._gram = None

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.train is None:
            raise RuntimeError("EASE.score called before fit")
        return self.score_rows(self.train[users])

    def score_rows(self, rows: sp.csr_matrix) -> torch.Tensor:
        """Scores of interaction rows ``[B, n_items]``: ``rows[:, active] @ B``, zero on inactive items."""
        if self.B is None:
            raise RuntimeError("EASE.score called before fit")
        out = np.zeros(rows.shape, dtype=np.float32)
        out[:, self.active] = rows.tocsc()[:, self.active].tocsr() @ self.B
        return torch.from_numpy(out)

    def export(self, domain: str) -> ItemItemExport:
        """B, dense over the active items."""
        self.check_domain(domain)
        if self.B is None:
            raise RuntimeError("EASE.export called before fit")
        return ItemItemExport(matrix=self.B, active=self.active.copy())
