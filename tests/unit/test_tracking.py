"""m6rec.tracking against a real sqlite MLflow store in tmp (no mocks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from m6rec import provenance, registry, tracking
from m6rec.config import TrackingParams, load_params, section
from m6rec.serving.bundle_io import export_bundle, load_bundle
from tests.serving.svd_bundles import svd_bundle

SETTINGS = TrackingParams()  # the defaults: experiment m6rec, mlflow.db, mlartifacts


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One sqlite store for the module (creating the schema takes seconds); cwd is the store's folder."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("M6REC_ARTIFACT_ROOT", raising=False)
        mp.chdir(root)
        yield root


def client():
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(SETTINGS))


def test_import_has_no_side_effects():
    code = "import sys, m6rec.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported at import time'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_default_store_is_sqlite_in_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("M6REC_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("M6REC_ROOT", str(tmp_path))
    uri = tracking.tracking_uri(SETTINGS)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.artifact_root(uri, SETTINGS) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(SETTINGS) == "http://127.0.0.1:5000"
    assert tracking.artifact_root("http://127.0.0.1:5000", SETTINGS) is None


def test_flatten_metrics_nested_and_names():
    nested = {"ml-100k": {"puresvd": {"valid": {"ndcg@20": 0.25, "mrr": 0.125}, "fit_s": 1.5, "note": "x",
                                      "ok": True}},
              "odd:name(1)": 3}
    flat = tracking.flatten_metrics(nested)
    assert flat == {"ml-100k.puresvd.valid.ndcg_at_20": 0.25, "ml-100k.puresvd.valid.mrr": 0.125,
                    "ml-100k.puresvd.fit_s": 1.5, "odd_name_1_": 3.0}
    with pytest.raises(TypeError, match="ml-100k.x"):
        tracking.flatten_metrics({"ml-100k": {"x": [1, 2]}})


def test_flatten_params_nested_lists_and_long_values():
    flat = tracking.flatten_params({"baselines": {"models": ["a", "b"], "dim": 64}, "s": "x" * 7000})
    assert flat["baselines.models"] == '["a", "b"]'
    assert flat["baselines.dim"] == "64"
    assert len(flat["s"]) == 6000


def test_data_version_from_dvc_records_and_content(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "python -m x", "deps": ["data/validated", "src/m6rec/stages/train.py", "data/graph"]}}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "validate": {"cmd": "x", "deps": [{"path": "data/prepared", "md5": "p1.dir"}],
                     "outs": [{"path": "data/validated", "md5": "v1.dir"}]}}}))
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "r1.dir", "path": "data/raw"}]}))
    (tmp_path / ".dvc").mkdir()  # DVC's own folder matches *.dvc too
    assert provenance.data_version(paths=["data/validated"], root=tmp_path) == "v1.dir"
    assert provenance.data_version(paths=["data/raw"], root=tmp_path) == "r1.dir"
    assert provenance.data_version(paths=["data/prepared"], root=tmp_path) == "p1.dir"
    # data/graph is not recorded: its content is hashed, and the version follows the content.
    graph = tmp_path / "data" / "graph"
    graph.mkdir(parents=True)
    (graph / "edges.npy").write_bytes(b"abc")
    v1 = provenance.data_version(stage="train", root=tmp_path)
    assert v1 == provenance.data_version(paths=["data/graph", "data/validated"], root=tmp_path)
    (graph / "edges.npy").write_bytes(b"abd")
    assert provenance.data_version(stage="train", root=tmp_path) != v1
    assert provenance.data_version(paths=["nothing/here"], root=tmp_path) == "missing"
    assert provenance.data_version(stage="no-such-stage", root=tmp_path) == "unknown"


def test_run_logs_params_tags_metrics_artifacts(store):
    (store / "dvc.lock").write_text(yaml.safe_dump({"stages": {"validate": {
        "outs": [{"path": "data/validated", "md5": "feed.dir"}]}}}))
    report = store / "report.json"
    report.write_text('{"a": 1}')
    with tracking.start_run("train_x", {"train_x": {"dim": 64, "lr": 0.01}}, tags={"note": "t"},
                            data_paths=["data/validated"], settings=SETTINGS) as run_id:
        tracking.log_epoch({"loss": 1.0, "valid_ndcg@20": 0.1}, step=0)
        tracking.log_epoch({"loss": 0.5, "valid_ndcg@20": 0.2}, step=1)
        tracking.log_metrics({"ml-100k": {"mf": {"test": {"recall@10": 0.3, "rmse": float("nan")}}}})
        tracking.log_artifact(report)
    c = client()
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train_x.dim": "64", "train_x.lr": "0.01"}
    assert run.data.tags["stage"] == "train_x"
    assert run.data.tags["data_version"] == "feed.dir"
    assert run.data.tags["note"] == "t"
    assert run.data.tags["git_commit"]
    assert [m.value for m in c.get_metric_history(run_id, "loss")] == [1.0, 0.5]
    assert run.data.metrics["valid_ndcg_at_20"] == 0.2
    # A metrics-file dict of one model: its headline figures (tracking.metrics) under readable keys.
    assert "ml-100k.test.recall_20" not in run.data.metrics  # recall@10 is not a headline figure
    assert "ml-100k.test.rmse" not in run.data.metrics  # NaN is not logged
    assert [a.path for a in c.list_artifacts(run_id)] == ["report.json"]
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == "m6rec"
    assert exp.artifact_location == (store / "mlartifacts").resolve().as_uri()
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # not the GenAI traces view


def test_metrics_files_log_few_readable_keys_one_run_per_model(store):
    metrics = {d: {m: {"valid": {"ndcg@20": 0.1 * i, "ndcg@10": 0.0, "recall@20": 0.2, "mrr": 0.3},
                       "test": {"ndcg@20": 0.05 * i, "rmse": 0.9}, "fit_s": 1.0}
                   for i, m in enumerate(("itemknn", "bprmf"), 1)} for d in ("ml-100k", "lastfm-hetrec2011")}
    assert tracking.is_model_metrics(metrics) and not tracking.is_model_metrics({"loss": 1.0})
    with tracking.start_run("baselines", {"baselines": {"dim": 8}}, settings=SETTINGS) as run_id:
        tracking.log_metrics(metrics)
        tracking.log_metrics({"ml-100k": {"bprmf": {"cold": {"ndcg@20": 0.7}}}, "x": {"bprmf": {"cold": {}}}})
    c = client()
    assert c.get_run(run_id).data.metrics == {"ml-100k.cold.ndcg_20": 0.7}  # one model: on the stage run
    children = {r.data.tags["model"]: r for r in c.search_runs(
        [c.get_run(run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")}
    assert sorted(children) == ["bprmf", "itemknn"]
    bpr = children["bprmf"]
    assert bpr.info.run_name == "baselines/bprmf" and bpr.data.params == {"baselines.dim": "8"}
    assert bpr.data.metrics == {
        "ml-100k.valid.ndcg_20": 0.2, "ml-100k.valid.recall_20": 0.2, "ml-100k.test.ndcg_20": 0.1,
        "ml-100k.test.rmse": 0.9, "lastfm-hetrec2011.valid.ndcg_20": 0.2, "lastfm-hetrec2011.valid.recall_20": 0.2,
        "lastfm-hetrec2011.test.ndcg_20": 0.1, "lastfm-hetrec2011.test.rmse": 0.9}


def test_git_dirty_only_for_tracked_code(tmp_path):
    """A fresh clone after `make run`: untracked outputs and DVC's rewritten records are not dirt; code is."""
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("/models/\n")
    for name in ("code.py", "dvc.lock", "data.dvc"):
        (tmp_path / name).write_text("v1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    head = provenance.git_commit(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bundle.json").write_text("{}")  # ignored output
    (tmp_path / "mlflow.db").write_text("x")  # untracked
    (tmp_path / "dvc.lock").write_text("v2\n")  # `dvc repro` rewrote it
    (tmp_path / "data.dvc").write_text("v2\n")
    assert provenance.git_commit(tmp_path) == head and "+" not in head
    (tmp_path / "code.py").write_text("v2\n")
    assert provenance.git_commit(tmp_path) == f"{head}+dirty"


