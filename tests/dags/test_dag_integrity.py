"""Every DAG in dags/ imports cleanly (DagBag: no import errors, no warnings) and is wired as the docs say."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from m6rec import dvcfiles
from m6rec import orchestration as orch
from tests.conftest import REPO, VENV_BIN

# Runs in a fresh interpreter so Airflow's import-time set-up (config, logging) stays out of the pytest process.
DAGBAG_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("always")
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            tasks[t.task_id] = {
                "upstream": sorted(t.upstream_task_ids),
                "retries": t.retries,
                "backoff": float(t.retry_exponential_backoff or 0),
                "max_retry_delay_s": t.max_retry_delay.total_seconds() if t.max_retry_delay else None,
                "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "failure_callbacks": [type(cb).__name__ for cb in (t.on_failure_callback or [])],
                "command": getattr(t, "bash_command", None),
                "cwd": getattr(t, "cwd", None),
            }
        dags[dag_id] = {"schedule": dag.schedule, "catchup": dag.catchup, "max_active_tasks": dag.max_active_tasks,
                        "max_active_runs": dag.max_active_runs, "tasks": tasks}
    print(json.dumps({"import_errors": bag.import_errors,
                      "warnings": {k: list(v) for k, v in bag.captured_warnings.items()},
                      "torch_imported": "torch" in sys.modules, "dags": dags}))
""")


