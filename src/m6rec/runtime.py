"""Process-level runtime settings, applied from each model stage's main() (params.yaml `runtime`)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import FrameType
from typing import Any, TypeVar

THREADS_ENV = "M6REC_THREADS"
T = TypeVar("T")
R = TypeVar("R")

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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _section(params: dict[str, Any]):
    from m6rec.config import RuntimeParams, build

    return build(RuntimeParams, params.get("runtime"), "section 'runtime'")


def task_seed(params: dict[str, Any]) -> int | None:
    """The global seed each :func:`map_tasks` job starts from: `runtime.seed` in deterministic mode, else None."""
    cfg = _section(params)
    return cfg.seed if cfg.deterministic else None


def worker_count(params: dict[str, Any]) -> int:
    """Processes for a stage's independent jobs: `runtime.workers`, 0 meaning one per usable core
    (:func:`map_tasks` never starts more than it has jobs)."""
    return _section(params).workers or usable_cores()


_TASK: Callable[[Any], Any] | None = None  # map_tasks' function, inherited by its forked workers


def _reseed(seed: int | None) -> None:
    if seed is None:
        return
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_BLAS_LIMIT: Any = None  # a worker's BLAS thread limit (kept referenced for the worker's lifetime)


def _init_worker(threads: int, blas_threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    global _BLAS_LIMIT
    torch.set_num_threads(threads)
    # numpy/scipy's OpenBLAS starts one thread per core in every process: with several workers they would
    # oversubscribe the cores (measured: the seqrec stage's per-domain work was no faster in 2 workers until each
    # had one BLAS thread)
    _BLAS_LIMIT = threadpool_limits(limits=blas_threads, user_api="blas")


def _run_task(item: Any, seed: int | None) -> bytes:
    assert _TASK is not None, "map_tasks' function is set before its workers fork"
    _reseed(seed)
    # pickled here with the plain pickler: the pool's own pickler would move tensors through shared memory
    return pickle.dumps(_TASK(item), protocol=pickle.HIGHEST_PROTOCOL)


def map_tasks(fn: Callable[[T], R], items: Sequence[T], workers: int, seed: int | None = None,
              what: str = "task") -> list[R]:
    """``[fn(item) for item in items]``, in `workers` forked processes when more than one.

    Each call starts from the global seeds `seed` (when given), in the parent or in a worker alike, so a job's
    result does not depend on which jobs ran before it in the same process, and the results are the same for any
    `workers`. Workers are forked: `fn` and whatever it closes over (loaded data) are inherited, not pickled; the
    items and the results are pickled. Each worker gets the parent's torch threads and an equal share of the cores
    for BLAS. `fn` must not write to the MLflow run (the parent owns it): return what should be logged. Put the
    longest jobs first; results come back in the order of `items`.
    """
    global _TASK
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        out = []
        for item in items:
            _reseed(seed)
            out.append(fn(item))
        return out
    if _TASK is not None:
        raise RuntimeError("map_tasks does not nest")
    import torch

    _TASK = fn
    log.info("%d %ss in %d worker processes", len(items), what, workers)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker,
                                 initargs=(torch.get_num_threads(), max(1, usable_cores() // workers))) as pool:
            futures = [pool.submit(_run_task, item, seed) for item in items]
            out = []
            try:
                for item, future in zip(items, futures):
                    try:
                        out.append(pickle.loads(future.result()))
                    except BrokenProcessPool as e:
                        raise RuntimeError(f"the worker process of {what} {item!r} died (out of memory?); "
                                           f"runtime.workers: 1 runs the {what}s one by one in this process") from e
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # the jobs not started yet are dropped
                raise
            return out
    finally:
        _TASK = None


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
