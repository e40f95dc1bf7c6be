"""BSPM on real data: the filter and solver against dense linear algebra, quality against MostPopular, history input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from m6rec.evaluation.metrics import ranking_metrics
from m6rec.models.bspm import BSPM
from m6rec.models.popularity import MostPopular


def test_sharpening_is_the_rk4_polynomial_of_the_dense_filter(ml100k_full):
    train = ml100k_full.train[:200].tocsr()
    train = train[:, np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)].tocsr()  # 200 users' items
    model = BSPM(k=16, beta=0.2, t_sharpen=2.5, sharpen_steps=1, solver="rk4").fit(train)
    p = (model.norm.T @ model.norm).toarray().astype(np.float64)
    ideal = np.diag(model.inv_i) @ model.vt.numpy().T @ model.vt.numpy() @ np.diag(model.sqrt_i)
    r = train[:20].toarray().astype(np.float64)
    a = -2.5 * p
    poly = np.eye(len(p)) + a + a @ a / 2 + a @ a @ a / 6 + a @ a @ a @ a / 24
    expected = (r @ p + 0.2 * r @ ideal) @ poly
    np.testing.assert_allclose(model.full_scores(None, np.arange(20)).numpy(), expected, atol=2e-5)
    euler = BSPM(k=16, beta=0.2, t_sharpen=2.5, sharpen_steps=2, solver="euler").fit(train)
    step = np.eye(len(p)) - 1.25 * p
    np.testing.assert_allclose(euler.full_scores(None, np.arange(20)).numpy(),
                               (r @ p + 0.2 * r @ ideal) @ step @ step, atol=2e-5)


def test_beats_mostpopular_and_sharpening_helps_on_ml100k(ml100k_full):
    data = ml100k_full
    known = (data.train + data.valid).tocsr()
    model = BSPM(k=64, beta=0.2, t_sharpen=1.0).fit(data.train)
    users = np.arange(data.n_users)

    def test_ndcg(score) -> float:
        return ranking_metrics(score, known, data.test, ks=(20,), batch_users=512)["ndcg@20"]

    pop = MostPopular().fit(data.train)
    bspm = test_ndcg(lambda u: model.full_scores(None, u, known[u]))
    assert bspm > 1.2 * test_ndcg(lambda u: pop.score(u))
    blurred = BSPM(k=64, beta=0.2, t_sharpen=0.0).fit(data.train)
    assert bspm > test_ndcg(lambda u: blurred.full_scores(None, u, known[u]))
    # the input rows are the history when given: train + valid is not the training row
    with_valid = model.full_scores(None, users[:50], known[:50])
    assert not torch.allclose(with_valid, model.full_scores(None, users[:50]))
    np.testing.assert_allclose(with_valid.numpy(), model.score_rows(known[:50].astype(np.float32)).numpy(),
                               atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="solver"):
        BSPM(solver="dopri5")
    model = BSPM(k=2).fit(sp.random(20, 10, density=0.3, random_state=0, format="csr"))
    with pytest.raises(ValueError, match="history"):
        model.full_scores(None, np.arange(3), np.zeros((3, 10)))
