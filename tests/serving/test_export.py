"""The exporter: model exports + the domain's data -> serving bundles, as every stage builds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m6rec.data.dataset import domain_data
from m6rec.models.base import DotExport, NotServableError, SingleDomain
from m6rec.serving.bundle import TextProjection, meta_metrics
from m6rec.serving.bundle_io import export_bundle, load_bundle, read_meta
from m6rec.serving.bundle_scorers import BundleError
from m6rec.serving.export import (
    bundle_meta,
    domain_bundle,
    export_domains,
    export_model,
    fit_text_projection,
    make_domain_bundle,
    merge_bundles,
    raw_user_ids,
)
from tests.serving.conftest import HISTORY_DOMAIN
from tests.serving.history_bundles import attention_domain, gathered_export
from tests.serving.svd_bundles import svd_domain, svd_vectors

DOMAINS = ("ml-100k", "amazon-office")
RESULTS = {"valid": {"ndcg@20": 0.2}, "test": {"ndcg@20": 0.1}, "cold": {"ndcg@20": 0.05}, "fit_s": 3.0}


class DotModel(SingleDomain):
    """A fitted single-domain dot-product model (what BPR-MF exports), here SVD vectors of the train matrix."""

    name = "svd"

    def __init__(self, data, dim: int = 4, text: np.ndarray | None = None,
                 projection: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.domain = data.name
        self.users, self.items = svd_vectors(data.train, dim)
        self.text, self.projection = text, projection

    def export(self, domain: str) -> DotExport:
        self.check_domain(domain)
        return DotExport(item_vectors=self.items, user_vectors=self.users, item_text_vectors=self.text,
                         text_projection=self.projection)


def same_folders(a: Path, b: Path) -> None:
    """Byte-identical bundle folders (bundle.json compared without its creation time)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        if rel.name == "bundle.json":
            strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "created"}  # noqa: E731
            assert strip(a / rel) == strip(b / rel)
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs"


def test_history_export_is_the_models_own_arrays(tiny_prepared, history_model, tmp_path):
    """The model's HistoryExport + the domain's data give, byte for byte, the bundle of the arrays read off the
    model's parts (catalogue vectors, encoder weights, the domain's recency adapter and text)."""
    model, data = history_model
    raw_user = raw_user_ids(tiny_prepared, data.name)
    new = domain_bundle(gathered_export(model, data.name), data, raw_user)
    assert new.kind == "history" and new.scorer.config["n_interests"] == 2  # K as constructed, not K + 1
    meta = {"model": "attention_mt", "data_version": "v"}
    same_folders(export_bundle(tmp_path / "stage", {HISTORY_DOMAIN: attention_domain(tiny_prepared, model, data)},
                               meta),
                 export_bundle(tmp_path / "new", {HISTORY_DOMAIN: new}, meta))


def test_dot_export_is_the_baselines_bundle(tiny_prepared, tmp_path):
    """One single-domain model per domain: the same arrays as make_domain_bundle from the model's factors."""
    datas = {d: domain_data(tiny_prepared, d) for d in DOMAINS}
    models = {d: DotModel(data) for d, data in datas.items()}
    meta = bundle_meta("bprmf", "baselines", {d: RESULTS for d in DOMAINS}, "v")
    path = export_model(tmp_path / "new", models, datas, tiny_prepared, meta)
    old = {d: make_domain_bundle(datas[d], raw_user_ids(tiny_prepared, d), models[d].items, models[d].users)
           for d in DOMAINS}
    same_folders(export_bundle(tmp_path / "old", old, meta), path)
    assert read_meta(path)["metrics"] == {d: {"bprmf": {s: RESULTS[s] for s in ("valid", "test", "cold")}}
                                          for d in DOMAINS}
    with pytest.raises(KeyError, match="amazon-office"):
        export_domains({"ml-100k": models["ml-100k"]}, datas, tiny_prepared)
    with pytest.raises(KeyError, match="fitted on domain 'ml-100k'"):
        export_domains(models["ml-100k"], datas, tiny_prepared)  # one single-domain model for two domains
    with pytest.raises(NotServableError, match="model has no serving export"):
        export_domains(SingleDomain(), datas, tiny_prepared)


