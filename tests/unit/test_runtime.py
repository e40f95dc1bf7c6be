"""m6rec.runtime.configure: the `runtime` section applied by every model stage."""

from __future__ import annotations

import pytest
import torch

from m6rec.config import ConfigError
from m6rec.runtime import configure


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
