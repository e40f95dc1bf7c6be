"""Row scorers (item-item, graph filter, popularity) and the blend: every baseline served through the bundle round
trip scores exactly as the model evaluates, on real (tiny) data."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from m6rec.data.dataset import domain_data
from m6rec.evaluation.protocol import evaluate_split
from m6rec.models.blend import (
    CandidateScores,
    blend_domain,
    blend_score_fn,
    cross_fitted_gains,
    fit_blend,
    simplex_grid,
    split_rows,
    user_folds,
)
from m6rec.models.ease import EASE
from m6rec.models.gfcf import GFCF
from m6rec.models.itemknn import ItemKNN
from m6rec.models.popularity import MostPopular
from m6rec.serving.bundle import FORMAT_VERSION
from m6rec.serving.bundle_io import export_bundle, load_bundle, read_meta
from m6rec.serving.bundle_scorers import BundleError
from m6rec.serving.export import export_model, input_rows, raw_user_ids
from m6rec.serving.scoring import DomainScorer, standardise

DOMAINS = ("ml-100k", "amazon-office")
MODELS = {
    "mostpop": lambda: MostPopular(),
    "itemknn": lambda: ItemKNN(neighbours=20, shrink=10.0),
    "gfcf": lambda: GFCF(k=16, alpha=0.3),
    "ease": lambda: EASE(lam=50.0),
}
KINDS = {"mostpop": "popularity", "itemknn": "itemitem", "gfcf": "graphfilter", "ease": "itemitem"}


def fitted(name: str, data):
    model = MODELS[name]().fit(data.train)
    model.domain = data.name
    return model


@pytest.fixture(scope="module")
def baseline_bundles(tiny_prepared, tmp_path_factory):
    """One bundle per baseline model over DOMAINS, and the fitted models."""
    root = tmp_path_factory.mktemp("baseline-bundles")
    datas = {d: domain_data(tiny_prepared, d) for d in DOMAINS}
    models, paths = {}, {}
    for name in MODELS:
        models[name] = {d: fitted(name, data) for d, data in datas.items()}
        paths[name] = export_model(root / name, models[name], datas, tiny_prepared, {"model": name})
    return datas, models, paths


@pytest.mark.parametrize("name", list(MODELS))
def test_served_scores_equal_the_models_evaluated_scores(baseline_bundles, name):
    datas, models, paths = baseline_bundles
    assert read_meta(paths[name])["format_version"] == FORMAT_VERSION
    bundle = load_bundle(paths[name])
    for d, data in datas.items():
        b = bundle.domains[d]
        assert b.kind == KINDS[name]
        scorer = DomainScorer(b)
        users = np.arange(data.n_users)
        # The bundle serves from train + valid; the model scores the same rows when the protocol passes them.
        want = models[name][d].full_scores(d, users, input_rows(data))
        got = scorer.users(torch.from_numpy(users))
        assert got.shape == (data.n_users, data.n_items)
        assert float((got - want).abs().max()) < 1e-5
        # Without a history the model scores its training rows; the scorer scores any rows it is given.
        train_rows = split_rows(data, "valid")
        np.testing.assert_allclose(scorer.rows(train_rows).numpy(), models[name][d].full_scores(d, users).numpy(),
                                   atol=1e-5)
        values, items = scorer.top_k(torch.tensor([0, 1]), 10)
        np.testing.assert_allclose(values.numpy(), torch.topk(got[:2], 10).values.numpy(), atol=1e-5)
        assert scorer.max_len == 0


def test_itemitem_explain_is_each_history_items_contribution(baseline_bundles):
    datas, models, paths = baseline_bundles
    for name in ("itemknn", "ease"):
        b = load_bundle(paths[name]).domains["ml-100k"]
        scorer = DomainScorer(b)
        assert scorer.explains
        user = int(np.argmax(np.diff(b.scorer.history.indptr)))
        scores = scorer.users(torch.tensor([user]))[0]
        item = int(torch.argmax(scores))
        why = scorer.explain(user, item)
        assert set(why.items.tolist()) == set(b.scorer.history[user].indices.tolist())
        assert why.score == pytest.approx(float(scores[item]), abs=1e-4)
        assert float(why.weights.sum()) == pytest.approx(why.score, abs=1e-4)
        assert scorer.score(user, item) == pytest.approx(float(scores[item]), abs=1e-5)


def test_history_scores_of_an_adhoc_history_match_its_row(baseline_bundles):
    datas, models, paths = baseline_bundles
    data = datas["ml-100k"]
    b = load_bundle(paths["itemknn"]).domains["ml-100k"]
    items = b.scorer.history[0].indices.tolist()
    scorer = DomainScorer(b)
    np.testing.assert_allclose(scorer.history_scores(items).numpy(), scorer.users(torch.tensor([0]))[0].numpy(),
                               atol=1e-5)
    assert data.n_items == b.n_items


def test_ease_matches_the_closed_form_by_hand():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 8)) < 0.3).astype(np.float32)
    dense[:, 5] = 0  # an item nobody has: outside the active set
    x = sp.csr_matrix(dense)
    model = EASE(lam=2.0).fit(x)
    active = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
    g = x.toarray()[:, active].T @ x.toarray()[:, active] + 2.0 * np.eye(len(active))
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.B, b, atol=1e-4)
    scores = model.score(np.arange(30)).numpy()
    assert np.all(scores[:, 5] == 0)
    np.testing.assert_allclose(scores[:, active], x.toarray()[:, active] @ b, atol=1e-4)
    with pytest.raises(ValueError, match="max_items"):
        EASE(lam=1.0, max_items=3).fit(x)


def test_bad_row_bundles_are_clear_bundle_errors(baseline_bundles, tmp_path):
    _, _, paths = baseline_bundles
    broken = tmp_path / "ease"
    shutil.copytree(paths["ease"], broken)
    (broken / "ml-100k" / "item_active.npy").unlink()
    with pytest.raises(BundleError, match="item_active.npy"):
        load_bundle(broken)
    broken = tmp_path / "gfcf"
    shutil.copytree(paths["gfcf"], broken)
    (broken / "ml-100k" / "filter.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="filter.npz"):
        load_bundle(broken)
    broken = tmp_path / "itemknn"
    shutil.copytree(paths["itemknn"], broken)
    meta = json.loads((broken / "bundle.json").read_text())
    meta["domains"]["ml-100k"]["scorer"] = "telepathy"
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown scorer kind 'telepathy'"):
        load_bundle(broken)


def test_a_format_2_bundle_still_loads(baseline_bundles, tmp_path):
    # A bundle of the previous format (no row scorers): the scorer kind defaults to dot when bundle.json has none.
    _, _, paths = baseline_bundles
    b = load_bundle(paths["mostpop"]).domains["ml-100k"]
    from m6rec.serving.bundle import DomainBundle

    dot = DomainBundle(item_vectors=b.item_vectors, user_vectors=np.zeros((b.n_users, b.dim), np.float32),
                       popularity=b.popularity, seen=b.seen, titles=b.titles, raw_item=b.raw_item,
                       raw_user=b.raw_user)
    path = export_bundle(tmp_path / "old", {"ml-100k": dot}, {"model": "old"})
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 2
    for entry in meta["domains"].values():
        entry.pop("scorer")
    (path / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(path).domains["ml-100k"].kind == "dot"


# ------------------------------------------------------------------------------------------------------- blend


def _candidates(baseline_bundles, tiny_prepared, data):
    _, _, paths = baseline_bundles
    raw = raw_user_ids(tiny_prepared, data.name)
    return {n: CandidateScores(load_bundle(p).domains[data.name], data, raw) for n, p in paths.items()}


def test_simplex_grid_covers_the_simplex_vertices_first():
    grid = simplex_grid(3, 0.5)
    assert grid[:3] == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    assert len(grid) == 6 and all(abs(sum(w) - 1) < 1e-9 for w in grid)


def test_blend_weights_are_fitted_on_validation_only(baseline_bundles, tiny_prepared):
    data = domain_data(tiny_prepared, "ml-100k")
    fit = fit_blend(_candidates(baseline_bundles, tiny_prepared, data), data, max_components=3, step=0.25)
    # Other test items (here: none, then the validation items) leave the weights as they are.
    for test in (sp.csr_matrix(data.test.shape, dtype=data.test.dtype), data.valid.copy()):
        other = dataclasses.replace(data, test=test)
        refit = fit_blend(_candidates(baseline_bundles, tiny_prepared, other), other, max_components=3, step=0.25)
        assert (refit.names, refit.weights, refit.valid) == (fit.names, fit.weights, fit.valid)
    # The grid's best point is at least as good as every single candidate among the chosen; the fit serves it only
    # when the cross-fitted test accepted it, else the best single candidate alone.
    assert fit.mixture_valid == max(v for _, v in fit.grid)
    assert fit.mixture_valid >= max(fit.candidate_valid.values()) - 1e-12
    assert len(fit.fold_gains) == 10
    if fit.accepted:
        assert fit.valid == fit.mixture_valid and len(fit.names) > 1 and fit.z >= 2.0
    else:
        assert fit.names == [fit.chosen[0]] and fit.weights == [1.0]
        assert fit.valid == pytest.approx(fit.candidate_valid[fit.chosen[0]], abs=1e-9)
    # Changing the validation items does change what the fit sees.
    other = dataclasses.replace(data, valid=data.test.copy())
    assert fit_blend(_candidates(baseline_bundles, tiny_prepared, other), other, step=0.25).candidate_valid != \
        fit.candidate_valid


def test_cross_fitted_gains_reward_a_consistent_gain_and_not_a_lucky_fold():
    sizes = np.full(10, 50.0)
    vertices = [0, 1]
    # Point 2 beats both singles by .01 on every fold: every held-out fold sees that gain.
    steady = np.array([[0.30] * 10, [0.28] * 10, [0.31] * 10])
    np.testing.assert_allclose(cross_fitted_gains(steady, sizes, vertices), 0.01)
    # Point 2 is best overall only through one fold: it is chosen whenever that fold is among the others, and then
    # loses .002 on the held-out fold; held out, the lucky fold's own gain is not seen (the single is chosen).
    lucky = steady.copy()
    lucky[2] = 0.298
    lucky[2, 3] = 0.40
    gains = cross_fitted_gains(lucky, sizes, vertices)
    assert gains[3] == 0.0 and np.all(np.delete(gains, 3) == pytest.approx(-0.002))
    assert np.argmax(lucky @ sizes) == 2  # in sample, the lucky point would have been served


def test_user_folds_partition_the_users_by_seed():
    users = np.arange(3, 103)
    folds = user_folds(users, 7, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == users.tolist()
    assert {len(f) for f in folds} <= {14, 15}
    assert all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 7, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 7, seed=2)))


def test_blend_falls_back_to_the_best_single_unless_the_mixture_passes_the_test(baseline_bundles, tiny_prepared):
    data = domain_data(tiny_prepared, "ml-100k")
    cands = _candidates(baseline_bundles, tiny_prepared, data)
    free = fit_blend(cands, data, max_components=3, step=0.25, folds=0)  # no test: the grid's best point
    assert free.valid == free.mixture_valid and free.weights == [w for w in free.mixture if w > 0]
    strict = fit_blend(cands, data, max_components=3, step=0.25, min_z=1e12)  # no mixture can pass
    assert not strict.accepted and strict.names == [strict.chosen[0]] and strict.weights == [1.0]
    best_single = max(strict.candidate_valid, key=strict.candidate_valid.get)
    assert strict.names == [best_single]
    # Served, the fallback ranks exactly as its candidate does (one z-scored component).
    alone = evaluate_split(cands[best_single].score_fn("test"), data, "test")["ndcg@20"]
    assert evaluate_split(blend_score_fn(cands, strict, "test"), data, "test")["ndcg@20"] == pytest.approx(alone,
                                                                                                         abs=1e-9)
    assert strict.mixture == free.mixture and strict.mixture_valid == free.mixture_valid


def test_blend_bundle_scores_are_the_weighted_sum_of_its_components(baseline_bundles, tiny_prepared, tmp_path):
    data = domain_data(tiny_prepared, "ml-100k")
    cands = _candidates(baseline_bundles, tiny_prepared, data)
    fit = fit_blend(cands, data, max_components=3, step=0.25)
    fit.names, fit.weights = ["ease", "itemknn", "gfcf"], [0.5, 0.25, 0.25]  # all three non-zero
    path = export_bundle(tmp_path / "blend", {"ml-100k": blend_domain(cands, fit)}, {"model": "blend"})
    b = load_bundle(path).domains["ml-100k"]
    assert b.kind == "blend" and b.scorer.names == ("ease", "itemknn", "gfcf")
    scorer = DomainScorer(b)
    users = torch.arange(data.n_users)
    want = sum(w * standardise(DomainScorer(c).users(users)) for w, c in zip(fit.weights, b.scorer.components))
    got = scorer.users(users)
    assert float((got - want).abs().max()) < 1e-5
    # The served blend is what the stage evaluates on test (train + valid input for every component).
    evaluated = blend_score_fn(cands, fit, "test")(np.arange(data.n_users))
    assert float((got - evaluated).abs().max()) < 1e-4
    assert evaluate_split(lambda u: scorer.users(torch.from_numpy(u)), data, "test")["ndcg@20"] == pytest.approx(
        evaluate_split(blend_score_fn(cands, fit, "test"), data, "test")["ndcg@20"], abs=1e-6)
    values, _ = scorer.top_k(torch.tensor([0]), 5)
    np.testing.assert_allclose(values.numpy(), torch.topk(got[:1], 5).values.numpy(), atol=1e-5)
    # A blend with a bad weight count is a BundleError on load.
    meta = json.loads((path / "bundle.json").read_text())
    meta["domains"]["ml-100k"]["blend"]["weights"] = [1.0]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="3 components, 3 names and 1 weights"):
        load_bundle(path)


def test_blend_candidates_must_match_the_data(baseline_bundles, tiny_prepared):
    _, _, paths = baseline_bundles
    data = domain_data(tiny_prepared, "amazon-office")
    with pytest.raises(BundleError, match="differ from the data"):
        CandidateScores(load_bundle(paths["ease"]).domains["ml-100k"], data, raw_user_ids(tiny_prepared,
                                                                                            "amazon-office"))


def test_blend_stage_paths_layout(baseline_bundles):
    from m6rec.stages.blend import candidate_paths

    _, _, paths = baseline_bundles
    root = Path(paths["ease"]).parent
    assert candidate_paths([str(root), str(root / "nowhere")]) == sorted(Path(p) for p in paths.values())
    assert candidate_paths([str(paths["gfcf"])]) == [Path(paths["gfcf"])]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_gate_reevaluation_of_row_and_blend_bundles_sees_only_the_protocols_input(baseline_bundles, tiny_prepared,
                                                                                 tmp_path, split):
    """The register stage re-evaluates a bundle on current data (promotion.BundleModel): a row scorer or a blend
    must be scored from the split's input (valid: training rows), not from the bundle's stored train + valid rows,
    or the validation items would be its input and its validation figure would leak."""
    from m6rec.config import ProtocolParams
    from m6rec.evaluation.protocol import evaluate
    from m6rec.promotion import BundleModel

    datas, models, paths = baseline_bundles
    data = datas["ml-100k"]
    raw = raw_user_ids(tiny_prepared, "ml-100k")
    for name in ("itemknn", "ease"):
        gate = evaluate(BundleModel(load_bundle(paths[name]).domains["ml-100k"], data, raw), data, split,
                        ProtocolParams())
        own = evaluate(models[name]["ml-100k"], data, split, ProtocolParams())
        assert gate["ndcg@20"] == pytest.approx(own["ndcg@20"], abs=1e-6)
    cands = _candidates(baseline_bundles, tiny_prepared, data)
    fit = fit_blend(cands, data, max_components=3, step=0.25)
    fit.names, fit.weights = ["ease", "itemknn", "gfcf"], [0.5, 0.25, 0.25]
    path = export_bundle(tmp_path / "blend", {"ml-100k": blend_domain(cands, fit)}, {"model": "blend"})
    gate = evaluate(BundleModel(load_bundle(path).domains["ml-100k"], data, raw), data, split, ProtocolParams())
    assert gate["ndcg@20"] == pytest.approx(evaluate_split(blend_score_fn(cands, fit, split), data, split)["ndcg@20"],
                                            abs=1e-6)
