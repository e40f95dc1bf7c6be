"""The DAG's last task: build the BentoML service after promotion."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from m6rec.orchestration.tasks import SKIP_EXIT_CODE, tool

log = logging.getLogger(__name__)

ALLOW_MISSING_BENTOFILE_ENV = "M6REC_ALLOW_MISSING_BENTOFILE"  # "1": build-bento skips (exit 99) without a bentofile


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
    cmd = [tool("bentoml"), "build", "-f", str(path), "."]
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode
