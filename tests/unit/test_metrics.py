"""Tests for m6rec.evaluation.metrics: known small answers, masking, slicing, batching, PyG agreement, real data."""

from __future__ import annotations

from math import log2, sqrt
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.metrics import (
    LinkPredCoverage,
    LinkPredHitRatio,
    LinkPredMRR,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)

from m6rec.evaluation.metrics import csr_from_pairs, ranking_metrics, rating_metrics, topk_items

ML100K = Path("/work/shared/data/ml-100k")


def _csr(rows: dict[int, list[int]], n_users: int, n_items: int) -> sp.csr_matrix:
    users = [u for u, items in rows.items() for _ in items]
    items = [i for its in rows.values() for i in its]
    return csr_from_pairs(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), n_users, n_items)


def _table_scorer(table: np.ndarray):
    """score_fn that looks rows up in a fixed [n_users, n_items] table and records the users it was asked for."""
    calls: list[np.ndarray] = []

    def score_fn(users: np.ndarray) -> torch.Tensor:
        calls.append(users.copy())
        return torch.as_tensor(table[users])

    score_fn.calls = calls  # type: ignore[attr-defined]
    return score_fn


# --------------------------------------------------------------------------------------------------------------
# Hand-computed example: 5 users x 6 items.
#   u0 scores item i with 0.9 - 0.1 i (item 0 best), train {0}, test {2, 5}
#        ranking after masking item 0: 1, 2, 3, 4, 5   -> relevant at ranks 2 and 5
#   u1 scores item i with 0.1 + 0.1 i (item 5 best), train {}, test {5}
#        ranking: 5, 4, 3, 2, 1, 0                      -> relevant at rank 1
#   u2 no test items -> skipped (its top-2 would contain item 0; if it were counted coverage would be 6/6)
#   u3 scores [0.0, .9, .8, .7, .6, .5], train {1}, test {0, 2, 4}
#        ranking after masking item 1: 2, 3, 4, 5, 0    -> relevant at ranks 1, 3, 5
#   u4 scores [0.0, .5, .4, .3, .2, .1], train {}, test {0}
#        ranking: 1, 2, 3, 4, 5, 0                      -> relevant at rank 6
# --------------------------------------------------------------------------------------------------------------
HAND_SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.0, 0.9, 0.8, 0.7, 0.6, 0.5],
        [0.0, 0.5, 0.4, 0.3, 0.2, 0.1],
    ],
    dtype=np.float32,
)
HAND_TRAIN = {0: [0], 3: [1]}
HAND_TEST = {0: [2, 5], 1: [5], 3: [0, 2, 4], 4: [0]}
D2 = 1 / log2(3)  # discount at rank 2
D3 = 1 / log2(4)  # discount at rank 3 (= 0.5)


