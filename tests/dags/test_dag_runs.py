"""The DAGs run for real (`airflow dags test`, sqlite metadata DB) on tiny copies of the project.

* m6rec_pipeline end to end: every DVC stage in dvc.yaml, then the bento build (skipped, with the reason in its log,
  only while the repository has no bentofile.yaml).
* Bad data accepted into the registry (out-of-range ratings with a matching sha256): the run stops at the
  `validate` gate, no later task runs, data/validated and the MLflow @champion stay as they were.
* m6rec_data_quality on clean data passes; on a raw file modified in place it fails at `check_raw_data` and the
  file is left untouched (never "repaired" by a re-download).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from m6rec import dvcfiles
from m6rec import orchestration as orch
from tests.conftest import REPO, VENV_BIN, run_in
from tests.dags.conftest import DagRunResult, new_airflow_home, run_dag

pytestmark = pytest.mark.slow

STAGES = [s.name for s in dvcfiles.read_stages(REPO / "dvc.yaml")]
CFG = orch.load_airflow_params(REPO / "params.yaml")
GATE = CFG.gate_stage


def tree_digest(folder: Path) -> str:
    """Content hash of a folder (relative paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def champion(project: Path) -> str | None:
    """Version behind models:/m6rec@champion in the project's MLflow store (None without one)."""
    assert CFG.promote_stage in STAGES, f"dvc.yaml has no '{CFG.promote_stage}' stage"
    res = run_in(project, str(VENV_BIN / "python"), "-c",
                 "import json; from m6rec import registry; from m6rec.config import TrackingParams, load_section; "
                 "v = registry.get_alias(settings=load_section('tracking', TrackingParams, 'params.yaml')); "
                 "print(json.dumps(v.version if v else None))")
    return json.loads(res.stdout.strip().splitlines()[-1])


def failure_records(project: Path) -> list[dict]:
    path = project / CFG.failure_log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def bento_env(project: Path, root: Path) -> dict[str, str]:
    env = {"BENTOML_HOME": str(root / "bentoml")}
    if not (project / CFG.bentofile).is_file():
        env[orch.ALLOW_MISSING_BENTOFILE_ENV] = "1"  # the service is not there yet: build_bento skips, says why
    return env


@pytest.fixture(scope="module")
def pipeline_run(tiny_project: Path, airflow_db_template: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DagRunResult]:
    """The whole pipeline DAG once, on a private copy of the tiny project."""
    root = tmp_path_factory.mktemp("pipeline")
    project = root / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    home = new_airflow_home(airflow_db_template, root / "airflow")
    return project, run_dag("m6rec_pipeline", project, home, **bento_env(project, root))


def test_pipeline_end_to_end(pipeline_run: tuple[Path, DagRunResult], record_property) -> None:
    project, result = pipeline_run
    record_property("pipeline_dag_seconds", round(result.seconds, 1))
    assert result.returncode == 0 and result.state == "success", result.explain()
    assert set(result.tasks) == {"check_raw_data", "build_bento", *STAGES}
    assert all(result.tasks[name] == "success" for name in ["check_raw_data", *STAGES]), result.explain()
    if (REPO / CFG.bentofile).is_file():
        assert result.tasks["build_bento"] == "success", result.explain()
    else:
        assert result.tasks["build_bento"] == "skipped", result.explain()
        assert f"SKIPPED: {CFG.bentofile} not found" in result.output
    assert (project / "data" / "validated").is_dir()
    status = json.loads(run_in(project, str(VENV_BIN / "dvc"), "status", "--json").stdout.strip().splitlines()[-1])
    # The MLflow preflight is `always_changed` (it must look at the store on every run); everything else is done.
    assert status == {orch.PREFLIGHT_STAGE: ["always changed"]}, "every stage should be up to date"
    assert failure_records(project) == []


def corrupt_ratings(project: Path, value: str = "7.0") -> None:
    """Out-of-range ratings in every third row of ml-latest-small, registered as a new upstream version."""
    ratings = project / "data" / "raw" / "ml-latest-small" / "ratings.csv"
    old_sha = hashlib.sha256(ratings.read_bytes()).hexdigest()
    lines = ratings.read_bytes().decode("utf-8").splitlines(keepends=True)
    for i in range(1, len(lines), 3):
        fields = lines[i].split(",")
        fields[2] = value
        lines[i] = ",".join(fields)
    ratings.write_bytes("".join(lines).encode("utf-8"))
    new_sha = hashlib.sha256(ratings.read_bytes()).hexdigest()
    registry = project / "config" / "datasets.yaml"
    text = registry.read_text(encoding="utf-8")
    assert text.count(old_sha) == 1
    registry.write_text(text.replace(old_sha, new_sha), encoding="utf-8")


def test_bad_data_stops_the_pipeline_at_the_gate(pipeline_run: tuple[Path, DagRunResult], airflow_db_template: Path,
                                                 tmp_path: Path) -> None:
    trained, first = pipeline_run
    assert first.state == "success", first.explain()
    project = tmp_path / "project"
    shutil.copytree(trained, project, symlinks=True)
    validated_before = tree_digest(project / "data" / "validated")
    champion_before = champion(project)
    assert champion_before is not None  # the first run promoted its candidate ("no champion yet")
    corrupt_ratings(project)

    home = new_airflow_home(airflow_db_template, tmp_path / "airflow")
    result = run_dag("m6rec_pipeline", project, home, **bento_env(project, tmp_path))

    assert result.returncode != 0 and result.state == "failed", result.explain()
    assert result.tasks["check_raw_data"] == "success" and result.tasks[GATE] == "failed", result.explain()
    assert "data/raw CHANGED since data.dvc" in result.output
    graph = orch.stage_graph(dvcfiles.read_stages(project / "dvc.yaml"), GATE, CFG.promote_stage)
    before_gate, todo = {orch.PREFLIGHT_STAGE, "check_raw_data", GATE}, list(graph[GATE])
    while todo:  # every stage that feeds the gate ran (prepare); everything else must not have
        before_gate.add(todo[-1])
        todo.extend(graph[todo.pop()])
    later = {t: s for t, s in result.tasks.items() if t not in before_gate}
    assert later and all(s == "upstream_failed" for s in later.values()), result.explain()
    # The task log names the failing expectation (the rating range, with the bad value) and the Data Docs.
    failed = [ln for ln in result.output.splitlines() if "validation failed" in ln]
    assert any("ml-latest-small" in ln and "column=value" in ln and "7.0" in ln for ln in failed), failed
    assert "Data Docs:" in result.output and "data_docs/index.html" in result.output
    assert tree_digest(project / "data" / "validated") == validated_before
    assert champion(project) == champion_before
    records = failure_records(project)
    assert [(r["dag"], r["task"], r["run_id"]) for r in records] == [("m6rec_pipeline", GATE, result.run_id)]
    assert records[0]["log_url"].endswith(f"/tasks/{GATE}?try_number=1") and records[0]["exception"]


def test_data_quality_dag_passes_on_clean_data(tiny_project_copy: Callable[[str], Path],
                                               airflow_db_template: Path, tmp_path: Path) -> None:
    project = tiny_project_copy("clean")
    result = run_dag("m6rec_data_quality", project, new_airflow_home(airflow_db_template, tmp_path / "airflow"))
    assert result.returncode == 0, result.explain()
    assert result.tasks == {"check_raw_data": "success", GATE: "success"}
    assert (project / "data" / "validated").is_dir()


def test_data_quality_dag_refuses_a_locally_modified_raw_file(tiny_project_copy: Callable[[str], Path],
                                                              airflow_db_template: Path, tmp_path: Path) -> None:
    project = tiny_project_copy("tampered")
    ratings = project / "data" / "raw" / "ml-latest-small" / "ratings.csv"
    tampered = ratings.read_bytes().replace(b",4.0,", b",40.0,")
    ratings.write_bytes(tampered)
    result = run_dag("m6rec_data_quality", project, new_airflow_home(airflow_db_template, tmp_path / "airflow"))
    assert result.returncode != 0 and result.state == "failed", result.explain()
    assert result.tasks == {"check_raw_data": "failed", GATE: "upstream_failed"}, result.explain()
    assert "ml-latest-small/ratings.csv: sha256" in result.output and "nothing was overwritten" in result.output
    assert ratings.read_bytes() == tampered  # kept for investigation, not re-downloaded over
    assert not (project / "data" / "prepared").exists()
    assert [r["task"] for r in failure_records(project)] == ["check_raw_data"]
