"""Failure records of Airflow tasks: one JSON line per failed task (the DAGs' on_failure_callback)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FAILURE_LOG_ENV = "M6REC_FAILURE_LOG"  # overrides params `airflow.failure_log`


def failure_record(context: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON-able record of a failed task from an Airflow task context."""
    ti = context.get("ti") or context.get("task_instance")
    exc = context.get("exception")
    return {
        "dag": getattr(ti, "dag_id", None),
        "task": getattr(ti, "task_id", None),
        "run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exception": f"{type(exc).__name__}: {exc}" if exc is not None else None,
        "log_url": getattr(ti, "log_url", None),
    }


@dataclass(frozen=True)
class FailureRecorder:
    """Task on_failure_callback: appends one JSON line per failed task to `path` (relative: to the project)."""

    path: str
    project: str = "."

    def target(self) -> Path:
        path = Path(os.environ.get(FAILURE_LOG_ENV) or self.path)
        return path if path.is_absolute() else Path(self.project) / path

    def __call__(self, context: Mapping[str, Any]) -> None:
        target = self.target()
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as fh:  # one short write per record: appends stay whole lines
            fh.write(json.dumps(failure_record(context), default=str) + "\n")