def test_hand_computed_example() -> None:
    score_fn = _table_scorer(HAND_SCORES)
    out = ranking_metrics(score_fn, _csr(HAND_TRAIN, 5, 6), _csr(HAND_TEST, 5, 6), ks=(2, 3), batch_users=2)

    assert out["n_users"] == 4.0  # u2 skipped
    # k = 2: top-2 lists u0 {1,2}, u1 {5,4}, u3 {2,3}, u4 {1,2}
    #   recall:    u0 1/2, u1 1/1, u3 1/3, u4 0
    assert out["recall@2"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 0) / 4)
    #   ndcg:      u0 D2 / (1 + D2), u1 1, u3 1 / (1 + D2) (ideal over min(3, 2) = 2 items), u4 0
    #              (u0 + u3 = (D2 + 1) / (1 + D2) = 1, so the mean is exactly 2/4)
    assert out["ndcg@2"] == pytest.approx((D2 / (1 + D2) + 1 + 1 / (1 + D2) + 0) / 4)
    assert out["ndcg@2"] == pytest.approx(0.5)
    assert out["hit@2"] == pytest.approx(3 / 4)
    #   precision: u0 1/2, u1 1/2, u3 1/2, u4 0
    assert out["precision@2"] == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)
    #   coverage:  {1,2} | {4,5} | {2,3} | {1,2} = {1,2,3,4,5} -> 5 of 6 items
    assert out["coverage@2"] == pytest.approx(5 / 6)

    # k = 3: top-3 lists u0 {1,2,3}, u1 {5,4,3}, u3 {2,3,4}, u4 {1,2,3}
    #   recall:    u0 1/2, u1 1, u3 2/3 (ranks 1 and 3), u4 0
    assert out["recall@3"] == pytest.approx((1 / 2 + 1 + 2 / 3 + 0) / 4)
    #   ndcg:      u0 D2 / (1 + D2), u1 1, u3 (1 + D3) / (1 + D2 + D3), u4 0
    assert out["ndcg@3"] == pytest.approx((D2 / (1 + D2) + 1 + (1 + D3) / (1 + D2 + D3) + 0) / 4)
    assert out["hit@3"] == pytest.approx(3 / 4)
    #   precision: u0 1/3, u1 1/3, u3 2/3, u4 0
    assert out["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 0) / 4)
    assert out["coverage@3"] == pytest.approx(5 / 6)

    # mrr over the full ranking: first relevant at ranks u0 2, u1 1, u3 1, u4 6
    assert out["mrr"] == pytest.approx((1 / 2 + 1 + 1 + 1 / 6) / 4)

    # score_fn is only asked about evaluated users, in order.
    assert np.concatenate(score_fn.calls).tolist() == [0, 1, 3, 4]


def test_train_masking_removes_items() -> None:
    # One user; item 0 scores highest, the test item 1 second.
    scores = np.array([[0.9, 0.8, 0.1, 0.0]], dtype=np.float32)
    test = _csr({0: [1]}, 1, 4)
    unmasked = ranking_metrics(_table_scorer(scores), _csr({}, 1, 4), test, ks=(1,))
    masked = ranking_metrics(_table_scorer(scores), _csr({0: [0]}, 1, 4), test, ks=(1,))
    assert unmasked["hit@1"] == 0.0 and unmasked["mrr"] == pytest.approx(0.5)
    assert masked["hit@1"] == 1.0 and masked["mrr"] == 1.0


def test_exclude_masks_like_train() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.0]], dtype=np.float32)
    train = _csr({0: [0]}, 1, 4)
    test = _csr({0: [2]}, 1, 4)
    no_excl = ranking_metrics(_table_scorer(scores), train, test, ks=(1,))
    with_excl = ranking_metrics(_table_scorer(scores), train, test, ks=(1,), exclude=_csr({0: [1]}, 1, 4))
    assert no_excl["hit@1"] == 0.0 and no_excl["mrr"] == pytest.approx(0.5)
    assert with_excl["hit@1"] == 1.0 and with_excl["mrr"] == 1.0
    # exclude must not change the caller's train matrix
    assert train.nnz == 1


def test_masked_test_items_are_ignored() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    train = _csr({0: [0], 1: [3]}, 2, 4)
    # u0: test item 0 is also in train -> ignored, |R_u0| = 1 (item 3, rank 3 after masking item 0)
    # u1: its only test item is in train -> u1 is skipped
    test = _csr({0: [0, 3], 1: [3]}, 2, 4)
    out = ranking_metrics(_table_scorer(scores), train, test, ks=(3,))
    assert out["n_users"] == 1.0
    assert out["recall@3"] == 1.0  # 1/1, not 1/2
    assert out["mrr"] == pytest.approx(1 / 3)


def test_candidates_restrict_ranking_and_relevance() -> None:
    # Item i scores 0.9 - 0.1 i for both users; candidates are items {2, 3, 4}.
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=np.float32), (2, 1))
    cand = np.array([False, False, True, True, True, False])
    # u0: test {0, 3}: item 0 is not a candidate -> R = {3}, candidate ranking 2, 3, 4 -> rank 2
    # u1: test {5} only, not a candidate -> skipped
    test = _csr({0: [0, 3], 1: [5]}, 2, 6)
    out = ranking_metrics(_table_scorer(scores), _csr({}, 2, 6), test, ks=(1, 2), candidates=cand)
    assert out["n_users"] == 1.0
    assert out["recall@1"] == 0.0 and out["recall@2"] == 1.0
    assert out["mrr"] == pytest.approx(1 / 2)
    assert out["coverage@1"] == pytest.approx(1 / 3)  # {2} of 3 candidates
    assert out["coverage@2"] == pytest.approx(2 / 3)  # {2, 3}
    # Without the restriction item 0 is a hit at rank 1.
    full = ranking_metrics(_table_scorer(scores), _csr({}, 2, 6), test, ks=(1,))
    assert full["recall@1"] == pytest.approx((1 / 2 + 0) / 2) and full["n_users"] == 2.0


def test_fewer_rankable_items_than_k() -> None:
    # 4 items, 3 masked: only item 2 can be recommended; masked fill-ins in the top-10 are neither hits nor coverage.
    scores = np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    out = ranking_metrics(_table_scorer(scores), _csr({0: [0, 1, 3]}, 1, 4), _csr({0: [2]}, 1, 4), ks=(10,))
    assert out["recall@10"] == 1.0 and out["hit@10"] == 1.0 and out["ndcg@10"] == pytest.approx(1.0)
    assert out["precision@10"] == pytest.approx(1 / 10)
    assert out["coverage@10"] == pytest.approx(1 / 4)
    # A relevant item the model itself scores -inf is not a hit, although k = n_items puts it in the top-k.
    scores = np.array([[0.5, 0.4, -np.inf]], dtype=np.float32)
    out = ranking_metrics(_table_scorer(scores), _csr({0: [0]}, 1, 3), _csr({0: [2]}, 1, 3), ks=(3,))
    assert out["n_users"] == 1.0 and out["hit@3"] == 0.0 and out["coverage@3"] == pytest.approx(1 / 3)


def test_mrr_counts_only_strictly_higher_items() -> None:
    # Ties go to the relevant item: rank = 1 + #items strictly above it, whether or not it lies in the top-k.
    train, test = _csr({}, 2, 4), _csr({0: [2], 1: [3]}, 2, 4)
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.5]], dtype=np.float32)
    for ks in ((1,), (2,), (4,)):
        out = ranking_metrics(_table_scorer(scores), train, test, ks=ks)
        assert out["mrr"] == pytest.approx((1 / 1 + 1 / 2) / 2), ks  # u0 rank 1, u1 rank 2


def test_users_subset_and_empty_result(caplog: pytest.LogCaptureFixture) -> None:
    train, test = _csr(HAND_TRAIN, 5, 6), _csr(HAND_TEST, 5, 6)
    only_u1 = ranking_metrics(_table_scorer(HAND_SCORES), train, test, ks=(2,), users=np.array([1, 1, 2]))
    assert only_u1["n_users"] == 1.0 and only_u1["mrr"] == 1.0 and only_u1["recall@2"] == 1.0
    mask = np.array([False, True, False, False, False])
    assert ranking_metrics(_table_scorer(HAND_SCORES), train, test, ks=(2,), users=mask) == only_u1
    none = ranking_metrics(_table_scorer(HAND_SCORES), train, test, ks=(2,), users=np.array([2]))
    assert none["n_users"] == 0.0 and none["recall@2"] == 0.0
    assert "no user" in caplog.text


