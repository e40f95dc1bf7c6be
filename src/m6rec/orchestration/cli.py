"""The `python -m m6rec.orchestration` command line: what the DAG tasks run from the project directory.

    python -m m6rec.orchestration check-raw-data [--params params.yaml] [--skip-if-up-to-date]
    python -m m6rec.orchestration build-bento [--bentofile bentofile.yaml]
    python -m m6rec.orchestration stages [--dvc-yaml dvc.yaml]    # print the task graph the pipeline DAG derives
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m6rec.dvcfiles import read_stages
from m6rec.orchestration.bento import build_bento
from m6rec.orchestration.graph import stage_graph
from m6rec.orchestration.raw_data import check_raw_data
from m6rec.orchestration.tasks import SKIP_EXIT_CODE, load_airflow_params


def main(argv: list[str] | None = None) -> int:
    """The `python -m m6rec.orchestration` command line; returns the exit code."""
    from m6rec.log import setup_logging

    parser = argparse.ArgumentParser(description="Package side of the m6rec Airflow DAGs (dags/).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check-raw-data", help="verify data/raw, download what is missing, compare to data.dvc")
    p_check.add_argument("--params", default="params.yaml")
    p_check.add_argument("--mirror", type=Path, default=None, help="local mirror (default: the download stage's)")
    p_check.add_argument("--offline", action="store_true", help="skip official sources")
    p_check.add_argument("--skip-if-up-to-date", action="store_true",
                         help=f"exit {SKIP_EXIT_CODE} when data.dvc and every stage are up to date")
    p_bento = sub.add_parser("build-bento", help="bentoml build of the service")
    p_bento.add_argument("--bentofile", default="bentofile.yaml")
    p_stages = sub.add_parser("stages", help="print the stage graph the pipeline DAG derives from dvc.yaml")
    p_stages.add_argument("--dvc-yaml", default="dvc.yaml")
    p_stages.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    setup_logging()
    if args.cmd == "check-raw-data":
        return check_raw_data(args.params, args.mirror, args.offline, args.skip_if_up_to_date)
    if args.cmd == "build-bento":
        return build_bento(args.bentofile)
    cfg = load_airflow_params(args.params)
    graph = stage_graph(read_stages(args.dvc_yaml), cfg.gate_stage, cfg.promote_stage)
    sys.stdout.write(json.dumps(graph, indent=2) + "\n")  # the command's output, not a log line
    return 0
