"""Airflow task settings and commands: the `airflow` params section, task defaults, the shell each task runs in."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from m6rec.orchestration.failures import FailureRecorder

PROJECT_DIR_ENV = "M6REC_PROJECT_DIR"  # project checkout the tasks run in (default: the DAG file's repo root)
BIN_DIR_ENV = "M6REC_BIN_DIR"  # folder holding the project's python, dvc and bentoml (default: sys.executable's)
PREFLIGHT_STAGE = "preflight"  # dvc stage checking the MLflow store: the pipeline DAG's first task, not in the graph
SKIP_EXIT_CODE = 99  # BashOperator's default skip_on_exit_code: the task ends "skipped", downstream tasks skip too


class OrchestrationError(RuntimeError):
    """dvc.yaml cannot be turned into a task graph, or a tool the tasks run is missing."""


@dataclass(frozen=True)
class AirflowParams:
    pipeline_schedule: str | None = "@daily"  # cron or preset of m6rec_pipeline; None = triggered on demand only
    data_quality_schedule: str | None = "0 */6 * * *"  # cron or preset of m6rec_data_quality; None = on demand
    start_date: str = "2025-01-01"  # first logical date (ISO, UTC); catchup is off, so no backfill
    retries: int = 2  # retries of a pipeline stage (transient failures); the data checks never retry
    retry_delay_s: float = 60.0  # delay before the first retry
    retry_backoff: float = 2.0  # exponential back-off multiplier (delay x2 each retry)
    max_retry_delay_s: float = 1800.0  # cap on the back-off delay
    timeout_min: float = 120.0  # execution_timeout of every task unless overridden below
    task_timeout_min: dict[str, float] = field(default_factory=dict)  # task id -> execution_timeout (minutes)
    gate_stage: str = "validate"  # dvc stage that must pass before any training stage (no retries)
    promote_stage: str = "register"  # dvc stage that promotes the champion; runs after every other stage
    bentofile: str = "bentofile.yaml"  # BentoML build file, built after promotion
    failure_log: str = "reports/airflow_failures.jsonl"  # JSON line per failed task (relative to the project)
    run_when_up_to_date: bool = True  # False: skip the run when data.dvc and every stage are unchanged


def load_airflow_params(params_path: str | Path) -> AirflowParams:
    """The `airflow` section of params.yaml (defaults when the section is absent)."""
    from m6rec.config import load_params, section

    params = load_params(params_path)
    if "airflow" not in params:
        return AirflowParams()
    return section(params, "airflow", AirflowParams)


def project_dir(dag_file: str | Path) -> Path:
    """$M6REC_PROJECT_DIR, else the repository holding the DAG file (dags/ is one level below the root)."""
    env = os.environ.get(PROJECT_DIR_ENV)
    return Path(env).resolve() if env else Path(dag_file).resolve().parent.parent


def bin_dir() -> Path:
    """$M6REC_BIN_DIR, else the folder of the running interpreter (the venv the DAG processor runs in)."""
    env = os.environ.get(BIN_DIR_ENV)
    return Path(env) if env else Path(sys.executable).parent


def shell(command: str, bins: Path) -> str:
    """A task's bash command: the project's venv first on PATH (dvc runs `python -m ...`), unbuffered logs."""
    return f'export PATH={shlex.quote(str(bins))}:"$PATH" PYTHONUNBUFFERED=1; {command}'


def dvc_repro(stage: str, single_item: bool) -> str:
    """`dvc repro` of one stage; waits for DVC's repo lock instead of failing when another DAG holds it."""
    return f"dvc --wait-for-lock repro {'--single-item ' if single_item else ''}{shlex.quote(stage)}"


def missing_gate(gate: str, dvc_yaml: Path) -> str:
    """Command of a placeholder gate task when dvc.yaml has no gate stage: fail closed, say why."""
    msg = f"dvc.yaml ({dvc_yaml}) has no '{gate}' stage: refusing to run training stages on unchecked data"
    return f"echo {shlex.quote(msg)} >&2; exit 1"


def default_args(cfg: AirflowParams, project: Path) -> dict[str, Any]:
    """Task defaults shared by the DAGs: exponential back-off retries, timeout, failure record."""
    return {
        "owner": "m6rec",
        "retries": cfg.retries,
        "retry_delay": timedelta(seconds=cfg.retry_delay_s),
        "retry_exponential_backoff": cfg.retry_backoff,
        "max_retry_delay": timedelta(seconds=cfg.max_retry_delay_s),
        "execution_timeout": timedelta(minutes=cfg.timeout_min),
        "on_failure_callback": FailureRecorder(cfg.failure_log, str(project)),
    }


def task_timeout(cfg: AirflowParams, task_id: str) -> timedelta:
    """execution_timeout of `task_id`: its `airflow.task_timeout_min` entry, else `airflow.timeout_min`."""
    return timedelta(minutes=float(cfg.task_timeout_min.get(task_id, cfg.timeout_min)))


def start_date(cfg: AirflowParams) -> datetime:
    """`airflow.start_date` as an aware UTC datetime."""
    return datetime.fromisoformat(cfg.start_date).replace(tzinfo=timezone.utc)


def tool(name: str) -> str:
    """Path of a project tool (dvc, bentoml): in bin_dir() first, else on PATH."""
    candidate = bin_dir() / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise OrchestrationError(f"'{name}' not found in {bin_dir()} nor on PATH (set ${BIN_DIR_ENV})")
    return found