def _random_problem(n_users: int = 200, n_items: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    train = sp.random(n_users, n_items, density=0.05, format="csr", random_state=rng)
    test = sp.random(n_users, n_items, density=0.03, format="csr", random_state=rng)
    keep = np.arange(n_users) >= 20  # the first 20 users get no test items
    test = (sp.diags(keep.astype(np.float64)) @ test).tocsr()
    test.eliminate_zeros()
    scores = rng.standard_normal((n_users, n_items))  # float64: no ties
    return scores, train, test


def test_batching_invariance() -> None:
    scores, train, test = _random_problem()
    exclude = sp.random(*train.shape, density=0.02, format="csr", random_state=np.random.default_rng(1))
    cand = np.random.default_rng(2).random(train.shape[1]) < 0.7
    kw = dict(ks=(5, 20), exclude=exclude, candidates=cand)
    ref = ranking_metrics(_table_scorer(scores), train, test, batch_users=10_000, **kw)
    assert 0 < ref["n_users"] < train.shape[0]
    for bs in (1, 7):
        got = ranking_metrics(_table_scorer(scores), train, test, batch_users=bs, **kw)
        assert got.keys() == ref.keys()
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key


def test_agrees_with_torch_geometric() -> None:
    scores, train, test = _random_problem()
    n_users, n_items = train.shape
    ks = (5, 10, 20)
    ours = ranking_metrics(_table_scorer(scores), train, test, ks=ks, batch_users=64)

    # Reference: mask with -inf, full argsort, feed PyG only users that have relevant (test minus train) items.
    tr, te = (train != 0).toarray(), (test != 0).toarray()
    rel = te & ~tr
    users = np.flatnonzero(rel.any(axis=1))
    masked = torch.as_tensor(np.where(tr, -np.inf, scores)[users])
    order = masked.argsort(dim=1, descending=True)
    rel_u = rel[users]
    label_index = torch.as_tensor(np.stack(np.nonzero(rel_u)))

    assert ours["n_users"] == float(len(users))
    for k in ks:
        pred = order[:, :k]
        for name, metric in (
            ("recall", LinkPredRecall(k)),
            ("ndcg", LinkPredNDCG(k)),
            ("hit", LinkPredHitRatio(k)),
            ("precision", LinkPredPrecision(k)),
            ("coverage", LinkPredCoverage(k, num_dst_nodes=n_items)),
        ):
            metric.update(pred, label_index)
            assert ours[f"{name}@{k}"] == pytest.approx(float(metric.compute()), rel=1e-5), f"{name}@{k}"
    # PyG's MRR@k stops at k; with k = n_items it is the full-ranking MRR.
    mrr = LinkPredMRR(n_items)
    mrr.update(order, label_index)
    assert ours["mrr"] == pytest.approx(float(mrr.compute()), rel=1e-5)


def test_score_fn_output_not_written_when_view() -> None:
    pop = torch.tensor([3.0, 2.0, 1.0])
    out = ranking_metrics(
        lambda u: pop.expand(len(u), -1), _csr({0: [0]}, 2, 3), _csr({0: [1], 1: [2]}, 2, 3), ks=(1,)
    )
    assert pop.tolist() == [3.0, 2.0, 1.0]
    # u0: item 0 masked -> item 1 first (hit); u1: item 2 is third (mrr 1/3)
    assert out["hit@1"] == 0.5 and out["mrr"] == pytest.approx((1 + 1 / 3) / 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ks": (0,)}, "positive integer"),
        ({"ks": (10, -1)}, "positive integer"),
        ({"ks": ()}, "ks is empty"),
        ({"batch_users": 0}, "batch_users"),
        ({"candidates": np.ones(5, dtype=bool)}, "candidates has shape"),
        ({"candidates": np.ones(6, dtype=np.int64)}, "bool mask"),
        ({"exclude": sp.csr_matrix((5, 7))}, "exclude has shape"),
        ({"users": np.array([0, 9])}, "users out of range"),
    ],
)
def test_ranking_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ranking_metrics(_table_scorer(HAND_SCORES), _csr(HAND_TRAIN, 5, 6), _csr(HAND_TEST, 5, 6), **kwargs)


def test_ranking_shape_errors() -> None:
    train, test = _csr(HAND_TRAIN, 5, 6), _csr(HAND_TEST, 5, 6)
    with pytest.raises(ValueError, match="test has shape"):
        ranking_metrics(_table_scorer(HAND_SCORES), train, _csr(HAND_TEST, 5, 7))
    with pytest.raises(ValueError, match=r"score_fn returned shape \(2, 5\)"):
        ranking_metrics(lambda u: torch.zeros(len(u), 5), train, test, batch_users=2)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(lambda u: torch.full((len(u), 6), float("nan")), train, test)


