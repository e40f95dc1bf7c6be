"""Process-level runtime settings, applied from each model stage's main() (params.yaml `runtime`)."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

THREADS_ENV = "M6REC_THREADS"

log = logging.getLogger(__name__)


def set_threads(default: int | None = None) -> int:
    """Set torch's intra-op threads from $M6REC_THREADS (else `default`, else torch's own choice).

    On a small shared machine, over-subscribed threads are far slower than one thread per process.
    """
    import torch

    value = os.environ.get(THREADS_ENV) or default
    if value:
        n = int(value)
        if n < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def configure(params: dict[str, Any]) -> int:
    """Apply the `runtime` section of `params` (defaults when absent); returns torch's thread count.

    Deterministic mode exists because the same seeds do not give the same figures with several threads: parallel
    reductions (sparse products, scatter/index sums) add in an order that depends on the thread split. One thread,
    torch's deterministic algorithms and fixed global seeds make a rerun match to the last digit.
    """
    import numpy as np
    import torch

    from m6rec.config import RuntimeParams, build

    cfg = build(RuntimeParams, params.get("runtime"), "section 'runtime'")
    if not cfg.deterministic:
        return set_threads()
    if os.environ.get(THREADS_ENV) not in (None, "", "1"):
        log.warning("runtime.deterministic: one torch thread, ignoring $%s=%s", THREADS_ENV, os.environ[THREADS_ENV])
    torch.set_num_threads(1)
    # cuBLAS needs a fixed workspace for deterministic results; set before any CUDA context exists
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    log.info("runtime: deterministic mode (1 thread, deterministic algorithms, global seed %d)", cfg.seed)
    return 1
