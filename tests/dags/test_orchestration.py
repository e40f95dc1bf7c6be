"""m6rec.orchestration: the task graph derived from dvc.yaml, the raw-data policy and the failure records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from m6rec import dvcfiles
from m6rec import orchestration as orch
from tests.conftest import VENV_BIN, run_in

# The pipeline of docs/architecture.md, plus `stats`, a stage that (wrongly) reads data/prepared.
ARCHITECTURE = {
    "prepare": {"deps": ["data/raw", "src/m6rec/stages/prepare.py"], "outs": ["data/prepared"]},
    "validate": {"deps": ["data/prepared"], "outs": [{"data/validated": {"persist": True}},
                                                     {"reports/validation": {"cache": False}}],
                 "metrics": [{"metrics/validation.json": {"cache": False}}]},
    "baselines": {"deps": ["data/validated", "src/m6rec/models"], "outs": ["models/baselines"],
                  "metrics": [{"metrics/baselines.json": {"cache": False}}]},
    "graph": {"deps": ["data/validated/interactions.parquet"], "outs": ["data/graph"]},
    "text_embeddings": {"deps": ["data/validated"], "outs": ["data/embeddings"]},
    "pretrain": {"deps": ["data/graph", "data/embeddings"], "outs": ["models/pretrain"],
                 "metrics": ["metrics/pretrain.json"]},
    "multitask": {"deps": ["models/pretrain"], "outs": ["models/multitask"], "metrics": ["metrics/multitask.json"]},
    "finetune": {"deps": ["models/multitask"], "outs": ["models/finetune"], "metrics": ["metrics/finetune.json"]},
    "stats": {"deps": ["data/prepared"], "outs": ["reports/stats.json"]},
    "evaluate": {"deps": ["metrics/baselines.json", "metrics/pretrain.json", "metrics/finetune.json"],
                 "outs": ["metrics/summary.json"], "plots": ["plots"]},
    "register": {"deps": ["metrics/summary.json", "models/finetune"], "outs": ["reports/promotion.json"]},
}


def write_dvc_yaml(folder: Path, stages: dict) -> Path:
    path = folder / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": {n: {"cmd": "true", **s} for n, s in stages.items()}},
                                   sort_keys=False))
    return path


def test_stage_graph_of_the_architecture(tmp_path: Path) -> None:
    graph = orch.stage_graph(dvcfiles.read_stages(write_dvc_yaml(tmp_path, ARCHITECTURE)))
    assert list(graph) == list(ARCHITECTURE)  # dvc.yaml order kept
    assert graph == {
        "prepare": [],
        "validate": ["prepare"],
        "baselines": ["validate"],
        "graph": ["validate"],  # a file inside an out counts
        "text_embeddings": ["validate"],
        "pretrain": ["graph", "text_embeddings"],
        "multitask": ["pretrain"],
        "finetune": ["multitask"],
        "stats": ["validate"],  # reads data/prepared, but the gate comes first anyway
        "evaluate": ["baselines", "finetune"],  # pretrain -> ... -> finetune: transitive edge dropped
        "register": ["stats", "evaluate"],  # promotion after every other stage
    }


def test_stage_graph_without_gate_or_promotion_is_plain_data_flow(tmp_path: Path) -> None:
    stages = {"a": {"outs": ["x"]}, "b": {"deps": ["x"], "outs": ["y"]}, "c": {"outs": ["z"]}}
    graph = orch.stage_graph(dvcfiles.read_stages(write_dvc_yaml(tmp_path, stages)))
    assert graph == {"a": [], "b": ["a"], "c": []}


def test_foreach_and_templated_paths(tmp_path: Path) -> None:
    stages = {
        "prepare": {"outs": ["data/prepared"]},
        "validate": {"deps": ["data/prepared"], "outs": ["data/validated"]},
        "train": {"foreach": ["mf", "gcn"], "do": {"cmd": "true", "deps": ["data/validated/${item}.parquet"],
                                                   "outs": ["models/${item}"]}},
        "report": {"deps": ["models/summary-${key}.json"], "outs": ["reports/r.json"]},
    }
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    read = {s.name: s for s in dvcfiles.read_stages(path)}
    assert read["train"].deps == ("data/validated",) and read["train"].outs == ("models",)
    graph = orch.stage_graph(list(read.values()))
    assert graph["train"] == ["validate"] and graph["report"] == ["train"]


def test_cycles_and_missing_dvc_yaml_are_clear_errors(tmp_path: Path) -> None:
    stages = {"a": {"deps": ["y"], "outs": ["x"]}, "b": {"deps": ["x"], "outs": ["y"]}}
    with pytest.raises(orch.OrchestrationError, match="depends on itself"):
        orch.stage_graph(dvcfiles.read_stages(write_dvc_yaml(tmp_path, stages)))
    with pytest.raises(dvcfiles.DvcFileError, match="not found"):
        dvcfiles.read_stages(tmp_path / "nope" / "dvc.yaml")


def test_airflow_params_reject_unknown_keys(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("airflow:\n  retries: 1\n  retry: 3\n")
    with pytest.raises(Exception, match="unknown keys \\['retry'\\]"):
        orch.load_airflow_params(params)
    params.write_text("prepare: {}\n")
    assert orch.load_airflow_params(params) == orch.AirflowParams()


def test_failure_recorder_appends_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ti = SimpleNamespace(dag_id="m6rec_pipeline", task_id="validate", run_id="manual__1", try_number=1,
                         log_url="http://localhost:8080/dags/m6rec_pipeline/runs/manual__1/tasks/validate")
    recorder = orch.FailureRecorder("reports/failures.jsonl", str(tmp_path))
    monkeypatch.delenv(orch.FAILURE_LOG_ENV, raising=False)
    recorder({"ti": ti, "run_id": "manual__1", "exception": ValueError("rating 7.0 out of range")})
    recorder({"ti": ti, "run_id": "manual__1", "exception": None})
    lines = (tmp_path / "reports" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["dag"] == "m6rec_pipeline" and first["task"] == "validate" and first["run_id"] == "manual__1"
    assert first["exception"] == "ValueError: rating 7.0 out of range"
    assert first["log_url"] == ti.log_url and first["time"].endswith("+00:00")
    assert json.loads(lines[1])["exception"] is None
    monkeypatch.setenv(orch.FAILURE_LOG_ENV, str(tmp_path / "elsewhere.jsonl"))
    recorder({"ti": ti, "run_id": "manual__1"})
    assert len((tmp_path / "elsewhere.jsonl").read_text().splitlines()) == 1


def test_dataset_state(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"x,y\n")
    (tmp_path / "b.csv").write_bytes(b"tampered\n")
    spec = SimpleNamespace(name="demo", files={"a.csv": hashlib.sha256(b"x,y\n").hexdigest(),
                                               "b.csv": hashlib.sha256(b"original\n").hexdigest(),
                                               "c.csv": "0" * 64})
    state = orch.dataset_state(spec, tmp_path)
    assert state.status == "modified" and state.missing == ("c.csv",)
    assert [m[0] for m in state.modified] == ["b.csv"]
    assert state.modified[0][2] == hashlib.sha256(b"tampered\n").hexdigest()


def check(project: Path, *flags: str) -> tuple[int, str]:
    res = run_in(project, str(VENV_BIN / "python"), "-m", "m6rec.orchestration", "check-raw-data", *flags,
                 check=False)
    return res.returncode, res.stdout + res.stderr


def test_check_raw_data_never_overwrites_a_modified_file(tiny_project_copy: Callable[[str], Path]) -> None:
    project = tiny_project_copy("modified")
    ratings = project / "data" / "raw" / "ml-latest-small" / "ratings.csv"
    tampered = ratings.read_bytes().replace(b",4.0,", b",9.0,", 1)
    ratings.write_bytes(tampered)
    code, out = check(project)
    assert code == orch.DATA_ERROR_EXIT_CODE, out
    assert "ml-latest-small/ratings.csv: sha256" in out and "nothing was overwritten" in out
    assert ratings.read_bytes() == tampered


def test_check_raw_data_downloads_missing_and_reports_change(tiny_project_copy: Callable[[str], Path]) -> None:
    import shutil

    project = tiny_project_copy("missing")
    shutil.rmtree(project / "data" / "raw" / "amazon-office")
    code, out = check(project)
    assert code == 0, out
    assert "downloading missing datasets: amazon-office" in out
    assert "data/raw unchanged since data.dvc" in out  # the same registered bytes came back
    (project / "data" / "raw" / "extra.txt").write_text("new file")
    code, out = check(project)
    assert code == 0 and "data/raw CHANGED since data.dvc" in out, out


def test_check_raw_data_skips_only_when_everything_is_up_to_date(tiny_project_copy: Callable[[str], Path]) -> None:
    project = tiny_project_copy("uptodate")
    write_dvc_yaml(project, {"count": {"cmd": "ls data/raw > counted.txt", "deps": ["data/raw"],
                                       "outs": ["counted.txt"]}})
    run_in(project, str(VENV_BIN / "dvc"), "repro", "-q")
    code, out = check(project, "--skip-if-up-to-date")
    assert code == orch.SKIP_EXIT_CODE, out
    code, out = check(project)
    assert code == 0, out  # without the flag an up-to-date run still proceeds
    (project / "counted.txt").unlink()
    code, out = check(project, "--skip-if-up-to-date")
    assert code == 0 and "stages to rerun: count" in out, out
