"""The test-time input (protocol.test_input) on small real data: valid sees train only, test sees train + valid,
factor models fold the rows in, and the served fold-in bundle scores what the protocol evaluated."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from m6rec.config import ConfigError, ProtocolParams
from m6rec.data.dataset import domain_data, global_offsets
from m6rec.evaluation.protocol import evaluate, input_histories, input_rows, score_fn
from m6rec.graph.build import build_graph
from m6rec.models.lightgcn import TextLightGCN
from m6rec.models.mf import BPRMF, PureSVD, ridge_fold_in
from m6rec.serving.export import export_domains

DOMAIN = "ml-latest-small"


@pytest.fixture(scope="module")
def data(tiny_prepared):
    return domain_data(tiny_prepared, DOMAIN)


def _pairs(m: sp.spmatrix) -> set[tuple[int, int]]:
    c = sp.coo_matrix(m)
    return set(zip(c.row.tolist(), c.col.tolist()))


def _history_pairs(hist: np.ndarray) -> set[tuple[int, int]]:
    u, j = np.nonzero(hist >= 0)
    return set(zip(u.tolist(), hist[u, j].tolist()))


def test_valid_input_is_train_only_and_test_input_is_train_plus_valid(data):
    assert data.valid.nnz > 0
    train, valid = _pairs(data.train), _pairs(data.valid)
    assert _pairs(input_rows(data, "valid")) == train
    assert _pairs(input_rows(data, "test")) == train | valid
    assert _pairs(input_rows(data, "cold")) == train | valid
    assert _pairs(input_rows(data, "test", "train")) == train
    long = int(np.diff((data.train + data.valid).indptr).max())  # every item fits the window
    assert _history_pairs(input_histories(data, long, "valid")) == train
    assert _history_pairs(input_histories(data, long, "test")) == train | valid
    assert _history_pairs(input_histories(data, long, "test", "train")) == train
    # a short window keeps the most recent items of the input only
    assert _history_pairs(input_histories(data, 3, "valid")) <= train


def test_protocol_passes_rows_only_beyond_the_training_input(data):
    seen = {}

    class Spy(PureSVD):
        def full_scores(self, domain, users, history=None):
            seen[split] = history
            return super().full_scores(domain, users, history)

    model = Spy(dim=8).fit(data.train)
    for split, ti in (("valid", "train_valid"), ("test", "train"), ("test", "train_valid")):
        score_fn(model, data, split, ti)(np.arange(4))
        if ti == "train":
            split = "test_train"
            seen[split] = seen.pop("test")
    assert seen["valid"] is None and seen["test_train"] is None
    assert _pairs(seen["test"]) == {p for p in _pairs(data.train + data.valid) if p[0] < 4}


def test_unknown_test_input_is_a_config_error():
    with pytest.raises(ConfigError, match="test_input"):
        ProtocolParams(test_input="valid")


def test_puresvd_fold_in_of_the_training_rows_is_the_fitted_user_matrix(data):
    model = PureSVD(dim=16).fit(data.train)
    np.testing.assert_allclose(model.fold_in(data.train).numpy(), model.user_vectors.numpy(), rtol=1e-4, atol=1e-4)
    folded = model.fold_in(input_rows(data, "test"))
    changed = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    assert not np.allclose(folded[changed].numpy(), model.user_vectors[changed].numpy(), atol=1e-3)
    same = np.flatnonzero(np.diff(data.valid.indptr) == 0)
    np.testing.assert_allclose(folded[same].numpy(), model.user_vectors[same].numpy(), rtol=1e-4, atol=1e-4)


def test_ridge_fold_in_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    rows = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=np.float32))
    p = ridge_fold_in(rows, q, reg=0.5, w0=0.0)
    np.testing.assert_allclose(p[0].numpy(), [1 / 1.5, 0.0], rtol=1e-6)  # q / (|q|² + λ)
    a = np.array([[1.0, 1.0], [1.0, 5.0]]) + 0.5 * np.eye(2)  # q1 = (0, 2), q2 = (1, 1)
    np.testing.assert_allclose(p[1].numpy(), np.linalg.solve(a, [1.0, 3.0]), rtol=1e-5)
    assert p[2].abs().sum() == 0
    # the unobserved items' weight: (Q_uᵀQ_u + w0 QᵀQ + λI) p = Q_uᵀ1
    p0 = ridge_fold_in(rows[:1], q, reg=0.5, w0=0.1)
    g = np.array([[1.0, 0.0], [0.0, 0.0]]) + 0.1 * (q.T @ q).numpy() + 0.5 * np.eye(2)
    np.testing.assert_allclose(p0[0].numpy(), np.linalg.solve(g, [1.0, 0.0]), rtol=1e-5)


def test_ridge_fold_in_is_bitwise_the_per_interaction_sum(data):
    """Each user's Gram matrix is base + q_i q_iᵀ added one interaction at a time in the row's stored order (the
    form the sparse product replaced), across batches, with an empty row and unsorted column indices."""
    rows = input_rows(data, "test").tocsr()
    rows = sp.vstack([rows, sp.csr_matrix((1, rows.shape[1]), dtype=rows.dtype)]).tocsr()
    for r in range(0, rows.shape[0] - 1, 3):  # reverse some rows' stored order
        a, b = rows.indptr[r], rows.indptr[r + 1]
        rows.indices[a:b] = rows.indices[a:b][::-1].copy()
    rows.has_sorted_indices = False
    q = torch.from_numpy(np.random.default_rng(1).standard_normal((rows.shape[1], 8)))  # float64 out: every bit
    base = 0.01 * (q.T @ q) + 10.0 * torch.eye(8, dtype=torch.float64)
    want = []
    for u in range(rows.shape[0]):
        gram, rhs = base.clone(), torch.zeros(8, dtype=torch.float64)
        for i in rows.indices[rows.indptr[u]:rows.indptr[u + 1]]:
            gram += torch.outer(q[i], q[i])
            rhs += q[i]
        want.append(torch.linalg.solve(gram, rhs))
    got = ridge_fold_in(rows, q, reg=10.0, w0=0.01, batch=16)
    assert got.dtype == torch.float64 and torch.equal(got, torch.stack(want))


def test_bprmf_fold_in_uses_the_valid_items(data):
    torch.manual_seed(0)
    model = BPRMF(data.n_users, data.n_items, dim=8)
    model.domain = DOMAIN
    train_fold, test_fold = model.fold_in(data.train), model.fold_in(input_rows(data, "test"))
    changed = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    same = np.flatnonzero(np.diff(data.valid.indptr) == 0)
    assert not torch.allclose(train_fold[changed], test_fold[changed])
    torch.testing.assert_close(train_fold[same], test_fold[same])
    # test scores come from the fold-in, valid scores from the trained vectors
    users = np.arange(5)
    torch.testing.assert_close(score_fn(model, data, "test")(users), test_fold[users] @ model.item.weight.T)
    torch.testing.assert_close(score_fn(model, data, "valid")(users), model.score(users))


@pytest.mark.parametrize("make", ["puresvd", "bprmf"])
def test_served_fold_in_scores_equal_the_evaluated_test_scores(data, tiny_prepared, make):
    torch.manual_seed(0)
    if make == "puresvd":
        model = PureSVD(dim=16).fit(data.train)
    else:
        model = BPRMF(data.n_users, data.n_items, dim=8)
    model.domain = DOMAIN
    bundle = export_domains(model, {DOMAIN: data}, tiny_prepared)[DOMAIN]
    users = np.arange(data.n_users)
    served = torch.from_numpy(bundle.user_vectors @ bundle.item_vectors.T)
    torch.testing.assert_close(served, score_fn(model, data, "test")(users), atol=1e-4, rtol=1e-4)


def test_lightgcn_fold_in_export_and_evaluation_agree(tiny_prepared):
    graph = build_graph(tiny_prepared, [DOMAIN])
    users0, items0 = global_offsets(tiny_prepared.meta, "user"), global_offsets(tiny_prepared.meta, "item")
    data = domain_data(tiny_prepared, DOMAIN)
    torch.manual_seed(0)
    model = TextLightGCN(graph.n_users, graph.n_items, embedding_dim=8, num_layers=2).set_graph(graph.adj)
    model.set_domains({DOMAIN: (users0[DOMAIN], data.n_users, items0[DOMAIN], data.n_items)})
    model.eval()
    users = np.arange(data.n_users)
    test = score_fn(model, data, "test")(users)
    valid = score_fn(model, data, "valid")(users)
    torch.testing.assert_close(valid, model.full_scores(DOMAIN, users))  # valid: the propagated vectors
    changed = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    assert not torch.allclose(test[changed], valid[changed])
    spec = model.export(DOMAIN, known=data.train + data.valid)
    torch.testing.assert_close(torch.from_numpy(spec.user_vectors @ spec.item_vectors.T), test, atol=1e-4,
                               rtol=1e-4)
    assert evaluate(model, data, "test", ProtocolParams())["ndcg@20"] >= 0
