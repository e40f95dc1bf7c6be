"""The Python API (`m6rec.load`) on a real small bundle: a folder and a registry champion in a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import m6rec
from m6rec import registry, tracking
from m6rec.config import TrackingParams
from m6rec.data.dataset import domain_data
from m6rec.serving.bundle_io import HASH_TAG, content_hash, load_bundle
from m6rec.serving.recommender import Recommender, RequestError
from tests.cli.conftest import DOMAIN


def test_import_is_light():
    code = ("import sys, m6rec; heavy = [m for m in ('torch', 'pandas', 'mlflow', 'bentoml', 'typer') "
            "if m in sys.modules]; print(heavy); assert callable(m6rec.load)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_folder_recommends_lists_of_item_title_score(small_bundle: Path, ml100k_small):
    model = m6rec.load(small_bundle)
    assert model.domains == [DOMAIN]
    data = domain_data(ml100k_small, DOMAIN)
    user = ml100k_small.users.loc[ml100k_small.users["user"] == 0, "raw_user"].item()
    rows = model.recommend(DOMAIN, user, k=7)
    assert len(rows) == 7 and all(set(r) == {"item", "title", "score"} for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    seen = set(data.items["raw_item"].iloc[data.train[0].indices])
    assert not seen & {r["item"] for r in rows}  # the user's training items are excluded
    titles = dict(zip(data.items["raw_item"], data.items["title"], strict=True))
    assert all(r["title"] == titles[r["item"]] for r in rows)
    # The very scoring the service runs: same items and scores as the Recommender on the same bundle.
    want = Recommender(load_bundle(small_bundle)).recommend(DOMAIN, user, 7)
    got_items = [r["item"] for r in rows]
    want_items = [r["item"] for r in want["items"]]
    assert got_items == want_items
    liked = [r["item"] for r in rows[:2]]
    anon = model.recommend_items(DOMAIN, liked, k=5)
    assert len(anon) == 5 and not set(liked) & {r["item"] for r in anon}
    similar = model.similar_items(DOMAIN, rows[0]["item"], k=3)
    assert len(similar) == 3 and rows[0]["item"] not in {r["item"] for r in similar}
    assert np.all(np.diff([r["score"] for r in similar]) <= 1e-6)


def test_load_errors_name_the_input(small_bundle: Path, tmp_path: Path):
    model = m6rec.load(small_bundle)
    with pytest.raises(RequestError, match=r"domain: unknown domain 'books'"):
        model.recommend("books", "1")
    with pytest.raises(RequestError, match=r"item: unknown item id 'nope'"):
        model.similar_items(DOMAIN, "nope")
    with pytest.raises(FileNotFoundError, match=r"not a serving bundle folder"):
        m6rec.load(tmp_path)


def test_load_registry_champion(small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("M6REC_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the store comes from MLFLOW_TRACKING_URI
    settings = TrackingParams()
    with tracking.start_run("register", {}, data_paths=[], settings=settings):
        info = registry.register_model(registry.log_model(small_bundle, "svd8"),
                                       tags={HASH_TAG: content_hash(small_bundle)}, settings=settings)
    registry.set_alias(info.version, settings=settings)
    model = m6rec.load("models:/m6rec@champion")
    assert model.version == str(info.version)
    user = load_bundle(small_bundle).domains[DOMAIN].raw_user[3]
    assert model.recommend(DOMAIN, user, k=5) == m6rec.load(small_bundle).recommend(DOMAIN, user, k=5)
