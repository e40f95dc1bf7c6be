"""The pipeline's first task: check data/raw against the dataset registry, download what is missing.

Raw-data policy: data/raw is versioned (sha256 per file in config/datasets.yaml, the directory hash in data.dvc).
A file whose bytes differ from the registry is never overwritten or "repaired": the check fails, names each file
with both hashes, and leaves the file in place for investigation. New data enters by a reviewed registry change
(new sha256); the download then fetches it, `dvc status data.dvc` reports it as changed, and the Great
Expectations gate (`validate`) decides whether training may use it. Missing datasets are simply downloaded.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

# The comparison itself is shared with the `prepare` stage (plain `dvc repro` refuses the same data).
from m6rec.data.raw_check import DatasetState, dataset_state  # noqa: F401 (re-exported by the package)
from m6rec.data.raw_check import modified_message as _modified_message
from m6rec.orchestration.tasks import PREFLIGHT_STAGE, SKIP_EXIT_CODE, OrchestrationError, tool

log = logging.getLogger(__name__)

DATA_ERROR_EXIT_CODE = 3  # raw data differs from the registry, or is incomplete after the download


def dvc_status(targets: list[str] | None = None) -> dict[str, Any]:
    """`dvc status --json` of `targets` (all stages when None): {} when everything is up to date."""
    cmd = [tool("dvc"), "--wait-for-lock", "status", *(targets or []), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise OrchestrationError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith(("{", "["))]
    return json.loads(lines[-1]) if lines else {}


def check_raw_data(params_path: str | Path, mirror: Path | None, offline: bool,
                   skip_if_up_to_date: bool = False) -> int:
    """Returns the process exit code: 0 go on, 3 data problem, 99 nothing to do, 1 sources unreachable."""
    from m6rec.config import DataParams, load_params, section
    from m6rec.data.download import download
    from m6rec.data.sources import load_registry

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
        if download(cfg, mirror, offline):
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
    stale.pop(PREFLIGHT_STAGE, None)  # always_changed: it runs every time and says nothing about the data
    log.info("stages to rerun: %s", ", ".join(sorted(stale)) or "none (pipeline up to date)")
    if skip_if_up_to_date and not changed and not stale:
        log.info("nothing changed and every stage is up to date: skipping this run")
        return SKIP_EXIT_CODE
    return 0