def test_settings_name_the_experiment_and_store(store, monkeypatch):
    """The caller's tracking section decides; a params.yaml in the working directory is not read."""
    (store / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "m6rec-cwd"}}))
    params = store / "params-tracking.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"experiment": "m6rec-other", "db": "other.db",
                                                   "artifacts": "other-artifacts"}}))
    other = section(load_params(params), "tracking", TrackingParams)
    with tracking.start_run("x", {}, settings=other) as run_id:
        pass
    assert client().get_experiment(client().get_run(run_id).info.experiment_id).name == "m6rec-other"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("M6REC_ROOT", str(store))
    assert tracking.tracking_uri(other) == f"sqlite:///{store.resolve() / 'other.db'}"
    assert tracking.artifact_root(tracking.tracking_uri(other), other).endswith("/other-artifacts")
    (store / "params.yaml").unlink()


def test_failed_body_marks_run_failed(store):
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run("boom", {}, settings=SETTINGS) as run_id:
            raise ZeroDivisionError("boom")
    assert client().get_run(run_id).info.status == "FAILED"


def test_logging_outside_a_run_is_an_error(store):
    with pytest.raises(RuntimeError, match="start_run"):
        tracking.log_metrics({"x": 1.0})


def test_bundle_model_register_alias_download_roundtrip(store, tiny_prepared, tmp_path):
    bundle_dir = export_bundle(tmp_path / "bundle", svd_bundle(tiny_prepared, ["ml-100k"], dim=8),
                               {"model": "svd8", "data_version": "v"})
    assert registry.get_alias("m6rec-roundtrip", settings=SETTINGS) is None  # no such model yet
    with tracking.start_run("register", {}, settings=SETTINGS):
        uri = registry.log_model(bundle_dir, "svd8")
        assert uri.startswith("models:/m-")
        v1 = registry.register_model(uri, "m6rec-roundtrip", tags={"register.metric_value": "0.5"},
                                     settings=SETTINGS)
        v2 = registry.register_model(registry.log_model(bundle_dir, "svd8"), "m6rec-roundtrip", settings=SETTINGS)
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.tags["register.metric_value"] == "0.5"
    assert registry.get_alias("m6rec-roundtrip", settings=SETTINGS) is None  # registered, not promoted
    registry.set_alias(v1.version, "m6rec-roundtrip", settings=SETTINGS)
    champ = registry.get_alias("m6rec-roundtrip", settings=SETTINGS)
    assert champ.version == "1" and "champion" in champ.aliases
    registry.set_alias(v2.version, "m6rec-roundtrip", settings=SETTINGS)  # the alias moves
    assert registry.get_alias("m6rec-roundtrip", settings=SETTINGS).version == "2"
    assert registry.resolve_model_uri("models:/m6rec-roundtrip@champion", settings=SETTINGS).version == "2"
    with pytest.raises(LookupError, match="no alias 'nope'"):
        registry.resolve_model_uri("models:/m6rec-roundtrip@nope", settings=SETTINGS)

    local = registry.download_model("models:/m6rec-roundtrip@champion", tmp_path / "dl", settings=SETTINGS)
    assert (local / "MLmodel").is_file()
    back, orig = load_bundle(registry.bundle_root(local)), load_bundle(bundle_dir)
    assert back.meta == orig.meta
    a, b = back.domains["ml-100k"], orig.domains["ml-100k"]
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)
    assert (a.seen != b.seen).nnz == 0
    assert a.raw_user == b.raw_user and a.titles == b.titles


