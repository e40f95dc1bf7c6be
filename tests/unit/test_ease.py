"""EASE's closed form on real (tiny) data: B against a float64 inverse computed independently."""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from m6rec.data.dataset import domain_data
from m6rec.models.ease import EASE, symmetrise_upper


def test_ease_weights_are_the_closed_form(tiny_prepared):
    data = domain_data(tiny_prepared, "ml-100k")
    model = EASE(lam=50.0).fit(data.train)
    x = data.train.toarray().astype(np.float64)[:, model.active]
    p = np.linalg.inv(x.T @ x + 50.0 * np.eye(x.shape[1]))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    assert model.B.shape == want.shape and model.B.flags["C_CONTIGUOUS"] and model.B.dtype == np.float32
    np.testing.assert_allclose(model.B, want, atol=2e-5 * np.abs(want).max())
    assert np.all(np.diag(model.B) == 0.0)
    # A second λ on the same train reuses the Gram matrix and still gives its own closed form.
    model.fit(data.train, lam=200.0)
    p = np.linalg.inv(x.T @ x + 200.0 * np.eye(x.shape[1]))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(model.B, want, atol=2e-5 * np.abs(want).max())


def test_symmetrise_upper_mirrors_across_row_blocks():
    a = np.triu(np.random.default_rng(0).standard_normal((23, 23)).astype(np.float32))
    want = a + np.triu(a, 1).T
    symmetrise_upper(a, block=5)
    assert np.array_equal(a, want)


def test_ease_weights_are_bitwise_the_textbook_formula(tiny_prepared):
    """The in-place symmetrisation gives the bytes of ``P = tril(P) + tril(P, -1)ᵀ; B = -P / diag(P)``."""
    data = domain_data(tiny_prepared, "ml-latest-small")
    model = EASE(lam=100.0)
    g = model.gram(data.train).copy()
    g[np.diag_indices_from(g)] += 100.0
    c, info = lapack.spotrf(g, lower=1, clean=1)
    p, info2 = lapack.spotri(c, lower=1)
    assert info == info2 == 0
    p = np.tril(p) + np.tril(p, -1).T
    want = -p / np.diag(p)[None, :]
    want[np.diag_indices_from(want)] = 0.0
    model.fit(data.train)
    assert len(model.active) > 1024  # more than one block of symmetrise_upper
    assert model.B.flags["C_CONTIGUOUS"] and np.array_equal(model.B.view(np.int32), want.view(np.int32))
