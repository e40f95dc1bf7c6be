"""Package side of the Airflow DAGs in dags/: task graph from dvc.yaml, the raw-data check, bento build, failure log.

The DAG files only wire tasks; what they decide is computed here with the standard library and PyYAML, so parsing a
DAG stays cheap (this module imports no torch, no DVC and no Airflow at import time).

Commands the DAG tasks run from the project directory (see docs/airflow.md):
    python -m m6rec.orchestration check-raw-data [--params params.yaml] [--skip-if-up-to-date]
    python -m m6rec.orchestration build-bento [--bentofile bentofile.yaml]
    python -m m6rec.orchestration stages [--dvc-yaml dvc.yaml]    # print the task graph the pipeline DAG derives

Raw-data policy (`check-raw-data`): data/raw is versioned (sha256 per file in config/datasets.yaml, the directory hash
in data.dvc). A file whose bytes differ from the registry is never overwritten or "repaired": the check fails, names
each file with both hashes, and leaves the file in place for investigation. New data enters by a reviewed registry
change (new sha256); the download step then fetches it, `dvc status data.dvc` reports it as changed, and the
Great Expectations gate (`validate`) decides whether training may use it. Missing datasets are simply downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

PROJECT_DIR_ENV = "M6REC_PROJECT_DIR"  # project checkout the tasks run in (default: the DAG file's repo root)
BIN_DIR_ENV = "M6REC_BIN_DIR"  # folder holding the project's python, dvc and bentoml (default: sys.executable's)
FAILURE_LOG_ENV = "M6REC_FAILURE_LOG"  # overrides params `airflow.failure_log`
ALLOW_MISSING_BENTOFILE_ENV = "M6REC_ALLOW_MISSING_BENTOFILE"  # "1": build-bento skips (exit 99) without a bentofile
SKIP_EXIT_CODE = 99  # BashOperator's default skip_on_exit_code: the task ends "skipped", downstream tasks skip too
DATA_ERROR_EXIT_CODE = 3  # raw data differs from the registry, or is incomplete after the download


class OrchestrationError(RuntimeError):
    """dvc.yaml or the airflow params cannot be turned into a task graph."""


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
    return timedelta(minutes=float(cfg.task_timeout_min.get(task_id, cfg.timeout_min)))


def start_date(cfg: AirflowParams) -> datetime:
    return datetime.fromisoformat(cfg.start_date).replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------------------------
# Stage graph from dvc.yaml
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: everything the stage writes


def _norm(path: str) -> str | None:
    """Normalised posix path; a templated path (`${...}`) is cut to its literal folder prefix, None if it has none."""
    if "${" in path:
        path = path.split("${", 1)[0].rsplit("/", 1)[0]
    path = posixpath.normpath(path.strip()) if path.strip() else ""
    return None if path in ("", ".") else path


def _paths(entries: Any) -> tuple[str, ...]:
    """Paths of a deps/outs/metrics/plots list whose entries are strings or {path: options} mappings."""
    out = []
    for entry in entries or []:
        names = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else []
        out.extend(p for p in (_norm(str(n)) for n in names) if p)
    return tuple(out)


def read_stages(dvc_yaml: str | Path) -> list[Stage]:
    """Stages of dvc.yaml in file order (foreach/matrix stages count once: `dvc repro <name>` runs all items)."""
    path = Path(dvc_yaml)
    if not path.is_file():
        raise OrchestrationError(f"{path} not found: the pipeline DAG derives its tasks from it")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    stages = []
    for name, body in (doc.get("stages") or {}).items():
        body = body or {}
        spec = body.get("do", body)  # foreach stages keep cmd/deps/outs under `do`
        outs = _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))
        stages.append(Stage(str(name), _paths(spec.get("deps")), outs))
    return stages


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _closure(graph: Mapping[str, set[str]], start: str) -> set[str]:
    """Every node reachable from `start` following `graph` (start excluded)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def stage_graph(stages: list[Stage], gate: str = "validate", promote: str = "register") -> dict[str, list[str]]:
    """Upstream stages of every stage, keys and lists in dvc.yaml order.

    Edges come from data flow (a dep equal to, inside or containing another stage's out), as DVC itself links
    stages. Two policy edges are added: every stage that does not feed the `gate` runs after it (no training on
    unchecked data, even for a stage that reads data/prepared by mistake), and `promote` runs after every stage
    that is not downstream of it. Redundant (transitive) edges are dropped so the Airflow graph stays readable.
    """
    names = [s.name for s in stages]
    order = {n: i for i, n in enumerate(names)}
    up: dict[str, set[str]] = {
        s.name: {o.name for o in stages if o.name != s.name and any(_overlaps(d, x) for d in s.deps for x in o.outs)}
        for s in stages
    }
    for name in names:
        if name in _closure(up, name):
            raise OrchestrationError(f"dvc.yaml: stage '{name}' depends on itself through its deps/outs")
    if gate in up:
        before_gate = _closure(up, gate)
        for name in names:
            if name != gate and name not in before_gate and gate not in _closure(up, name):
                up[name].add(gate)
    if promote in up:
        down = {n for n in names if promote in _closure(up, n)}
        up[promote] |= {n for n in names if n != promote and n not in down}
        if promote in _closure(up, promote):
            raise OrchestrationError(f"dvc.yaml: '{promote}' cannot run last: a stage it feeds also feeds it")
    reduced = {}
    for name in names:
        direct = up[name]
        keep = {u for u in direct if not any(u in _closure(up, v) for v in direct if v != u)}
        reduced[name] = sorted(keep, key=order.__getitem__)
    return reduced