def test_frame_schema_is_mlflows_inference(tiny_prepared):
    """The fast schema equals MLflow's own inference on real splits and on columns of every kind, nulls included."""
    import pandas as pd
    from mlflow.models import infer_signature

    frame = tiny_prepared.interactions
    for _, part in frame.groupby(["domain", "split"]):
        part = part.reset_index(drop=True)
        assert registry.frame_schema(part) == infer_signature(part).inputs
    mixed = pd.DataFrame({"obj": pd.Series(["x", None, "y"], dtype=object), "text": pd.array(["p", None, "q"]),
                          "full": pd.Series(["u", "v", "w"], dtype=object), "f": [1.0, float("nan"), 2.0],
                          "i": np.arange(3), "i32": np.arange(3, dtype=np.int32), "b": [True, False, True],
                          "t": pd.to_datetime(["2020-01-01"] * 3)})
    for name in mixed.columns:
        assert registry.frame_schema(mixed[[name]]) == infer_signature(mixed[[name]]).inputs, name
    got = registry.frame_schema(mixed)
    assert got == infer_signature(mixed).inputs
    assert [c.required for c in got.inputs] == [False, False, True, False, True, True, True, True]


def test_a_run_logs_each_split_once(store, tiny_prepared):
    """Datasets logged twice by one run (baselines logs one bundle per model) leave each split as one dataset input of the run, with
    MLflow's schema; a new run logs them again."""
    import json

    from mlflow.models import infer_signature

    for _ in range(2):
        with tracking.start_run("baselines", {}, settings=SETTINGS) as run_id:
            registry.log_datasets(tiny_prepared, ["ml-100k"])
            registry.log_datasets(tiny_prepared, ["ml-100k"])
        inputs = client().get_run(run_id).inputs.dataset_inputs
        names = sorted(i.dataset.name for i in inputs)
        rows = tiny_prepared.interactions[tiny_prepared.interactions["domain"] == "ml-100k"]
        assert names == sorted(f"ml-100k/{s}" for s in rows["split"].unique())
        train = rows[rows["split"] == "train"].reset_index(drop=True)
        logged = next(i.dataset for i in inputs if i.dataset.name == "ml-100k/train")
        assert json.loads(logged.schema)["mlflow_colspec"] == infer_signature(train).inputs.to_dict()


