"""The baselines stage on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from m6rec.config import ProtocolParams
from m6rec.evaluation.metrics import rating_metrics
from m6rec.model_params import BaselinesParams
from m6rec.stages import baselines
from m6rec.training.baselines import run_domain
from tests.data_fixtures import REPO


def test_models_beat_popularity_on_ml100k(ml100k_full, tmp_path: Path):
    cfg = BaselinesParams(mf_epochs=25, mf_eval_every=5, mf_patience=2)
    res, fitted = run_domain(ml100k_full, cfg, ProtocolParams())
    baselines.save_models(tmp_path, fitted, cfg)
    pop = res["mostpop"]["test"]["ndcg@10"]
    assert 0 < pop < 1
    for model in ("itemknn", "puresvd", "gfcf", "bprmf"):
        assert res[model]["test"]["ndcg@10"] > pop, model
    # BPR-MF training improved validation over its random start, and early stopping kept the best epoch.
    assert res["bprmf"]["best_valid"] > 5 * res["bprmf"]["initial_valid"]
    # Rating model: better than predicting the training mean for everyone.
    test = ml100k_full.frames["test"]
    mean_rmse = rating_metrics(np.full(len(test), ml100k_full.frames["train"]["value"].mean()),
                               test["value"].to_numpy())["rmse"]
    assert res["als"]["test"]["rmse"] < 0.9 * mean_rmse
    assert (tmp_path / "bprmf.pt").is_file() and (tmp_path / "puresvd.npz").is_file()


def test_stage_main_writes_metrics_and_plot_per_domain(tiny_prepared_dir: Path, tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["baselines"].update(in_dir=str(tiny_prepared_dir), out_dir=str(tmp_path / "models"),
                               metrics=str(tmp_path / "m.json"), plot=str(tmp_path / "p.json"),
                               bundle=str(tmp_path / "bundle"), bundles=str(tmp_path / "bundles"),
                               ease_lambdas=[50.0, 200.0],
                               domains=["ml-latest-small", "lastfm-hetrec2011"], mf_epochs=2, mf_eval_every=1)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert baselines.main(["--params", str(path)]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"ml-latest-small", "lastfm-hetrec2011"}
    assert set(metrics["ml-latest-small"]) == {"mostpop", "itemknn", "puresvd", "gfcf", "bprmf", "ease",
                                                  "als"}
    assert "als" not in metrics["lastfm-hetrec2011"]  # implicit feedback has no ratings to predict
    for split in ("valid", "test"):
        m = metrics["lastfm-hetrec2011"]["bprmf"][split]
        assert {"recall@10", "ndcg@20", "hit@20", "mrr", "coverage@10"} <= set(m)
        assert 0 <= m["ndcg@20"] <= 1
    rows = json.loads((tmp_path / "p.json").read_text())
    assert {r["model"] for r in rows} >= {"ml-latest-small/bprmf", "lastfm-hetrec2011/mostpop"}
    assert (tmp_path / "models" / "ml-latest-small" / "bprmf.pt").is_file()
    # The BPR-MF serving bundle scores exactly like the trained model's metrics say.
    from m6rec.serving.bundle_io import load_bundle

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.meta["model"] == "bprmf"
    assert set(bundle.domains) == {"ml-latest-small", "lastfm-hetrec2011"}
    assert bundle.meta["metrics"]["lastfm-hetrec2011"]["bprmf"]["test"] == metrics["lastfm-hetrec2011"]["bprmf"]["test"]
    # Every ranking model has its own bundle, every domain in it: bundles/<model>/, meta model = <model>.
    kinds = {"mostpop": "popularity", "itemknn": "itemitem", "puresvd": "dot", "gfcf": "graphfilter",
             "bprmf": "dot", "ease": "itemitem"}
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == sorted(kinds)
    for name, kind in kinds.items():
        b = load_bundle(tmp_path / "bundles" / name)
        assert b.meta["model"] == name and b.meta["stage"] == "baselines"
        assert {d.kind for d in b.domains.values()} == {kind}
        assert b.meta["metrics"]["ml-latest-small"][name]["test"] == metrics["ml-latest-small"][name]["test"]
    assert metrics["ml-latest-small"]["ease"]["lambda"] in (50.0, 200.0)
    # And the run is in MLflow with its metrics.
    import mlflow

    runs = mlflow.search_runs(experiment_names=["m6rec"], filter_string="tags.stage = 'baselines'")
    assert len(runs) >= 1
    assert "metrics.lastfm-hetrec2011.test.ndcg_20" in runs.columns  # readable final figures, a run per model
    stage_run = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    # Every model's bundle is a pyfunc model of the stage run (so its registry version leads to that run).
    from m6rec import registry
    from m6rec.config import TrackingParams
    from m6rec.serving.bundle_io import content_hash

    for name in kinds:
        found = registry.find_logged_model(content_hash(tmp_path / "bundles" / name), settings=TrackingParams())
        assert found is not None and found[1] == stage_run["run_id"], name
    assert {"baselines/bprmf", "baselines/itemknn"} <= set(runs["tags.mlflow.runName"])
