"""The serving bundle: projection fitting, construction from real data, export/load, the meta schema and its error
messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from m6rec.data.dataset import domain_data
from m6rec.serving.bundle import FORMAT_VERSION, DomainBundle, TextProjection, meta_metrics
from m6rec.serving.bundle_io import export_bundle, load_bundle, read_meta
from m6rec.serving.bundle_scorers import BundleError
from m6rec.serving.export import fit_text_projection
from tests.serving.conftest import HISTORY_DOMAIN
from tests.serving.history_bundles import attention_domain
from tests.serving.svd_bundles import svd_bundle, svd_domain


def test_fit_text_projection_recovers_an_affine_map():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 12))
    W = rng.standard_normal((12, 4))
    b = rng.standard_normal(4)
    proj = fit_text_projection(X, X @ W + b, alpha=1e-8)
    np.testing.assert_allclose(proj.weight, W, atol=1e-4)
    np.testing.assert_allclose(proj.bias, b, atol=1e-4)
    np.testing.assert_allclose(proj.apply(X[:3]), X[:3] @ W + b, atol=1e-3)


def test_fit_text_projection_mask_and_shrinkage():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 6))
    Y = X @ rng.standard_normal((6, 3))
    Y_bad = Y.copy()
    Y_bad[150:] = 1e6  # rows outside the mask must not matter
    mask = np.arange(200) < 150
    a = fit_text_projection(X, Y_bad, alpha=0.5, mask=mask)
    b = fit_text_projection(X[:150], Y[:150], alpha=0.5)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5)
    big = fit_text_projection(X, Y, alpha=1e6)
    assert np.abs(big.weight).max() < 0.01 * np.abs(b.weight).max()  # heavy ridge shrinks W to ~0
    with pytest.raises(ValueError, match="same rows"):
        fit_text_projection(X, Y[:10])
    with pytest.raises(ValueError, match="alpha"):
        fit_text_projection(X, Y, alpha=-1)


def test_make_domain_bundle_from_real_data(tiny_prepared):
    data = domain_data(tiny_prepared, "ml-100k")
    b = svd_domain(tiny_prepared, "ml-100k", 8)
    assert b.item_vectors.dtype == np.float32 and b.item_vectors.shape == (data.n_items, 8)
    assert b.user_vectors.shape == (data.n_users, 8)
    np.testing.assert_array_equal(b.popularity, np.asarray(data.train.sum(axis=0)).ravel())
    expected_seen = ((data.train + data.valid) > 0).astype(np.float32)
    assert (b.seen != expected_seen).nnz == 0
    assert b.raw_item == tuple(data.items["raw_item"]) and b.titles == tuple(data.items["title"])
    users = tiny_prepared.users[tiny_prepared.users["domain"] == "ml-100k"].sort_values("user")
    assert b.raw_user == tuple(users["raw_user"])
    assert b.item_text_vectors is None and b.text_projection is None


def test_export_load_roundtrip(tiny_prepared, tmp_path):
    domains = svd_bundle(tiny_prepared, ["ml-100k", "amazon-office"], dim=4)
    text = np.random.default_rng(0).standard_normal((domains["ml-100k"].n_items, 5)).astype(np.float32)
    d = domains["ml-100k"]
    domains["ml-100k"] = DomainBundle(d.item_vectors, d.user_vectors, d.popularity, d.seen, d.titles, d.raw_item,
                                      d.raw_user, item_text_vectors=text,
                                      text_projection=fit_text_projection(text, d.item_vectors, 1.0))
    path = export_bundle(tmp_path / "b", domains, {"model": "svd4", "encoder": "enc",
                                                 "metrics": {"ml-100k": {"svd4": {"valid": {"ndcg@20": 0.1}}}}})
    assert not list(tmp_path.glob(".b-*")), "temporary folder left behind"
    meta = read_meta(path)
    assert meta["model"] == "svd4" and "created" not in meta and meta["format_version"] == FORMAT_VERSION == 3
    assert meta_metrics(meta) == meta["metrics"]
    assert meta["domains"]["ml-100k"]["text_dim"] == 5 and meta["domains"]["amazon-office"]["text_dim"] == 0
    back = load_bundle(path)
    for name, orig in domains.items():
        got = back.domains[name]
        np.testing.assert_array_equal(got.item_vectors, orig.item_vectors)
        np.testing.assert_array_equal(got.user_vectors, orig.user_vectors)
        np.testing.assert_array_equal(got.popularity, orig.popularity)
        assert (got.seen != orig.seen).nnz == 0
        assert (got.raw_item, got.raw_user, got.titles) == (orig.raw_item, orig.raw_user, orig.titles)
    np.testing.assert_array_equal(back.domains["ml-100k"].item_text_vectors, text)
    np.testing.assert_array_equal(back.domains["ml-100k"].text_projection.weight,
                                  domains["ml-100k"].text_projection.weight)
    assert list(load_bundle(path, domains=["amazon-office"]).domains) == ["amazon-office"]
    # Re-export replaces the folder.
    export_bundle(path, {"amazon-office": domains["amazon-office"]}, {"model": "v2"})
    assert read_meta(path)["model"] == "v2" and not (path / "ml-100k").exists()


def test_bundle_errors_name_the_culprit(tiny_prepared, tmp_path):
    d = svd_domain(tiny_prepared, "amazon-office", 4)
    with pytest.raises(BundleError, match="user_vectors has dim 3"):
        DomainBundle(d.item_vectors, d.user_vectors[:, :3], d.popularity, d.seen, d.titles, d.raw_item, d.raw_user)
    with pytest.raises(BundleError, match="popularity has shape"):
        DomainBundle(d.item_vectors, d.user_vectors, d.popularity[:-1], d.seen, d.titles, d.raw_item, d.raw_user)
    with pytest.raises(BundleError, match="raw_user ids are not unique"):
        DomainBundle(d.item_vectors, d.user_vectors, d.popularity, d.seen, d.titles, d.raw_item,
                     (d.raw_user[0],) * len(d.raw_user))
    nan = d.item_vectors.copy()
    nan[0, 0] = np.nan
    with pytest.raises(BundleError, match="item_vectors holds NaN"):
        DomainBundle(nan, d.user_vectors, d.popularity, d.seen, d.titles, d.raw_item, d.raw_user)
    proj = TextProjection(np.zeros((5, 4), np.float32), np.zeros(4, np.float32))
    with pytest.raises(BundleError, match="encoder"):
        export_bundle(tmp_path / "x", {"a": DomainBundle(d.item_vectors, d.user_vectors, d.popularity, d.seen,
                                                          d.titles, d.raw_item, d.raw_user, text_projection=proj)},
                      {"model": "m"})
    with pytest.raises(BundleError, match="cannot be a folder name"):
        export_bundle(tmp_path / "x", {"../up": d}, {})

    path = export_bundle(tmp_path / "ok", {"amazon-office": d}, {"model": "m"})
    with pytest.raises(BundleError, match="no domain"):
        load_bundle(path, domains=["nope"])
    (path / "amazon-office" / "seen.npz").unlink()
    with pytest.raises(BundleError, match="seen.npz"):
        load_bundle(path)
    (path / "amazon-office" / "popularity.npy").unlink()
    with pytest.raises(BundleError, match="popularity.npy"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a serving bundle"):
        load_bundle(tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    (path / "bundle.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(BundleError, match="format is 'other'"):
        read_meta(path)


def test_no_pickle_on_load(tiny_prepared, tmp_path):
    d = svd_domain(tiny_prepared, "amazon-office", 4)
    path = export_bundle(tmp_path / "b", {"amazon-office": d}, {"model": "m"})
    np.save(path / "amazon-office" / "popularity.npy", np.array([object()] * d.n_items, dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_bundle(path)


def test_seen_is_saved_as_csr(tiny_prepared, tmp_path):
    d = svd_domain(tiny_prepared, "amazon-office", 4)
    path = export_bundle(tmp_path / "b", {"amazon-office": d}, {"model": "m"})
    seen = sp.load_npz(path / "amazon-office" / "seen.npz")
    assert seen.format == "csr" and seen.shape == (d.n_users, d.n_items)


def test_history_scorer_roundtrip_and_checks(tiny_prepared, history_model, tmp_path):
    """A history-attention domain: no user vectors, the encoder's weights, recency and every user's history."""
    model, data = history_model
    d = attention_domain(tiny_prepared, model, data)
    assert d.kind == "history" and d.user_vectors is None and d.n_users == data.n_users
    assert set(d.scorer.weights) == set(model.encoder.state_dict())
    assert d.scorer.recency.shape == (2, 20) and d.scorer.history.shape == (data.n_users, 20)
    path = export_bundle(tmp_path / "b", {HISTORY_DOMAIN: d}, {"model": "attention"})
    meta = read_meta(path)["domains"][HISTORY_DOMAIN]
    assert meta["scorer"] == "history" and meta["history_scorer"]["pooling"] == "attention"
    assert not (path / HISTORY_DOMAIN / "user_vectors.npy").exists()
    back = load_bundle(path).domains[HISTORY_DOMAIN]
    np.testing.assert_array_equal(back.scorer.history, d.scorer.history)
    np.testing.assert_array_equal(back.scorer.recency, d.scorer.recency)
    for name, arr in d.scorer.weights.items():
        np.testing.assert_array_equal(back.scorer.weights[name], arr)

    with pytest.raises(BundleError, match="exactly one of user_vectors"):
        DomainBundle(d.item_vectors, np.zeros((d.n_users, d.dim), np.float32), d.popularity, d.seen, d.titles,
                     d.raw_item, d.raw_user, scorer=d.scorer)
    with pytest.raises(BundleError, match="exactly one of user_vectors"):
        DomainBundle(d.item_vectors, None, d.popularity, d.seen, d.titles, d.raw_item, d.raw_user)
    bad = d.scorer.history.copy()
    bad[0, -1] = d.n_items
    with pytest.raises(BundleError, match="outside"):
        DomainBundle(d.item_vectors, None, d.popularity, d.seen, d.titles, d.raw_item, d.raw_user,
                     scorer=type(d.scorer)(d.scorer.config, d.scorer.weights, bad, d.scorer.recency))
    with pytest.raises(BundleError, match=r"history must be \[n_users, 20\]"):
        type(d.scorer)(d.scorer.config, d.scorer.weights, d.scorer.history[:, :5])
    (path / HISTORY_DOMAIN / "history_scorer.npz").unlink()
    with pytest.raises(BundleError, match="history_scorer.npz"):
        load_bundle(path)


def test_meta_metrics_reads_both_shapes():
    """The metrics files' schema passes through; the old per-split shape is filed under the bundle's model."""
    new = {"ml-100k": {"bprmf": {"valid": {"ndcg@20": 0.2}, "test": {"ndcg@20": 0.1}}}}
    assert meta_metrics({"model": "bprmf", "metrics": new}) == new
    old = {"ml-100k": {"valid": {"ndcg@20": 0.2}, "test": {"ndcg@20": 0.1}}}
    assert meta_metrics({"model": "bprmf", "metrics": old}) == new
    assert meta_metrics({"model": "m"}) == {} and meta_metrics({"model": "m", "metrics": None}) == {}
    with pytest.raises(BundleError, match="ml-100k"):
        meta_metrics({"model": "m", "metrics": {"ml-100k": 0.3}})


def test_bundle_format_modules_do_not_import_pandas():
    """The service loads bundles without pandas or m6rec.data (a light start-up and a small bento)."""
    import subprocess
    import sys

    code = ("import sys, m6rec.serving.bundle, m6rec.serving.bundle_io, m6rec.serving.recommender, "
            "m6rec.serving.loader; bad = sorted(m for m in sys.modules if m == 'pandas' or "
            "m.startswith('m6rec.data') or m.startswith('m6rec.stages')); assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
