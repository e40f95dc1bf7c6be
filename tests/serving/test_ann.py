"""The approximate serving index (m6rec.serving.ann) on a real bundle: the same answers as exact top-k when every
cell is probed, the model's own scores and no seen item when few are, an exact answer when the probed cells run dry,
and the same endpoints over HTTP with the index switched on."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from m6rec.config import ConfigError
from m6rec.serving.ann import AnnIndex, AnnSettings
from m6rec.serving.bundle_io import load_bundle
from m6rec.serving.loader import ServeParams, ann_settings, serve_settings
from m6rec.serving.local_server import LocalServer
from m6rec.serving.recommender import Recommender
from tests.serving.conftest import HISTORY_DOMAIN, TEXT_DOMAIN, flat

K = 10


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir):
    return load_bundle(serving_bundle_dir)


@pytest.fixture(scope="module")
def exact(bundle) -> Recommender:
    return Recommender(bundle, ann=None)


def _users(rec: Recommender, domain: str) -> list[str]:
    return list(rec.domains[domain].user_index)


def test_every_cell_probed_gives_the_exact_answers_seen_items_excluded(bundle, exact):
    ann = Recommender(bundle, ann=AnnSettings(min_items=1, nprobe=10_000))
    index = ann.domains[TEXT_DOMAIN]
    assert index.ann is not None and index.ann.nprobe == index.ann.nlist > 1
    assert ann.domains[HISTORY_DOMAIN].ann is None  # attention scorers are ranked exactly
    assert ann.metadata()["domains"][TEXT_DOMAIN]["index"].startswith("ivfflat")
    assert exact.metadata()["domains"][TEXT_DOMAIN]["index"] == "exact"
    for user in _users(exact, TEXT_DOMAIN):
        for exclude_seen in (True, False):
            want = flat(exact.recommend(TEXT_DOMAIN, user, K, exclude_seen))
            got = flat(ann.recommend(TEXT_DOMAIN, user, K, exclude_seen))
            assert got["items"] == want["items"], user
            np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)
    items = [exact.domains[TEXT_DOMAIN].raw_item[i] for i in (0, 5, 9)]
    want = flat(exact.recommend_items(TEXT_DOMAIN, items, k=K))
    got = flat(ann.recommend_items(TEXT_DOMAIN, items, k=K))
    assert got["items"] == want["items"] and not set(got["items"]) & set(items)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)


def test_few_cells_probed_return_the_models_scores_and_never_a_seen_item(bundle, exact):
    ann = Recommender(bundle, ann=AnnSettings(min_items=1, nprobe=1))
    index = ann.domains[TEXT_DOMAIN]
    assert index.ann.nprobe == 1 < index.ann.nlist
    vectors = index.scorer.user_vectors
    hits = total = 0
    for user in _users(exact, TEXT_DOMAIN):
        u = index.user_index[user]
        got = flat(ann.recommend(TEXT_DOMAIN, user, K))
        assert len(got["items"]) == K
        local = [index.item_index[i] for i in got["items"]]
        assert not set(local) & set(index.seen(u).tolist())
        np.testing.assert_allclose(got["scores"], (index.items[local] @ vectors[u]).numpy(), rtol=1e-5, atol=1e-5)
        assert got["scores"] == sorted(got["scores"], reverse=True)
        hits += len(set(got["items"]) & set(flat(exact.recommend(TEXT_DOMAIN, user, K))["items"]))
        total += K
    assert 0 < hits < total  # one cell of many: approximate, not exact, and not unrelated to the exact answer


def test_a_query_whose_probed_cells_run_dry_is_answered_exactly(bundle):
    items = bundle.domains[TEXT_DOMAIN].item_vectors
    index = AnnIndex(items, AnnSettings(min_items=1, nprobe=1))
    query = items[:3].mean(axis=0, keepdims=True)
    keep = np.array([3, 50, 100, len(items) - 1])
    exclude = np.setdiff1d(np.arange(len(items)), keep)  # all but four items seen
    scores, top = index.search(query, K, [exclude])
    want = keep[np.argsort(-(items[keep] @ query[0]), kind="stable")]
    assert top[0, :4].tolist() == want.tolist() and (top[0, 4:] == -1).all()
    assert np.isfinite(scores[0, :4]).all() and np.isneginf(scores[0, 4:]).all()


def test_ann_settings_are_checked_and_the_threshold_follows_the_environment():
    with pytest.raises(ConfigError, match="serve.ann_nprobe"):
        ServeParams(ann_nprobe=0)
    with pytest.raises(ConfigError, match="serve.ann_nlist"):
        ServeParams(ann_nlist=-1)
    cfg, _ = serve_settings({"M6REC_PARAMS": "/nonexistent.yaml", "M6REC_ANN_MIN_ITEMS": "5"})
    assert ann_settings(cfg) == AnnSettings(min_items=5, nlist=0, nprobe=32)
    with pytest.raises(ConfigError, match="M6REC_ANN_MIN_ITEMS"):
        serve_settings({"M6REC_PARAMS": "/nonexistent.yaml", "M6REC_ANN_MIN_ITEMS": "many"})
    assert AnnSettings().cells(1_000_000) == 4000 and AnnSettings().cells(100) == 2


def test_the_service_serves_a_large_catalogue_from_the_index_over_http(serving_bundle_dir, bundle, tmp_path):
    """M6REC_ANN_MIN_ITEMS=1 makes the tiny catalogue "large": /metadata names the index and /recommend answers
    what the in-process recommender with the same settings answers."""
    srv = LocalServer(env={"M6REC_BUNDLE": str(serving_bundle_dir), "M6REC_ANN_MIN_ITEMS": "1",
                           "M6REC_PRELOAD_ENCODER": "0", "HF_HUB_OFFLINE": "1", "M6REC_THREADS": "1",
                           "M6REC_PARAMS": str(tmp_path / "none.yaml")},
                      cwd=tmp_path, log_path=tmp_path / "serve.log")
    local = Recommender(bundle, ann=AnnSettings(min_items=1))
    with srv:
        meta = httpx.post(f"{srv.url}/metadata", json={}, timeout=30).json()
        assert meta["domains"][TEXT_DOMAIN]["index"] == local.domains[TEXT_DOMAIN].ann.describe
        assert meta["domains"][HISTORY_DOMAIN]["index"] == "exact"
        for user in _users(local, TEXT_DOMAIN)[:10]:
            r = httpx.post(f"{srv.url}/recommend", json={"domain": TEXT_DOMAIN, "user": user, "k": K}, timeout=30)
            assert r.status_code == 200, r.text
            got, want = flat(r.json()), flat(local.recommend(TEXT_DOMAIN, user, K))
            assert got["items"] == want["items"]
            np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)
        bad = httpx.post(f"{srv.url}/recommend", json={"domain": "nope", "user": "x", "k": K}, timeout=30)
        assert bad.status_code == 404 and bad.json()["field"] == "domain"
    assert "ANN index: IVFFlat" in (tmp_path / "serve.log").read_text()