def test_text_projection_is_the_models_own_or_fitted(tiny_prepared):
    data = domain_data(tiny_prepared, "ml-100k")
    raw_user = raw_user_ids(tiny_prepared, data.name)
    text = np.random.default_rng(0).standard_normal((data.n_items, 6)).astype(np.float32)
    model = DotModel(data, text=text)
    fitted = domain_bundle(model.export(data.name), data, raw_user, ridge_alpha=0.5)
    popular = np.asarray(data.train.sum(axis=0)).ravel() > 0
    want = fit_text_projection(text, model.items, 0.5, mask=popular)
    np.testing.assert_array_equal(fitted.text_projection.weight, want.weight)
    np.testing.assert_array_equal(fitted.item_text_vectors, text)

    own = (np.ones((6, 4), np.float32), np.zeros(4, np.float32))
    kept = domain_bundle(DotModel(data, text=text, projection=own).export(data.name), data, raw_user)
    np.testing.assert_array_equal(kept.text_projection.weight, own[0])
    # Without item text vectors the domain had no part in the projection's training: none is served.
    assert domain_bundle(DotModel(data, projection=own).export(data.name), data, raw_user).text_projection is None


def test_exports_of_the_wrong_size_name_the_domain(tiny_prepared):
    data = domain_data(tiny_prepared, "amazon-office")
    raw_user = raw_user_ids(tiny_prepared, data.name)
    users, items = svd_vectors(data.train, 4)
    with pytest.raises(BundleError, match=r"amazon-office: the export's item_vectors .* expected \[\d+, d\]"):
        domain_bundle(DotExport(items[:-1], users), data, raw_user)
    with pytest.raises(BundleError, match="amazon-office: the export's user_vectors"):
        domain_bundle(DotExport(items, users[:-1]), data, raw_user)
    with pytest.raises(TypeError, match=r"expected a model export \(m6rec.models.base.Export\), got TextProjection"):
        domain_bundle(TextProjection(np.zeros((2, 2), np.float32), np.zeros(2, np.float32)), data, raw_user)


def test_bundle_meta_schema():
    meta = bundle_meta("lightgcn_text", "pretrain", {"ml-100k": RESULTS}, "v1", encoder="enc",
                       encoder_max_seq_length=None, explainer="similarity")
    assert meta == {"model": "lightgcn_text", "stage": "pretrain", "data_version": "v1",
                    "metrics": {"ml-100k": {"lightgcn_text": {s: RESULTS[s] for s in ("valid", "test", "cold")}}},
                    "encoder": "enc", "encoder_max_seq_length": None, "explainer": "similarity"}
    assert meta_metrics(meta) == meta["metrics"]
    assert "encoder" not in bundle_meta("bprmf", "baselines", {"ml-100k": RESULTS}, "v1")
    with pytest.raises(ValueError, match=r"metrics\['ml-100k'\] has none of the splits"):
        bundle_meta("bprmf", "baselines", {"ml-100k": {"bprmf": RESULTS}}, "v1")  # a whole metrics file
    with pytest.raises(ValueError, match="domains"):
        bundle_meta("bprmf", "baselines", {}, "v1", domains={})


def test_merge_bundles_is_the_finetune_family(tiny_prepared, tmp_path):
    """Source domains (an old-shape meta) plus fine-tuned targets, one replacing a source domain."""
    a, b = svd_domain(tiny_prepared, "ml-100k", 4), svd_domain(tiny_prepared, "amazon-office", 4)
    source = export_bundle(tmp_path / "source", {"ml-100k": a, "amazon-office": b}, {
        "model": "attention_mt", "encoder": "enc", "encoder_max_seq_length": 64,
        "metrics": {"ml-100k": {"valid": {"ndcg@20": 0.3}}, "amazon-office": {"valid": {"ndcg@20": 0.1}}}})
    target, extra = svd_domain(tiny_prepared, "amazon-office", 8), svd_domain(tiny_prepared, "ml-latest-small", 4)
    meta = bundle_meta("attention_mt-finetune-full", "finetune",
                       {"amazon-office": {**RESULTS, "mode": "full"}, "ml-latest-small": RESULTS}, "v2")
    domains, merged = merge_bundles(source, {"amazon-office": target, "ml-latest-small": extra}, meta)
    assert list(domains) == ["ml-100k", "amazon-office", "ml-latest-small"]
    assert domains["amazon-office"] is target and domains["ml-100k"].dim == 4
    name = "attention_mt-finetune-full"
    assert merged["metrics"] == {"ml-100k": {name: {"valid": {"ndcg@20": 0.3}}},
                                 "amazon-office": meta["metrics"]["amazon-office"],
                                 "ml-latest-small": meta["metrics"]["ml-latest-small"]}
    assert (merged["model"], merged["stage"], merged["data_version"]) == (name, "finetune", "v2")
    assert (merged["encoder"], merged["encoder_max_seq_length"]) == ("enc", 64)
    family = load_bundle(export_bundle(tmp_path / "family", domains, merged))
    assert family.domains["amazon-office"].dim == 8 and meta_metrics(family.meta) == merged["metrics"]
    with pytest.raises(BundleError, match="one sentence encoder"):
        merge_bundles(source, {}, {**meta, "encoder": "other"})
