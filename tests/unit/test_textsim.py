"""The text-similarity baseline: a hand computation, recency weighting, text-only items and its dot export."""

from __future__ import annotations

import numpy as np
import pytest

from m6rec.models.textsim import TextSimilarity, domain_text_vectors

# Four items in 3-d: two "office" items pointing one way, a "music" item another, one item without text.
TEXT = np.array([[1.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 0, v / np.maximum(n, 1e-12), 0.0)


def test_scores_equal_the_hand_computation():
    model = TextSimilarity({"d": TEXT}, max_len=3)
    history = np.array([[-1, 0, 1], [-1, -1, 2], [-1, -1, -1], [3, 3, 0]])
    got = model.full_scores("d", np.arange(4), history).numpy()
    items = unit(TEXT)
    expect = np.stack([
        unit(items[0] + items[1]) @ items.T,  # plain mean of the two office items
        items[2] @ items.T,
        np.zeros(4),  # no history: all zeros
        items[0] @ items.T,  # the text-less item adds nothing to the mean
    ])
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert got[2].tolist() == [0.0] * 4 and got[:, 3].tolist() == [0.0] * 4  # no text: score 0


def test_recency_decay_weighs_recent_items_more():
    history = np.array([[2, 0]])  # music long ago, office just now
    plain = TextSimilarity({"d": TEXT}, max_len=2).full_scores("d", np.arange(1), history).numpy()[0]
    recent = TextSimilarity({"d": TEXT}, max_len=2, decay=0.5).full_scores("d", np.arange(1), history).numpy()[0]
    items = unit(TEXT)
    np.testing.assert_allclose(recent, unit(items[0] + 0.5 * items[2]) @ items.T, atol=1e-6)
    assert recent[0] > plain[0] and recent[2] < plain[2]


def test_export_reproduces_the_scores_and_scores_new_items_by_text():
    model = TextSimilarity({"d": TEXT}, max_len=3)
    history = np.array([[-1, 0, 1], [-1, -1, 2]])
    model.set_histories("d", history)
    spec = model.export("d")
    np.testing.assert_allclose(spec.user_vectors @ spec.item_vectors.T,
                               model.full_scores("d", np.arange(2), history).numpy(), atol=1e-6)
    weight, bias = spec.text_projection
    new_item = np.array([[0.0, 5.0, 0.0]], dtype=np.float32)  # a text-only item never interacted with
    user0 = unit(unit(TEXT[0]) + unit(TEXT[1]))
    np.testing.assert_allclose(spec.user_vectors @ (unit(new_item) @ weight + bias).T, [[user0 @ unit(new_item)[0]],
                                                                                         [0.0]], atol=1e-6)


def test_errors_name_the_bad_input():
    model = TextSimilarity({"d": TEXT})
    with pytest.raises(KeyError, match="domain 'x'"):
        model.full_scores("x", np.arange(1), np.array([[0]]))
    with pytest.raises(ValueError, match="has 4 items"):
        model.full_scores("d", np.arange(1), np.array([[9]]))
    with pytest.raises(ValueError, match="decay"):
        TextSimilarity({"d": TEXT}, decay=0.0)


def test_domain_slices_follow_the_embedding_meta():
    emb = np.arange(12, dtype=np.float16).reshape(6, 2)
    meta = {"domains": ["a", "b"], "item_offsets": {"a": 0, "b": 4}, "n_items": {"a": 4, "b": 2}}
    parts = domain_text_vectors(emb, meta)
    assert parts["a"].shape == (4, 2) and parts["b"].tolist() == [[8.0, 9.0], [10.0, 11.0]]
    assert parts["b"].dtype == np.float32
    with pytest.raises(KeyError, match="no domain"):
        domain_text_vectors(emb, meta, ["c"])