def test_rating_metrics_known_values() -> None:
    # errors 0, -1, -2: rmse = sqrt((0 + 1 + 4) / 3), mae = (0 + 1 + 2) / 3
    out = rating_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0]))
    assert out["rmse"] == pytest.approx(sqrt(5 / 3))
    assert out["mae"] == pytest.approx(1.0)
    assert rating_metrics(np.array([4.0]), np.array([4.0])) == {"rmse": 0.0, "mae": 0.0}


@pytest.mark.parametrize(
    ("pred", "true", "match"),
    [
        (np.array([]), np.array([]), "empty"),
        (np.array([1.0, 2.0]), np.array([1.0]), "differ in shape"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "pred holds 1 NaN"),
        (np.array([1.0, 2.0]), np.array([np.inf, 2.0]), "true holds 1 NaN"),
    ],
)
def test_rating_metrics_errors(pred: np.ndarray, true: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rating_metrics(pred, true)


def test_topk_items_masks_rows_and_clips_k() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]])
    mask = _csr({0: [], 1: [1], 2: [0]}, 3, 3)
    # score row 0 is user 2 (item 0 hidden), row 1 is user 1 (item 1 hidden)
    values, idx = topk_items(scores, 10, mask=mask, rows=np.array([2, 1]))
    assert idx.shape == (2, 3)
    assert idx[:, :2].tolist() == [[1, 2], [2, 0]]
    assert torch.isneginf(values[:, 2]).all()
    assert scores[0, 0] == pytest.approx(0.9)  # input untouched
    values, idx = topk_items(scores, 1)
    assert idx.tolist() == [[0], [2]]
    with pytest.raises(ValueError, match="k must be"):
        topk_items(scores, 0)
    with pytest.raises(ValueError, match="columns"):
        topk_items(scores, 1, mask=_csr({}, 2, 4))


def test_csr_from_pairs() -> None:
    m = csr_from_pairs(np.array([1, 0, 1, 1]), np.array([2, 1, 0, 2]), 3, 4)
    assert m.shape == (3, 4) and m.nnz == 3  # (1, 2) twice collapses
    assert m.toarray().tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m.has_sorted_indices and m.indices[m.indptr[1] : m.indptr[2]].tolist() == [0, 2]
    with pytest.raises(ValueError, match="items out of range"):
        csr_from_pairs(np.array([0]), np.array([4]), 3, 4)
    with pytest.raises(ValueError, match="differ in length"):
        csr_from_pairs(np.array([0, 1]), np.array([0]), 3, 4)


def test_popularity_beats_random_on_ml100k() -> None:
    assert (ML100K / "u1.base").is_file(), f"ml-100k mirror not found at {ML100K} (set $M6REC_DATA_MIRROR)"
    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        raw = np.loadtxt(ML100K / name, dtype=np.int64, usecols=(0, 1))
        return raw[:, 0] - 1, raw[:, 1] - 1  # ids are 1-based

    (tr_u, tr_i), (te_u, te_i) = load("u1.base"), load("u1.test")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    assert (n_users, n_items) == (943, 1682)
    train = csr_from_pairs(tr_u, tr_i, n_users, n_items)
    test = csr_from_pairs(te_u, te_i, n_users, n_items)

    pop = torch.as_tensor(np.asarray(train.sum(axis=0)).ravel(), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    rand = torch.rand(n_users, n_items, generator=gen)
    popular = ranking_metrics(lambda u: pop.expand(len(u), -1), train, test, ks=(20,), batch_users=256)
    random = ranking_metrics(lambda u: rand[torch.as_tensor(u)], train, test, ks=(20,), batch_users=256)

    assert popular["n_users"] == random["n_users"] > 400
    assert 0.0 < popular["recall@20"] < 1.0
    assert popular["recall@20"] > random["recall@20"]
