"""The multitask stage on real tiny data, from a real pretrained checkpoint: prepare (ml-100k and amazon-office,
60 users each) -> graph -> text embeddings (a TF-IDF encoder of the real item texts, to keep the test fast) ->
pretrain -> multitask, each through its own code."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from m6rec.config import ConfigError, ProtocolParams
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.sequences import split_histories
from m6rec.evaluation.history import evaluate_model
from m6rec.graph.build import load_graph
from m6rec.model_params import MultitaskParams, TrainParams
from m6rec.stages import multitask
from m6rec.training import assembly
from m6rec.training.checkpoint import load_checkpoint
from m6rec.training.transfer import train_variants
from tests.data_fixtures import REPO, mirror_dir

DOMAINS = ("ml-100k", "amazon-office")
FAST = {"max_len": 20, "n_interests": 2, "hidden": 16, "examples_per_user": 10, "negatives": 64, "batch_size": 128,
        "epochs": 2, "valid_users": 0, "explain_users": 2}


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainParams)}


def nest_train(flat: dict) -> dict:
    """A flat dict of section keys with the training ones moved under ``train`` (as params.yaml nests them)."""
    out = {k: v for k, v in flat.items() if k not in TRAIN_KEYS}
    train = {k: v for k, v in flat.items() if k in TRAIN_KEYS}
    return {**out, "train": train} if train else out


def mt_params(flat: dict) -> MultitaskParams:
    body = nest_train(flat)
    return MultitaskParams(**{**body, "train": TrainParams(**body.get("train", {}))})


def tfidf_encode(texts: list[str]) -> np.ndarray:
    """A real (if simple) sentence encoder: TF-IDF + truncated SVD over the texts given, unit length."""
    vecs = TruncatedSVD(32, random_state=0).fit_transform(TfidfVectorizer(min_df=2).fit_transform(texts))
    vecs = vecs.astype(np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)


def params_for(root: Path, multitask_domains: list[str], finetune: dict | None = None) -> Path:
    params = {
        "protocol": {"ks": [10, 20], "batch_users": 512, "select_metric": "ndcg@20"},
        "tracking": {},  # defaults; the store comes from MLFLOW_TRACKING_URI
        "graph": {"in_dir": str(root / "validated"), "out_dir": str(root / "graph"),
                  "metrics": str(root / "metrics" / "graph.json"), "domains": list(DOMAINS)},
        "pretrain": {"in_dir": str(root / "validated"), "graph_dir": str(root / "graph"),
                     "embeddings_dir": str(root / "embeddings"), "out_dir": str(root / "pretrain"),
                     "metrics": str(root / "metrics" / "pretrain.json"), "plot": str(root / "plots" / "pretrain.json"),
                     "embedding_dim": 16, "epochs": 3, "batch_size": 2048, "lr": 0.01, "eval_every": 3},
        "multitask": {"in_dir": str(root / "validated"), "pretrain_dir": str(root / "pretrain"),
                      "graph_dir": str(root / "graph"), "out_dir": str(root / "multitask"),
                      "metrics": str(root / "metrics" / "multitask.json"),
                      "plot": str(root / "plots" / "multitask.json"),
                      "explanations": str(root / "reports" / "explanations.md"),
                      "bundle": str(root / "multitask" / "bundle"), "domains": multitask_domains, **nest_train(FAST)},
    }
    if finetune is not None:
        params["finetune"] = {"in_dir": str(root / "validated"), "pretrain_dir": str(root / "pretrain"),
                              "graph_dir": str(root / "graph"), "multitask_dir": str(root / "multitask"),
                              "out_dir": str(root / "finetune"), "metrics": str(root / "metrics" / "finetune.json"),
                              "plot": str(root / "plots" / "finetune.json"),
                              "source_bundle": str(root / "multitask" / "bundle"),
                              "bundle": str(root / "finetune" / "bundle"), **nest_train(finetune)}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def build_pretrained(root: Path) -> Path:
    """Prepared data, graph, text embeddings and a pretrained checkpoint under `root` (built once per session)."""
    from m6rec.config import PrepareParams, TextEmbeddingsParams
    from m6rec.data.prepare import prepare_datasets as run
    from m6rec.stages import graph as graph_stage
    from m6rec.stages import pretrain as pretrain_stage
    from m6rec.text.embeddings import embed_items, save_embeddings

    if (root / "pretrain" / "model.pt").is_file():
        return root
    run(mirror_dir(), root / "validated", REPO / "config" / "datasets.yaml",
        PrepareParams(domains=DOMAINS, max_users=60))
    path = params_for(root, list(DOMAINS))
    assert graph_stage.main(["--params", str(path)]) == 0
    cfg = TextEmbeddingsParams(in_dir=str(root / "validated"), out_dir=str(root / "embeddings"))
    vecs, mask, meta = embed_items(load_prepared(root / "validated"), cfg, encode=tfidf_encode)
    save_embeddings(root / "embeddings", vecs, mask, meta)
    assert pretrain_stage.main(["--params", str(path)]) == 0
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pretrained(tmp_path_factory.getbasetemp() / "m6rec-pretrained")


@pytest.fixture(scope="module")
def stage_run(pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multitask")
    for name in ("validated", "graph", "pretrain"):
        (root / name).symlink_to(pretrained / name, target_is_directory=True)
    path = params_for(root, list(DOMAINS))
    assert multitask.main(["--params", str(path)]) == 0
    return root


def test_item_inputs_reproduce_the_pretrained_item_vectors(pretrained: Path):
    lightgcn, info = load_checkpoint(pretrained / "pretrain" / "model.pt")
    lightgcn.set_graph(load_graph(pretrained / "graph").adj)
    with torch.no_grad():
        _, want = lightgcn()
    items = assembly.load_pretrained(pretrained / "pretrain", pretrained / "graph")
    assert items.text_dim == 32 and items.dim == 16 and items.source_domains == DOMAINS
    prepared = load_prepared(pretrained / "validated")
    datas = {d: domain_data(prepared, d) for d in DOMAINS}
    model = assembly.build_model(items, datas, "attention", {"retrieval": 1.0},
                                 assembly.architecture(mt_params(FAST)), seed=0)
    offsets = info["meta"]["item_offsets"]
    for k, d in enumerate(DOMAINS):
        got = model.item_vectors(k).detach()
        torch.testing.assert_close(got, want[offsets[d]: offsets[d] + datas[d].n_items], rtol=1e-4, atol=1e-5)
        assert items.text[d].any(axis=1).all()  # every item of these domains has text


def test_stage_writes_metrics_for_every_domain_and_variant(stage_run: Path):
    metrics = json.loads((stage_run / "metrics" / "multitask.json").read_text())
    assert set(metrics) == set(DOMAINS)
    for d in DOMAINS:
        assert set(metrics[d]) == set(assembly.VARIANTS)
        for variant, res in metrics[d].items():
            for split in ("valid", "test"):
                m = res[split]
                assert {"recall@20", "ndcg@20", "ndcg@10", "mrr", "auc"} <= set(m), (d, variant, split)
                assert 0 <= m["ndcg@20"] <= 1 and 0 < m["auc"] < 1 and m["n_users"] > 0
                # RMSE exactly where there are ratings: rating head (mt) or calibrated score (st)
                assert ("rmse" in m) == (d == "ml-100k")
            assert "fit_s" not in res and res["best_epoch"] >= 0  # durations: in reports/timings, not the out
    timings = json.loads((stage_run / "reports" / "timings" / "multitask.json").read_text())
    assert all(t["fit_s"] > 0 for d in DOMAINS for t in timings[d].values())
    rows = json.loads((stage_run / "plots" / "multitask.json").read_text())
    assert {r["model"] for r in rows} == {f"{d}/{v}" for d in DOMAINS for v in assembly.VARIANTS}


def test_saved_model_reloads_and_reproduces_its_metrics(stage_run: Path):
    model, info = load_checkpoint(stage_run / "multitask" / assembly.CHECKPOINT)
    assert info["class"] == "m6rec.models.multitask.MultiTaskRecommender"
    assert info["meta"]["variant"] == "attention_mt" and info["meta"]["domains"] == list(DOMAINS)
    assert info["params"]["multitask"]["train"]["epochs"] == FAST["epochs"]
    assert model.encoder.pooling == "attention" and model.task_weights["rating"] > 0
    cfg = mt_params(FAST)
    prepared = load_prepared(stage_run / "validated")
    datas = {d: domain_data(prepared, d) for d in DOMAINS}
    again = evaluate_model(model, datas, ("test",), ProtocolParams(batch_users=512), cfg.train)
    written = json.loads((stage_run / "metrics" / "multitask.json").read_text())
    for d in DOMAINS:
        for key, value in again[d]["test"].items():
            assert value == pytest.approx(written[d]["attention_mt"]["test"][key], abs=1e-6), (d, key)


def test_explanations_name_real_history_items_with_their_weights(stage_run: Path):
    text = (stage_run / "reports" / "explanations.md").read_text(encoding="utf-8")
    prepared = load_prepared(stage_run / "validated")
    for d in DOMAINS:
        assert f"## {d}" in text
    section = text.split("## ml-100k")[1].split("## ")[0]
    rows = [r for r in section.splitlines() if re.match(r"^\| \d+ \|", r)]
    assert len(rows) == FAST["explain_users"] * 3  # explain_top recommendations per user
    titles = set(prepared.items.loc[prepared.items["domain"] == "ml-100k", "title"])
    for row in rows:
        because = row.rsplit(" | ", 1)[1].rstrip(" |")
        parts = re.findall(r"(.+?) \((0\.\d\d|1\.00)\)(?:; |$)", because)
        assert len(parts) == 3, row
        assert all(name in titles for name, _ in parts), row
        weights = [float(w) for _, w in parts]
        assert weights == sorted(weights, reverse=True) and sum(weights) <= 1.0 + 1e-6


def test_bad_variant_names_are_refused(pretrained: Path):
    prepared = load_prepared(pretrained / "validated")
    datas = {"amazon-office": domain_data(prepared, "amazon-office")}
    items = assembly.load_pretrained(pretrained / "pretrain", pretrained / "graph")
    with pytest.raises(ConfigError, match="unknown variant"):
        cfg = MultitaskParams(variants=("attention_mtl",), save_variant="attention_mtl")
        train_variants(items, datas, cfg, ProtocolParams(), progress=False)
    with pytest.raises(ConfigError, match="save_variant"):
        train_variants(items, datas, MultitaskParams(variants=("mean_st",)), ProtocolParams(), progress=False)


def test_variants_in_worker_processes_give_what_one_process_gives(pretrained: Path):
    prepared = load_prepared(pretrained / "validated")
    datas = {d: domain_data(prepared, d) for d in ("amazon-office", "ml-100k")}
    items = assembly.load_pretrained(pretrained / "pretrain", pretrained / "graph")
    cfg = MultitaskParams(variants=("mean_st", "attention_mt", "mean_mt"), save_variant="attention_mt",
                          train=TrainParams(epochs=1, examples_per_user=5, negatives=32, batch_size=128,
                                            valid_users=0))
    model_one, one, explained_one = train_variants(items, datas, cfg, ProtocolParams(), progress=False, workers=1)
    model_two, two, explained_two = train_variants(items, datas, cfg, ProtocolParams(), progress=False, workers=2)

    def strip(metrics: dict) -> dict:  # timings aside
        return {d: {v: {k: x for k, x in r.items() if not k.endswith("_s")} for v, r in variants.items()}
                for d, variants in metrics.items()}

    assert strip(two) == strip(one) and list(two["ml-100k"]) == list(cfg.variants)
    assert explained_two == explained_one
    for name, tensor in model_one.state_dict().items():
        assert torch.equal(tensor, model_two.state_dict()[name]), name


def test_serving_bundle_scores_and_explains_like_the_model(stage_run: Path):
    """The exported bundle, served in-process, reproduces the model's test-time scores and attention exactly."""
    from m6rec.serving.bundle_io import load_bundle
    from m6rec.serving.recommender import Recommender

    bundle = load_bundle(stage_run / "multitask" / "bundle")
    written = json.loads((stage_run / "metrics" / "multitask.json").read_text())
    assert bundle.meta["model"] == "attention_mt" and set(bundle.domains) == set(DOMAINS)
    assert bundle.meta["metrics"]["ml-100k"]["attention_mt"]["valid"] == written["ml-100k"]["attention_mt"]["valid"]
    model, _ = load_checkpoint(stage_run / "multitask" / assembly.CHECKPOINT)
    prepared = load_prepared(stage_run / "validated")
    rec = Recommender(bundle)
    for d in DOMAINS:
        data = domain_data(prepared, d)
        b = bundle.domains[d]
        assert b.kind == "history" and b.n_users == data.n_users and b.text_projection is not None
        k = model.domain_index(d)
        hist = torch.from_numpy(split_histories(data, model.encoder.max_len)["test"])
        users = torch.nonzero((hist >= 0).sum(1) >= 3).view(-1)[:5]
        scored = model.score(k, hist[users])
        for row, u in enumerate(users.tolist()):
            out = rec.recommend(d, b.raw_user[u], k=5)
            want = scored.scores[row].clone()
            seen = torch.from_numpy((data.train + data.valid)[u].indices.astype(np.int64))
            want[seen] = float("-inf")
            scores = [r["score"] for r in out["items"]]
            np.testing.assert_allclose(scores, torch.topk(want, 5).values.numpy(), rtol=1e-5, atol=1e-5)
            top = b.raw_item.index(out["items"][0]["item"])
            why = rec.explain(d, b.raw_user[u], out["items"][0]["item"], n=50)
            assert why["method"] == "attention" and why["score"] == pytest.approx(scores[0], abs=1e-5)
            attention = model.predict_pairs(k, hist[u:u + 1], torch.tensor([top]))["attention"][0]
            expected = {int(hist[u, j]): float(attention[j]) for j in torch.nonzero(hist[u] >= 0).view(-1)}
            got = {b.raw_item.index(h["item"]): h["weight"] for h in why["history"]}
            assert got == pytest.approx(expected, abs=1e-6) and sum(got.values()) == pytest.approx(1.0, abs=1e-5)
