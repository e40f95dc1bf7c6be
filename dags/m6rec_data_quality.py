"""m6rec data quality: raw-data check, then the Great Expectations gate (`dvc repro validate`, prepare first if needed).

Scheduled by `airflow.data_quality_schedule` and triggerable on demand (`airflow dags trigger m6rec_data_quality`).
Neither task retries: a data problem does not go away by waiting. It shares the DVC workspace with m6rec_pipeline;
`dvc --wait-for-lock` queues it behind a running pipeline stage instead of failing on DVC's repository lock.
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag

from m6rec import dvcfiles
from m6rec import orchestration as orch

PROJECT = orch.project_dir(__file__)
BINS = orch.bin_dir()
CFG = orch.load_airflow_params(PROJECT / "params.yaml")
HAS_GATE = any(stage.name == CFG.gate_stage for stage in dvcfiles.read_stages(PROJECT / "dvc.yaml"))


def _bash(task_id: str, command: str) -> BashOperator:
    return BashOperator(task_id=task_id, bash_command=orch.shell(command, BINS), cwd=str(PROJECT), retries=0,
                        execution_timeout=orch.task_timeout(CFG, task_id))


@dag(
    dag_id="m6rec_data_quality",
    schedule=CFG.data_quality_schedule,
    start_date=orch.start_date(CFG),
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(CFG, PROJECT),
    tags=["m6rec", "data-quality"],
    doc_md=__doc__,
)
def m6rec_data_quality() -> None:
    check = _bash("check_raw_data", "python -m m6rec.orchestration check-raw-data")
    gate_cmd = (orch.dvc_repro(CFG.gate_stage, single_item=False) if HAS_GATE
                else orch.missing_gate(CFG.gate_stage, PROJECT / "dvc.yaml"))
    check >> _bash(CFG.gate_stage, gate_cmd)


m6rec_data_quality()
