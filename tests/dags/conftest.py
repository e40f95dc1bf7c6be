"""Running the real DAGs: `airflow dags test` in a throw-away AIRFLOW_HOME with a sqlite metadata DB."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, tiny_env

AIRFLOW = str(VENV_BIN / "airflow")


def airflow_env(project: Path, home: Path, **extra: str) -> dict[str, str]:
    """tiny_env plus an isolated Airflow: sqlite DB in `home`, the repository's dags/, no examples."""
    return tiny_env(
        project,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__COLORED_CONSOLE_LOG="False",
        **extra,
    )


def _json_tail(text: str) -> list | dict:
    """The JSON document an Airflow CLI command printed last (log lines may precede it)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    raise AssertionError(f"no JSON in the output:\n{text[-3000:]}")


@dataclass
class DagRunResult:
    returncode: int
    output: str  # stdout + stderr of `airflow dags test`
    run_id: str
    state: str  # dag run state from the metadata DB
    tasks: dict[str, str]  # task id -> state from the metadata DB (None -> "none")
    seconds: float

    def explain(self) -> str:
        errors = [ln for ln in self.output.splitlines() if any(k in ln for k in ("ERROR", "Error", "error:"))]
        return (f"dag run {self.state}, tasks {self.tasks}\n--- error lines\n" + "\n".join(errors[-40:])
                + f"\n--- output tail\n{self.output[-5000:]}")


def run_dag(dag_id: str, project: Path, home: Path, timeout: float = 840, **extra_env: str) -> DagRunResult:
    """`airflow dags test <dag_id>`, then the run and its task states read back through the Airflow CLI."""
    env = airflow_env(project, home, **extra_env)
    t0 = time.perf_counter()
    res = subprocess.run([AIRFLOW, "dags", "test", dag_id], cwd=project, env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    output = res.stdout + res.stderr
    runs = subprocess.run([AIRFLOW, "dags", "list-runs", dag_id, "-o", "json"], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    listed = _json_tail(runs.stdout)
    assert len(listed) == 1, f"expected one run of {dag_id}, got {listed}\n{output[-3000:]}"
    run_id, state = listed[0]["run_id"], listed[0]["state"]
    tis = subprocess.run([AIRFLOW, "tasks", "states-for-dag-run", dag_id, run_id, "-o", "json"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    tasks = {row["task_id"]: str(row["state"]).lower() for row in _json_tail(tis.stdout)}
    return DagRunResult(res.returncode, output, run_id, state, tasks, seconds)


@pytest.fixture(scope="session")
def airflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated sqlite metadata DB (`airflow db migrate` once per session; each test gets a copy)."""
    home = tmp_path_factory.mktemp("airflow_template")
    subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(REPO, home), capture_output=True, text=True,
                   timeout=300, check=True)
    db = home / "airflow.db"
    assert db.is_file(), f"airflow db migrate left no {db}"
    return db


def new_airflow_home(template: Path, where: Path) -> Path:
    where.mkdir(parents=True)
    shutil.copy2(template, where / "airflow.db")
    return where