def load_dagbag(folder: Path, tmp_path: Path, project: Path | None = None) -> dict:
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "HOME": str(tmp_path)}
    if os.environ.get("PYTHONPATH"):  # the m6rec under test, also when it is not the installed one (a worktree)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if project is not None:
        env["M6REC_PROJECT_DIR"] = str(project)
    res = subprocess.run([str(VENV_BIN / "python"), "-c", DAGBAG_SCRIPT, str(folder)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-5000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The repository's DAGs parsed against the repository itself (no $M6REC_PROJECT_DIR: the default)."""
    return load_dagbag(REPO / "dags", tmp_path_factory.mktemp("dagbag"))


def _ancestors(tasks: dict, task_id: str) -> set[str]:
    seen, todo = set(), list(tasks[task_id]["upstream"])
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(tasks[t]["upstream"])
    return seen


def test_every_dag_imports_without_errors_or_warnings(dagbag: dict) -> None:
    assert dagbag["import_errors"] == {}
    assert dagbag["warnings"] == {}, "DAG files must not use deprecated Airflow imports"
    assert set(dagbag["dags"]) == {"m6rec_pipeline", "m6rec_data_quality"}
    assert dagbag["torch_imported"] is False, "nothing in dags/ may import torch (the DAG processor parses often)"


def test_checker_reports_deprecated_imports_and_import_errors(tmp_path: Path) -> None:
    """Negative control: the DagBag check above does see an Airflow 2 import and a broken file."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "old.py").write_text("from airflow.operators.bash import BashOperator\n"
                                   "from airflow.sdk import DAG\n"
                                   "with DAG('old', schedule=None):\n"
                                   "    BashOperator(task_id='t', bash_command='true')\n")
    (folder / "broken.py").write_text("from airflow.sdk import dag\nraise RuntimeError('boom')\n")
    bag = load_dagbag(folder, tmp_path)
    assert any("deprecated" in w for ws in bag["warnings"].values() for w in ws)
    assert any("boom" in err for err in bag["import_errors"].values())


def test_pipeline_tasks_follow_dvc_yaml(dagbag: dict) -> None:
    cfg = orch.load_airflow_params(REPO / "params.yaml")
    stages = [s.name for s in dvcfiles.read_stages(REPO / "dvc.yaml")]
    dag = dagbag["dags"]["m6rec_pipeline"]
    tasks = dag["tasks"]
    assert set(tasks) == {"check_raw_data", "build_bento", cfg.gate_stage, *stages}
    # The MLflow preflight runs first, before anything else; it is not part of the derived stage graph.
    assert orch.PREFLIGHT_STAGE in stages and tasks[orch.PREFLIGHT_STAGE]["upstream"] == []
    assert "repro --single-item preflight" in tasks[orch.PREFLIGHT_STAGE]["command"]
    assert tasks["check_raw_data"]["upstream"] == [orch.PREFLIGHT_STAGE]
    stages.remove(orch.PREFLIGHT_STAGE)
    graph = orch.stage_graph([s for s in dvcfiles.read_stages(REPO / "dvc.yaml") if s.name != orch.PREFLIGHT_STAGE],
                             cfg.gate_stage, cfg.promote_stage)
    for name in stages:
        ancestors = _ancestors(tasks, name)
        assert {"check_raw_data", orch.PREFLIGHT_STAGE} <= ancestors
        assert set(graph[name]) <= ancestors
        assert f"dvc --wait-for-lock repro --single-item {name}" in tasks[name]["command"]
        assert tasks[name]["cwd"] == str(REPO)
        if name != cfg.gate_stage and name not in _ancestors(tasks, cfg.gate_stage):
            assert cfg.gate_stage in ancestors, f"{name} must run after the {cfg.gate_stage} gate"
    if cfg.promote_stage in stages:
        assert set(stages) - {cfg.promote_stage} <= _ancestors(tasks, cfg.promote_stage)
    assert set(stages) <= _ancestors(tasks, "build_bento")
    assert _ancestors(tasks, "build_bento") == set(tasks) - {"build_bento"}


def test_pipeline_retry_timeout_and_callback_policy(dagbag: dict) -> None:
    cfg = orch.load_airflow_params(REPO / "params.yaml")
    dag = dagbag["dags"]["m6rec_pipeline"]
    assert dag["schedule"] == cfg.pipeline_schedule
    assert dag["catchup"] is False
    assert dag["max_active_tasks"] == 1 and dag["max_active_runs"] == 1
    for task_id, t in dag["tasks"].items():
        expected_retries = 0 if task_id in ("check_raw_data", cfg.gate_stage, orch.PREFLIGHT_STAGE) else cfg.retries
        assert t["retries"] == expected_retries, task_id
        assert t["backoff"] == cfg.retry_backoff and t["max_retry_delay_s"] == cfg.max_retry_delay_s
        assert t["timeout_s"] == 60 * cfg.task_timeout_min.get(task_id, cfg.timeout_min), task_id
        assert t["failure_callbacks"] == ["FailureRecorder"], task_id


def test_data_quality_dag(dagbag: dict) -> None:
    cfg = orch.load_airflow_params(REPO / "params.yaml")
    dag = dagbag["dags"]["m6rec_data_quality"]
    assert dag["schedule"] == cfg.data_quality_schedule and dag["catchup"] is False
    tasks = dag["tasks"]
    assert set(tasks) == {"check_raw_data", cfg.gate_stage}
    assert tasks[cfg.gate_stage]["upstream"] == ["check_raw_data"]
    assert all(t["retries"] == 0 for t in tasks.values())
    assert "dvc --wait-for-lock repro validate" in tasks[cfg.gate_stage]["command"]


def test_project_dir_schedule_and_missing_gate_from_the_project(tmp_path: Path) -> None:
    """$M6REC_PROJECT_DIR picks the project; its params set the schedules; a dvc.yaml without the gate stage
    still parses, with a gate task that fails closed before every stage."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": "true", "outs": ["data/prepared"]},
        "train": {"cmd": "true", "deps": ["data/prepared"], "outs": ["models"]},
    }}))
    (project / "params.yaml").write_text(yaml.safe_dump({"airflow": {
        "pipeline_schedule": None, "data_quality_schedule": "@weekly", "run_when_up_to_date": False}}))
    bag = load_dagbag(REPO / "dags", tmp_path, project=project)
    assert bag["import_errors"] == {}
    pipeline, quality = bag["dags"]["m6rec_pipeline"], bag["dags"]["m6rec_data_quality"]
    assert pipeline["schedule"] is None and quality["schedule"] == "@weekly"
    tasks = pipeline["tasks"]
    assert tasks["validate"]["upstream"] == ["check_raw_data"]
    assert tasks["prepare"]["upstream"] == ["validate"] and tasks["train"]["upstream"] == ["prepare"]
    assert tasks["build_bento"]["upstream"] == ["train"]
    assert tasks["prepare"]["cwd"] == str(project)
    assert "check-raw-data --skip-if-up-to-date" in tasks["check_raw_data"]["command"]
    assert "--skip-if-up-to-date" not in quality["tasks"]["check_raw_data"]["command"]
    gate = subprocess.run(["bash", "-c", tasks["validate"]["command"]], capture_output=True, text=True, check=False)
    assert gate.returncode == 1 and "has no 'validate' stage" in gate.stderr
    gate = subprocess.run(["bash", "-c", quality["tasks"]["validate"]["command"]], capture_output=True, text=True,
                          check=False)
    assert gate.returncode == 1 and "refusing" in gate.stderr
