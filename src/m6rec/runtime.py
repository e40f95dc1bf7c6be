"""Process-level runtime settings, applied from each model stage's main() (params.yaml `runtime`)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from collections.abc import Iterator
from types import FrameType
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


class Interrupted(SystemExit):
    """SIGTERM/SIGINT arrived inside :func:`signals_raise`: raised where the code was, so ``with``/``finally``
    blocks unwind (an MLflow run ends FAILED); the process then exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def signals_raise(why: str) -> Iterator[None]:
    """While open, SIGTERM and SIGINT raise :class:`Interrupted` (logging ``why``) instead of their default
    actions, which end the process without unwinding. Handlers can only be set in the main thread; elsewhere this
    does nothing. The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        log.error("got %s: %s", signal.Signals(signum).name, why)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