# ---------------------------------------------------------------------------------------------------------------
# Raw-data check
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetState:
    name: str
    missing: tuple[str, ...]  # registered files that are absent
    modified: tuple[tuple[str, str, str], ...]  # (file, registry sha256, actual sha256)

    @property
    def status(self) -> str:
        return "modified" if self.modified else "missing" if self.missing else "verified"


def dataset_state(spec: Any, folder: Path) -> DatasetState:
    """Compare `folder` with a registry entry (m6rec.data.sources.DatasetSpec) file by file."""
    from m6rec.data.sources import sha256_file

    missing, modified = [], []
    for name, expected in spec.files.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        actual = sha256_file(path)
        if actual != expected:
            modified.append((name, expected, actual))
    return DatasetState(spec.name, tuple(missing), tuple(modified))


def _tool(name: str) -> str:
    candidate = bin_dir() / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise OrchestrationError(f"'{name}' not found in {bin_dir()} nor on PATH (set ${BIN_DIR_ENV})")
    return found


def dvc_status(targets: list[str] | None = None) -> dict[str, Any]:
    """`dvc status --json` of `targets` (all stages when None): {} when everything is up to date."""
    cmd = [_tool("dvc"), "--wait-for-lock", "status", *(targets or []), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise OrchestrationError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith(("{", "["))]
    return json.loads(lines[-1]) if lines else {}


def _modified_message(states: list[DatasetState], raw_dir: str, registry: str) -> str:
    lines = [f"raw data differs from the registry ({registry}); nothing was overwritten:"]
    for st in states:
        for name, expected, actual in st.modified:
            lines.append(f"  {raw_dir}/{st.name}/{name}: sha256 {actual}, registry expects {expected}")
    lines.append("Either restore the registered version (`dvc checkout data.dvc`, or delete the dataset folder and "
                 "re-run the download), or accept the new data by updating its sha256 in the registry in a "
                 "reviewed change; the `validate` gate then checks it before any training.")
    return "\n".join(lines)


def check_raw_data(params_path: str | Path, mirror: Path | None, offline: bool,
                   skip_if_up_to_date: bool = False) -> int:
    """The pipeline's first task. Returns the process exit code (0 go on, 3 data problem, 99 nothing to do)."""
    from m6rec.config import load_params, section
    from m6rec.data.sources import load_registry
    from m6rec.stages.download import DataParams
    from m6rec.stages.download import main as download_main

    cfg = section(load_params(params_path), "data", DataParams)
    registry = load_registry(cfg.registry)
    names = list(cfg.datasets) or list(registry)
    raw = Path(cfg.raw_dir)
    states = [dataset_state(registry[n], raw / n) for n in names if n in registry]
    modified = [s for s in states if s.modified]
    if modified:
        log.error("%s", _modified_message(modified, cfg.raw_dir, cfg.registry))
        return DATA_ERROR_EXIT_CODE
    missing = [s.name for s in states if s.missing]
    if missing:
        log.info("downloading missing datasets: %s", ", ".join(missing))
        argv = ["--params", str(params_path)] + (["--offline"] if offline else [])
        argv += ["--mirror", str(mirror)] if mirror else []
        if download_main(argv) != 0:
            # Not a data-content problem: the sources were unreachable. The next run tries again.
            log.error("download failed for %s (see the errors above)", ", ".join(missing))
            return 1
        states = [dataset_state(registry[n], raw / n) for n in names if n in registry]
        bad = [s for s in states if s.status != "verified"]
        if bad:
            log.error("after the download, still not verified: %s", ", ".join(f"{s.name} ({s.status})" for s in bad))
            return DATA_ERROR_EXIT_CODE
    log.info("raw data verified against %s: %s", cfg.registry, ", ".join(s.name for s in states))

    if Path("data.dvc").is_file():
        changed = bool(dvc_status(["data.dvc"]))
        log.info("data/raw %s since data.dvc was last recorded", "CHANGED" if changed else "unchanged")
    else:
        changed = True
        log.warning("no data.dvc: raw data is not tracked yet (`dvc add %s`)", cfg.raw_dir)
    stale = dvc_status()
    log.info("stages to rerun: %s", ", ".join(sorted(stale)) or "none (pipeline up to date)")
    if skip_if_up_to_date and not changed and not stale:
        log.info("nothing changed and every stage is up to date: skipping this run")
        return SKIP_EXIT_CODE
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Bento build
# ---------------------------------------------------------------------------------------------------------------


def build_bento(bentofile: str | Path) -> int:
    """`bentoml build -f <bentofile> .` in the project directory; 99 (skip) only when explicitly allowed."""
    path = Path(bentofile)
    if not path.is_file():
        if os.environ.get(ALLOW_MISSING_BENTOFILE_ENV, "") == "1":
            log.warning("SKIPPED: %s not found in %s and $%s=1: no bento is built", path, Path.cwd(),
                        ALLOW_MISSING_BENTOFILE_ENV)
            return SKIP_EXIT_CODE
        log.error("%s not found in %s: the BentoML service cannot be built", path, Path.cwd())
        return 1
    cmd = [_tool("bentoml"), "build", "-f", str(path), "."]
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


# ---------------------------------------------------------------------------------------------------------------
# Failure records (on_failure_callback)
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from m6rec.log import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    print(json.dumps(graph, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

