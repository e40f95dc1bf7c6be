"""Data-parallel pretraining: the stage under `torchrun --nproc_per_node=2` (gloo, CPU) reproduces the single-process
run, and without torchrun nothing distributed happens. Small real slice: ml-100k, 80 users, no text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from m6rec.graph.build import load_graph
from m6rec.model_params import PretrainParams
from m6rec.stages import graph as graph_stage
from m6rec.stages import pretrain as pretrain_stage
from m6rec.training import pretrain as pretraining
from m6rec.training.checkpoint import load_checkpoint
from m6rec.training.distributed import DistEnv, init_distributed, shard, world
from tests.data_fixtures import REPO, mirror_dir

TORCHRUN = Path(sys.executable).parent / "torchrun"
ATOL = 1e-4


def _write_params(root: Path, run: str) -> Path:
    """Params of one pretrain run writing under root/run; the prepared data and graph are shared."""
    params = {
        "protocol": {"ks": [10, 20], "batch_users": 512, "select_metric": "ndcg@20"},
        "tracking": {},  # defaults; the store comes from MLFLOW_TRACKING_URI
        "graph": {"in_dir": str(root / "validated"), "out_dir": str(root / "graph"),
                  "metrics": str(root / "metrics" / "graph.json"), "domains": ["ml-100k"]},
        "pretrain": {"in_dir": str(root / "validated"), "graph_dir": str(root / "graph"),
                     "embeddings_dir": str(root / "embeddings"), "out_dir": str(root / run / "models"),
                     "metrics": str(root / run / "metrics.json"), "plot": str(root / run / "plot.json"),
                     "bundle": str(root / run / "bundle"), "use_text": False, "embedding_dim": 16,
                     "num_layers": 2, "epochs": 2,
                     # An odd batch size: shards of unequal length, and a last batch of another size.
                     "batch_size": 1001, "lr": 0.01, "eval_every": 1, "patience": 10},
    }
    path = root / f"params-{run}.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same pretrain stage run as one process (in-process main) and under torchrun with 2 gloo processes."""
    from m6rec.config import PrepareParams
    from m6rec.data.prepare import prepare_datasets as run

    root = tmp_path_factory.mktemp("pretrain_ddp")
    run(mirror_dir(), root / "validated", REPO / "config" / "datasets.yaml",
        PrepareParams(domains=("ml-100k",), max_users=80))
    single, ddp = _write_params(root, "single"), _write_params(root, "ddp")
    assert graph_stage.main(["--params", str(single)]) == 0

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    saved = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        t0 = time.perf_counter()
        assert pretrain_stage.main(["--params", str(single)]) == 0
        single_s = time.perf_counter() - t0
    finally:
        os.environ.update(saved)

    env.update(OMP_NUM_THREADS="1", M6REC_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{root / 'ddp-mlflow.db'}",
               PYTHONPATH=str(REPO))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "m6rec.stages.pretrain", "--params", str(ddp)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    ddp_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"root": root, "single_s": single_s, "ddp_s": ddp_s, "log": proc.stderr}


def _load(root: Path, run: str) -> tuple[dict, dict, dict, list]:
    model, info = load_checkpoint(root / run / "models" / pretraining.CHECKPOINT)
    metrics = json.loads((root / run / "metrics.json").read_text())
    plot = json.loads((root / run / "plot.json").read_text())
    return model.state_dict(), info, metrics, plot


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(runs: dict):
    root = runs["root"]
    w1, info1, m1, plot1 = _load(root, "single")
    w2, info2, m2, plot2 = _load(root, "ddp")
    assert set(w1) == set(w2)
    diff = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
    print(f"single {runs['single_s']:.1f}s, torchrun x2 {runs['ddp_s']:.1f}s, max |dw| {diff:.2e}")
    assert diff < ATOL
    # Training moved the weights far more than the tolerance: the match is not two untrained models.
    init = pretraining.build_model(load_graph(root / "graph"),
                                   PretrainParams(use_text=False, embedding_dim=16, num_layers=2), None)
    moved = float((init.user_emb.weight.detach() - w1["user_emb.weight"]).abs().max())
    assert moved > 100 * ATOL

    fit1, fit2 = info1["meta"]["fit"], info2["meta"]["fit"]
    assert fit2["world_size"] == 2 and "world_size" not in fit1
    assert fit1["epochs"] == fit2["epochs"] == 2 and fit1["best_epoch"] == fit2["best_epoch"]
    # Same curve: the DDP loss is all-reduced to the whole batch's loss; validation ran once, on rank 0.
    for r1, r2 in zip(fit1["curve"], fit2["curve"], strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
        assert r2["valid_metric"] == pytest.approx(r1["valid_metric"], abs=1e-4)
    assert [r["epoch"] for r in plot1] == [r["epoch"] for r in plot2] == [1, 2]
    for split in ("valid", "test"):
        for key, v in m1["ml-100k"]["lightgcn"][split].items():
            assert m2["ml-100k"]["lightgcn"][split][key] == pytest.approx(v, abs=1e-3), (split, key)
    # Only rank 0 wrote outputs and logged: one set of files, one "pretrain done" line.
    assert runs["log"].count("pretrain done") == 1
    assert (root / "ddp" / "bundle" / "bundle.json").is_file()


@pytest.mark.slow
def test_ddp_run_is_tagged_in_mlflow(runs: dict):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{runs['root'] / 'ddp-mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 1  # rank 1 never talked to MLflow
    assert found[0].data.tags["world_size"] == "2" and found[0].info.status == "FINISHED"


def test_without_torchrun_nothing_is_distributed(monkeypatch: pytest.MonkeyPatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed() == DistEnv() and not torch.distributed.is_initialized() and world() == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() == DistEnv() and not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed()


def test_shards_are_contiguous_and_cover_the_batch():
    batch = (torch.arange(7), torch.arange(7) * 10, torch.arange(7) * 100)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [len(p[0]) for p in parts] == [3, 2, 2]
    for i, t in enumerate(batch):
        assert torch.equal(torch.cat([p[i] for p in parts]), t)
    assert torch.equal(parts[1][2], torch.tensor([300, 400]))
    assert [len(shard(batch, r, 8)[0]) for r in range(8)] == [1] * 7 + [0]
    with pytest.raises(ValueError, match="rank"):
        shard(batch, 2, 2)
    with pytest.raises(ValueError, match="length"):
        shard((torch.arange(3), torch.arange(4)), 0, 2)
