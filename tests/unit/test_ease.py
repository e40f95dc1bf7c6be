"""EASE's closed form on real (tiny) data: B against a float64 inverse computed independently."""

from __future__ import annotations

import numpy as np

from m6rec.data.dataset import domain_data
from m6rec.models.ease import EASE


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
