"""m6rec.runtime.configure: the `runtime` section applied by every model stage."""

from __future__ import annotations

import pytest
import torch

from m6rec.config import ConfigError
from m6rec.runtime import configure, map_tasks, task_seed, usable_cores, worker_count


@pytest.fixture
def restore_torch():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_deterministic_mode_uses_one_thread_and_fixed_seeds(restore_torch, monkeypatch):
    monkeypatch.setenv("M6REC_THREADS", "2")
    assert configure({"runtime": {"deterministic": True, "seed": 7}}) == 1
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    first = torch.rand(3)
    configure({"runtime": {"deterministic": True, "seed": 7}})
    assert torch.equal(torch.rand(3), first)


def test_default_mode_follows_the_thread_setting(restore_torch, monkeypatch):
    monkeypatch.setenv("M6REC_THREADS", "2")
    torch.use_deterministic_algorithms(False)
    assert configure({}) == 2 and not torch.are_deterministic_algorithms_enabled()


def test_a_typo_in_the_section_is_an_error():
    with pytest.raises(ConfigError, match=r"runtime.*unknown keys \['determinstic'\]"):
        configure({"runtime": {"determinstic": True}})


def _noisy_sum(n: int) -> tuple[int, float, int]:
    """Uses the global generators, as a model initialised without its own generator would."""
    import os

    return n, float(torch.rand(n).sum()), os.getpid()


def test_map_tasks_gives_the_same_results_for_any_number_of_workers(restore_torch):
    import os

    items = [5, 50, 500, 3]
    one = map_tasks(_noisy_sum, items, workers=1, seed=7)
    two = map_tasks(_noisy_sum, items, workers=2, seed=7)
    assert [r[:2] for r in one] == [r[:2] for r in two]  # in order, and each job from the same global seed
    assert {r[2] for r in one} == {os.getpid()}
    assert os.getpid() not in {r[2] for r in two}  # in worker processes (how many of them is the pool's choice)
    torch.manual_seed(7)
    assert one[0][1] == float(torch.rand(5).sum())
    # never more workers than jobs: a single job runs here, whatever the setting
    assert map_tasks(_noisy_sum, [5], workers=8, seed=7)[0] == (5, one[0][1], os.getpid())


def test_map_tasks_uses_what_the_function_closes_over_without_pickling_it():
    data = {"rows": torch.arange(10.0)}
    lock = __import__("threading").Lock()  # not picklable: the function is inherited by fork, not sent

    def job(i: int) -> float:
        with lock:
            return float(data["rows"][i] * 2)

    assert map_tasks(job, [1, 9, 4], workers=2) == [2.0, 18.0, 8.0]


def _fails_on_three(n: int) -> int:
    if n == 3:
        raise ValueError(f"bad item {n}")
    return n


def _dies_on_three(n: int) -> int:
    if n == 3:
        __import__("os")._exit(9)
    return n


def test_map_tasks_raises_a_jobs_error_and_names_a_dead_worker():
    with pytest.raises(ValueError, match="bad item 3"):
        map_tasks(_fails_on_three, [1, 3, 2], workers=2)
    with pytest.raises(RuntimeError, match=r"worker process of domain 3 died .*runtime.workers: 1"):
        map_tasks(_dies_on_three, [1, 3, 2], workers=2, what="domain")


def test_worker_count_follows_the_setting():
    assert worker_count({"runtime": {"workers": 3}}) == 3
    assert worker_count({"runtime": {"workers": 0}}) == usable_cores()
    assert task_seed({"runtime": {"deterministic": True, "seed": 5}}) == 5
    assert task_seed({"runtime": {"deterministic": False}}) is None
    with pytest.raises(ConfigError, match="runtime.workers"):
        worker_count({"runtime": {"workers": -1}})
