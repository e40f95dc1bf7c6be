"""Baseline models: known small answers and invariants."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.models.itemknn import ItemKNN
from m6rec.models.mf import BPRMF, BiasedALS, PureSVD
from m6rec.models.popularity import MostPopular
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.training.sampling import BPRSampler


def _matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    u = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    i = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return sp.csr_matrix((np.ones(len(i), dtype=np.float32), (u, i)), shape=(len(rows), n_items))


def test_mostpopular_ranks_by_training_count():
    train = _matrix([[0, 1], [1, 2], [1]], 4)
    scores = MostPopular().fit(train).score(np.array([0, 2]))
    assert scores.shape == (2, 4)
    assert scores[0].tolist() == [1.0, 3.0, 1.0, 0.0]


def test_itemknn_cosine_similarity_by_hand():
    # Items 0 and 1 are always bought together (cosine 1 before shrink); item 2 shares one user with item 1.
    train = _matrix([[0, 1], [0, 1], [1, 2]], 3)
    model = ItemKNN(neighbours=2, shrink=0.0).fit(train)
    sim = model.sim.toarray()
    # |U0|=2, |U1|=3, |U2|=1; |U0∩U1|=2 -> 2/sqrt(6); |U1∩U2|=1 -> 1/sqrt(3); |U0∩U2|=0.
    np.testing.assert_allclose(sim[0, 1], 2 / np.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(sim[1, 2], 1 / np.sqrt(3), rtol=1e-6)
    assert sim[0, 2] == 0 and np.all(np.diag(sim) == 0)
    # A user who has item 2 only: item 1 is its neighbour, item 0 is not.
    scores = ItemKNN(neighbours=2, shrink=0.0).fit(_matrix([[0, 1], [0, 1], [1, 2], [2]], 3)).score(np.array([3]))
    assert scores[0, 1] > 0 and scores[0, 0] == 0


def test_itemknn_keeps_only_top_neighbours_and_chunks_agree():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 30)) < 0.2).astype(np.float32)
    train = sp.csr_matrix(dense)
    a = ItemKNN(neighbours=5, chunk=7).fit(train).sim
    b = ItemKNN(neighbours=5, chunk=1000).fit(train).sim
    assert (np.diff(a.indptr) <= 5).all()
    np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-6)


def test_puresvd_reconstructs_a_low_rank_matrix():
    rng = np.random.default_rng(1)
    low = (rng.random((30, 3)) @ rng.random((3, 20)) > 0.7).astype(np.float32)
    model = PureSVD(dim=19).fit(sp.csr_matrix(low))
    np.testing.assert_allclose(model.score(np.arange(30)).numpy(), low, atol=1e-4)


def test_bpr_sampler_negatives_avoid_positives_and_cover_every_edge():
    rng = np.random.default_rng(2)
    train = sp.csr_matrix((rng.random((50, 40)) < 0.3).astype(np.float32))
    sampler = BPRSampler(train, seed=3)
    batches = sampler.epoch(batch_size=64)
    users = torch.cat([b[0] for b in batches]).numpy().copy()
    pos = torch.cat([b[1] for b in batches]).numpy().copy()
    neg = torch.cat([b[2] for b in batches]).numpy().copy()
    assert len(users) == train.nnz
    assert np.all(train[users, pos].A1 == 1)
    assert np.mean(train[users, neg].A1 == 1) < 0.01  # rejection leaves (almost) no positive negatives


def test_bpr_sampler_respects_item_ranges():
    train = sp.csr_matrix(np.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]], dtype=np.float32))
    coo = train.tocoo()
    ranges = np.where(coo.col[:, None] < 3, [[0, 3]], [[3, 6]])
    sampler = BPRSampler(train, seed=0, item_ranges=ranges)
    for _ in range(20):
        for users, pos, neg in sampler.epoch(8):
            assert torch.all((pos < 3) == (neg < 3))


def test_bprmf_learns_and_checkpoint_round_trips(tmp_path):
    # Two user groups with disjoint tastes: after training, each group ranks its own unseen items first.
    rows = [[0, 1, 2] for _ in range(10)] + [[3, 4, 5] for _ in range(10)]
    rows[0], rows[10] = [0, 1], [3, 4]
    train = _matrix(rows, 6)
    torch.manual_seed(0)
    model = BPRMF(20, 6, dim=8, reg=1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sampler = BPRSampler(train, seed=0)
    for _ in range(60):
        for batch in sampler.epoch(32):
            opt.zero_grad()
            model.calculate_loss(batch).backward()
            opt.step()
    scores = model.score(np.array([0, 10]))
    assert scores[0, 2] > scores[0, 3:].max()
    assert scores[1, 5] > scores[1, :3].max()
    path = save_checkpoint(tmp_path / "m.pt", model, {"n_users": 20, "n_items": 6, "dim": 8, "reg": 1e-4},
                           params={"mf_dim": 8})
    again, info = load_checkpoint(path)
    assert info["params"] == {"mf_dim": 8}
    torch.testing.assert_close(again.score(np.array([0, 10])), scores)


def test_biased_als_recovers_ratings_with_biases():
    rng = np.random.default_rng(4)
    n_users, n_items = 60, 40
    p, q = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    bu, bi = rng.normal(size=n_users), rng.normal(size=n_items)
    full = 3.0 + bu[:, None] + bi[None, :] + p @ q.T
    mask = rng.random((n_users, n_items)) < 0.6
    users, items = np.nonzero(mask)
    model = BiasedALS(dim=3, reg=0.01, iterations=30).fit(users, items, full[mask], n_users, n_items)
    hu, hi = np.nonzero(~mask)
    rmse = np.sqrt(np.mean((model.predict(hu, hi) - full[~mask]) ** 2))
    assert rmse < 0.15 * full.std()
