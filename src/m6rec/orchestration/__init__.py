"""Package side of the Airflow DAGs in dags/: task defaults, the stage graph, the raw-data check, bento build and
the failure log.

The DAG files only wire tasks; what they decide is computed here with the standard library and PyYAML, so parsing a
DAG stays cheap (no torch, no DVC and no Airflow at import time). `python -m m6rec.orchestration` is the command
line the tasks run (`m6rec.orchestration.cli`). Modules: `tasks` (the `airflow` params, task defaults and
shell), `graph` (task graph from the dvc.yaml stages of `m6rec.dvcfiles`), `raw_data` (the first task's check),
`bento` (the last task's build), `failures` (the on_failure_callback record).
"""

from m6rec.orchestration.bento import ALLOW_MISSING_BENTOFILE_ENV, build_bento
from m6rec.orchestration.cli import main
from m6rec.orchestration.failures import FAILURE_LOG_ENV, FailureRecorder, failure_record
from m6rec.orchestration.graph import stage_graph
from m6rec.orchestration.raw_data import DATA_ERROR_EXIT_CODE, DatasetState, check_raw_data, dataset_state, dvc_status
from m6rec.orchestration.tasks import (
    BIN_DIR_ENV,
    PREFLIGHT_STAGE,
    PROJECT_DIR_ENV,
    SKIP_EXIT_CODE,
    AirflowParams,
    OrchestrationError,
    bin_dir,
    default_args,
    dvc_repro,
    load_airflow_params,
    missing_gate,
    project_dir,
    shell,
    start_date,
    task_timeout,
    tool,
)

__all__ = [
    "ALLOW_MISSING_BENTOFILE_ENV", "BIN_DIR_ENV", "DATA_ERROR_EXIT_CODE", "FAILURE_LOG_ENV", "PREFLIGHT_STAGE",
    "PROJECT_DIR_ENV",
    "SKIP_EXIT_CODE", "AirflowParams", "DatasetState", "FailureRecorder", "OrchestrationError",
    "bin_dir", "build_bento", "check_raw_data", "dataset_state", "default_args", "dvc_repro", "dvc_status",
    "failure_record", "load_airflow_params", "main", "missing_gate", "project_dir", "shell",
    "stage_graph", "start_date", "task_timeout", "tool",
]
