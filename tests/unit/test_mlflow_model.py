"""The bundle as an MLflow pyfunc model, logged from the training run, on a real sqlite store (no mocks).

``mlflow.pyfunc.load_model("models:/m6rec@champion")`` and ``mlflow models predict`` (the real CLI, a fresh
process) must answer what the bundle itself answers through the service's recommender.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from m6rec import mlflow_model, registry, tracking
from m6rec.config import TrackingParams
from m6rec.serving.bundle_io import content_hash, export_bundle, load_bundle
from m6rec.serving.recommender import Recommender
from tests.serving.svd_bundles import svd_bundle

SETTINGS = TrackingParams()
DOMAINS = ["ml-100k", "amazon-office"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, tiny_prepared):
    """A 'training' run that logs its bundle with log_bundle_model; the version registered from that run is
    @champion."""
    root = tmp_path_factory.mktemp("pyfunc")
    bundle = export_bundle(root / "bundle", svd_bundle(tiny_prepared, DOMAINS, dim=8), {
        "model": "svd8", "data_version": "v",
        "metrics": {d: {"svd8": {"valid": {"ndcg@20": 0.25, "recall@20": 0.5, "ndcg@10": 0.2},
                                 "test": {"ndcg@20": 0.125}}} for d in DOMAINS}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("M6REC_ARTIFACT_ROOT", raising=False)
        mp.chdir(root)
        with tracking.start_run("baselines", {"baselines": {"dim": 8}}, settings=SETTINGS) as run_id:
            for epoch in range(3):
                tracking.log_epoch({"ml-100k.svd8.loss": 1.0 / (epoch + 1)}, step=epoch)
            uri = registry.log_bundle_model(bundle, tiny_prepared)
        version = registry.register_model(uri, "m6rec", tags={registry.TAG_HASH: content_hash(bundle)},
                                          settings=SETTINGS)
        registry.set_alias(version.version, "m6rec", settings=SETTINGS)
        yield {"root": root, "bundle": bundle, "run_id": run_id, "uri": uri, "version": version}


def expected(bundle: Path, domain: str, user: str, k: int) -> list[tuple[str, float]]:
    answer = Recommender(load_bundle(bundle)).recommend(domain, user, k)
    return [(r["item"], r["score"]) for r in answer["items"]]


def test_version_leads_to_the_training_run(logged):
    import mlflow

    assert logged["uri"] == f"runs:/{logged['run_id']}/model"
    assert logged["version"].run_id == logged["run_id"]
    run = mlflow.MlflowClient().get_run(logged["run_id"])
    assert run.data.params["baselines.dim"] == "8"
    assert run.data.tags[registry.TAG_HASH] == content_hash(logged["bundle"])
    # Few readable final figures (tracking.metrics x splits x domains), not a flattened dump.
    assert run.data.metrics["ml-100k.valid.ndcg_20"] == 0.25
    assert run.data.metrics["amazon-office.test.ndcg_20"] == 0.125
    assert "ml-100k.valid.ndcg_10" not in run.data.metrics  # not a headline figure
    curve = mlflow.MlflowClient().get_metric_history(logged["run_id"], "ml-100k.svd8.loss")
    assert [m.step for m in curve] == [0, 1, 2]
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"ml-100k/train", "ml-100k/valid", "ml-100k/test", "amazon-office/train"} <= inputs
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_signature_and_input_example(logged):
    import mlflow

    info = mlflow.models.get_model_info("models:/m6rec@champion")
    assert "python_function" in info.flavors
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["domain", "user", "k", "items"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["domain", "user", "item", "title", "score",
                                                                    "rank"] == mlflow_model.OUTPUT_COLUMNS
    assert mlflow_model.ARTIFACT == registry.MODEL_BUNDLE_ARTIFACT
    local = mlflow.artifacts.download_artifacts("models:/m6rec@champion")
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert list(example.columns) == ["domain", "user", "k"] and example["domain"][0] in DOMAINS


def test_load_model_recommends_what_the_bundle_does(logged):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/m6rec@champion")
    bundle = load_bundle(logged["bundle"])
    user = bundle.domains["ml-100k"].raw_user[3]
    anon = list(bundle.domains["amazon-office"].raw_item[:3])
    out = model.predict(pd.DataFrame({"domain": ["ml-100k", "amazon-office", "ml-100k"],
                                      "user": [user, "", "not-a-user"], "k": [5, 4, 3],
                                      "items": [None, anon, None]}))
    first = out[(out["domain"] == "ml-100k") & (out["user"] == user)]
    assert list(first["rank"]) == [1, 2, 3, 4, 5]
    want = expected(logged["bundle"], "ml-100k", user, 5)
    assert list(first["item"]) == [i for i, _ in want]
    assert list(first["score"]) == pytest.approx([s for _, s in want], rel=1e-6)
    anon_rows = out[out["domain"] == "amazon-office"]
    items = Recommender(bundle).recommend_items("amazon-office", anon, k=4)
    assert list(anon_rows["item"]) == [r["item"] for r in items["items"]]
    unknown = out[out["user"] == "not-a-user"]  # popularity fallback, as the service
    assert list(unknown["item"]) == [r["item"] for r in Recommender(bundle).recommend("ml-100k", "not-a-user", 3)["items"]]
    with pytest.raises(Exception, match="row 0: domain"):
        model.predict(pd.DataFrame({"domain": ["nope"], "user": [user], "k": [3]}))


def test_mlflow_models_predict_cli(logged, tmp_path):
    bundle = load_bundle(logged["bundle"])
    user = bundle.domains["ml-100k"].raw_user[7]
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"dataframe_records": [{"domain": "ml-100k", "user": user, "k": 5}]}))
    out = tmp_path / "out.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{logged['root'] / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    done = subprocess.run([str(mlflow_cli), "models", "predict", "-m", "models:/m6rec@champion", "-i", str(request),
                           "-o", str(out), "--env-manager", "local"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["predictions"]
    want = expected(logged["bundle"], "ml-100k", user, 5)
    assert [r["item"] for r in rows] == [i for i, _ in want]
    assert [r["score"] for r in rows] == pytest.approx([s for _, s in want], rel=1e-6)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]


def test_loads_in_a_fresh_process_without_the_project_on_the_path(logged, tmp_path):
    """code_paths carries the m6rec package: a process with neither PYTHONPATH nor the project cwd loads it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{logged['root'] / 'mlflow.db'}"
    code = ("import mlflow, pandas as pd, sys; m = mlflow.pyfunc.load_model('models:/m6rec@champion'); "
            "import m6rec; assert 'code' in m6rec.__file__, m6rec.__file__; "
            "print(len(m.predict(pd.DataFrame({'domain': ['ml-100k'], 'user': ['x'], 'k': [2]}))))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "2"
