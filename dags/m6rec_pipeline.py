"""m6rec pipeline: preflight -> raw-data check -> one task per DVC stage (validate gates training) -> register ->
bento build.

`build_bento` (`python -m m6rec.orchestration build-bento`) imports the champion into the BentoML model store and
packs it into a new bento only when the champion or the service code changed; otherwise it ends skipped.

The first task is the `preflight` DVC stage (MLflow store reachable, a recorded registry still there): a dead
server fails the run in seconds, before hours of stages. It is taken out of the derived stage graph, where it would
only be an ordering dep of the model stages, and put first.

The stage tasks are derived from `dvc.yaml` each time this file is parsed (YAML only, no DVC import): one task per
stage, `dvc repro --single-item <stage>`, so the UI shows each stage's status, duration and log. Tasks are wired from
the stages' deps/outs (`m6rec.orchestration.stage_graph`) rather than as a chain in file order, so a failing branch
(say, the baselines) does not block an independent one; `max_active_tasks=1` still runs one stage at a time, since
every stage writes to the one DVC workspace and `dvc repro` holds its repository lock while it runs.

Policy: the data checks (`check_raw_data`, the `validate` Great Expectations gate) never retry; other stages retry
with exponential back-off. A run on unchanged raw data still proceeds by default (`airflow.run_when_up_to_date`):
DVC skips every up-to-date stage in seconds, and code or params changes are picked up. Every failed task appends a
JSON record to `airflow.failure_log`. Project folder: $M6REC_PROJECT_DIR, else the repository holding this file.
"""

from __future__ import annotations

import shlex

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag

from m6rec import dvcfiles
from m6rec import orchestration as orch

PROJECT = orch.project_dir(__file__)
BINS = orch.bin_dir()
CFG = orch.load_airflow_params(PROJECT / "params.yaml")
ALL_STAGES = dvcfiles.read_stages(PROJECT / "dvc.yaml")
HAS_PREFLIGHT = any(s.name == orch.PREFLIGHT_STAGE for s in ALL_STAGES)
STAGES = orch.stage_graph([s for s in ALL_STAGES if s.name != orch.PREFLIGHT_STAGE], CFG.gate_stage,
                          CFG.promote_stage)


def _bash(task_id: str, command: str, **kwargs) -> BashOperator:
    return BashOperator(task_id=task_id, bash_command=orch.shell(command, BINS), cwd=str(PROJECT),
                        execution_timeout=orch.task_timeout(CFG, task_id), **kwargs)


@dag(
    dag_id="m6rec_pipeline",
    schedule=CFG.pipeline_schedule,
    start_date=orch.start_date(CFG),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=1,
    default_args=orch.default_args(CFG, PROJECT),
    tags=["m6rec", "dvc", "training"],
    doc_md=__doc__,
)
def m6rec_pipeline() -> None:
    check_flags = "" if CFG.run_when_up_to_date else " --skip-if-up-to-date"
    check = _bash("check_raw_data", f"python -m m6rec.orchestration check-raw-data{check_flags}", retries=0)
    if HAS_PREFLIGHT:  # no retries: its point is to fail fast with the reason
        _bash(orch.PREFLIGHT_STAGE, orch.dvc_repro(orch.PREFLIGHT_STAGE, single_item=True), retries=0) >> check

    stages = {
        name: _bash(name, orch.dvc_repro(name, single_item=True),
                    **({"retries": 0} if name == CFG.gate_stage else {}))
        for name in STAGES
    }
    graph = dict(STAGES)
    if CFG.gate_stage not in stages:  # fail closed: no training without the data check
        stages[CFG.gate_stage] = _bash(CFG.gate_stage, orch.missing_gate(CFG.gate_stage, PROJECT / "dvc.yaml"),
                                       retries=0)
        graph = {name: ups or [CFG.gate_stage] for name, ups in graph.items()} | {CFG.gate_stage: []}
    for name, ups in graph.items():
        if ups:
            [stages[u] for u in ups] >> stages[name]
        else:
            check >> stages[name]

    bento = _bash("build_bento", f"python -m m6rec.orchestration build-bento --bentofile {shlex.quote(CFG.bentofile)}")
    feeding = {u for ups in graph.values() for u in ups}
    ([task for name, task in stages.items() if name not in feeding] or [check]) >> bento


m6rec_pipeline()