def test_log_model_needs_a_folder(store, tmp_path):
    with tracking.start_run("register", {}, settings=SETTINGS):
        with pytest.raises(FileNotFoundError, match="no-bundle"):
            registry.log_model(tmp_path / "no-bundle", "x")


def test_artifacts_stay_beside_the_sqlite_file(store):
    assert (store / "mlartifacts").is_dir()
    assert not (Path.cwd() / "mlruns").exists()


# ------------------------------------------------------------------------------------ failing fast, ending runs


def _dead_url() -> str:
    """A 127.0.0.1 port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_check_store_refuses_a_dead_server_with_its_uri(monkeypatch):
    url = _dead_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(tracking.StoreError, match=f"{url} is unreachable"):
        tracking.check_store(SETTINGS, timeout_s=3)


def test_check_store_asks_a_live_server_for_health(monkeypatch):
    """A real HTTP server on 127.0.0.1: 200 on /health passes, any other answer is an error naming it."""
    import http.server
    import threading

    answers = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            code = answers["code"] if self.path == "/health" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url + "/")
        assert tracking.check_store(SETTINGS) == url + "/"
        answers["code"] = 503
        with pytest.raises(tracking.StoreError, match="HTTP 503"):
            tracking.check_store(SETTINGS)
    finally:
        srv.shutdown()


def test_check_store_on_sqlite_files(tmp_path, monkeypatch, store):
    missing = tmp_path / "gone" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    with pytest.raises(tracking.StoreError, match="folder .*gone does not exist"):
        tracking.check_store(SETTINGS)
    missing.parent.mkdir()
    tracking.check_store(SETTINGS)  # a first run may create it ...
    with pytest.raises(tracking.StoreError, match="database file .*mlflow.db does not exist"):
        tracking.check_store(SETTINGS, must_exist=True)  # ... but not where a registry was expected
    assert not missing.exists()  # checking never creates the store
    missing.write_bytes(b"this is not a database" * 100)
    with pytest.raises(tracking.StoreError, match="not a readable sqlite database"):
        tracking.check_store(SETTINGS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    assert tracking.check_store(SETTINGS, must_exist=True).endswith("mlflow.db")


def test_sigterm_ends_the_run_failed(store, tmp_path):
    """A real stage-like subprocess inside start_run gets SIGTERM: its run ends FAILED and it exits 128 + 15."""
    import os
    import signal
    import time

    started = tmp_path / "run_id"
    code = (
        "import sys, time\n"
        "from m6rec import tracking\n"
        "from m6rec.config import TrackingParams\n"
        "with tracking.start_run('long', {}, data_paths=[], settings=TrackingParams()) as run_id:\n"
        f"    open({str(started)!r}, 'w').write(run_id)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=store, stderr=subprocess.PIPE, text=True)
    try:
        while not started.exists() or not started.read_text():  # bounded by the subprocess's own life
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        run_id = started.read_text()
        assert client().get_run(run_id).info.status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "FAILED" in err
    assert client().get_run(run_id).info.status == "FAILED"


def test_signal_handlers_are_restored_after_the_run(store):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with tracking.start_run("quick", {}, data_paths=[], settings=SETTINGS):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
