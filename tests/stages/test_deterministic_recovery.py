"""Deterministic mode and crash safety, through real `dvc repro` on the tiny project (tests/conftest.py).

With `runtime.deterministic: true` (and 2 threads asked for), the pipeline runs up to `multitask`; then, in a copy,
`multitask` is forced to run again and killed with SIGKILL after its first epoch log line; the next plain `dvc repro`
reruns only that stage and completes, with exactly the figures of the uninterrupted run (timing fields aside): the
same stage run twice gives the same metrics to the last digit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import VENV_BIN, apply_overrides, run_in, tiny_env

DVC = str(VENV_BIN / "dvc")
# Two epochs, so that the first epoch's log line comes well before the stage ends
OVERRIDES = {"runtime.deterministic": True, "multitask.train.epochs": 2, "multitask.train.patience": 5}
TIMING = re.compile(r"(^|_)(s|seconds|time)$|_s$")
EPOCH_LINE = re.compile(r" epoch \d+: loss ")


def stage_env(project: Path) -> dict[str, str]:
    return tiny_env(project, M6REC_THREADS="2")  # deterministic mode must hold even where threads are asked for


def without_timing(value: object) -> object:
    """A metrics file's content without wall-clock fields (fit_s, eval_s, total_s, epoch_s, ...)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def metrics(project: Path) -> dict[str, object]:
    return {name: without_timing(yaml.safe_load((project / "metrics" / name).read_text(encoding="utf-8")))
            for name in ("pretrain.json", "multitask.json")}


def deterministic_copy(tiny_project: Path, dst: Path) -> Path:
    shutil.copytree(tiny_project, dst, symlinks=True)
    params = yaml.safe_load((dst / "params.yaml").read_text(encoding="utf-8"))
    apply_overrides(params, OVERRIDES)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return dst


def repro_killing_multitask(project: Path) -> tuple[int, list[str]]:
    """`dvc repro -f -s multitask`, SIGKILLing the multitask stage's process after its first epoch line; returns
    dvc's exit code and the output lines seen."""
    proc = subprocess.Popen([DVC, "repro", "-f", "-s", "multitask"], cwd=project, env=stage_env(project),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(900, proc.kill)  # a hung stage must fail the test, not stall the suite
    watchdog.start()
    lines, in_multitask, killed = [], False, False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            in_multitask = in_multitask or "Running stage 'multitask'" in line
            if in_multitask and not killed and EPOCH_LINE.search(line):
                stage = [p for p in psutil.Process(proc.pid).children(recursive=True)
                         if "m6rec.stages.multitask" in " ".join(p.cmdline())]
                assert stage, f"no multitask process under dvc (pid {proc.pid})"
                for p in stage:
                    p.kill()  # SIGKILL: no cleanup, no atexit
                killed = True
        return proc.wait(), lines
    finally:
        watchdog.cancel()
        assert killed, "the multitask stage never logged an epoch:\n" + "\n".join(lines[-40:])


@pytest.fixture(scope="module")
def uninterrupted(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = deterministic_copy(tiny_project, tmp_path_factory.mktemp("determinism") / "a")
    run_in(project, DVC, "repro", "multitask", env=stage_env(project), timeout=900)
    return project


def test_killed_stage_recovers_with_the_uninterrupted_figures(uninterrupted: Path, tmp_path: Path) -> None:
    expected = metrics(uninterrupted)
    project = tmp_path / "b"
    shutil.copytree(uninterrupted, project, symlinks=True)  # upstream outputs reused: only multitask reruns
    code, lines = repro_killing_multitask(project)
    assert code != 0, "dvc repro should fail when its stage is killed:\n" + "\n".join(lines[-20:])
    assert not (project / "metrics" / "multitask.json").exists()  # dvc removed the outputs before the run

    rerun = run_in(project, DVC, "repro", "multitask", env=stage_env(project), timeout=900)
    out = rerun.stdout + rerun.stderr
    assert "Running stage 'multitask'" in out and "Running stage 'pretrain'" not in out, out[-3000:]
    status = run_in(project, DVC, "status", "multitask", "--json")
    assert status.stdout.strip().splitlines()[-1] == "{}", status.stdout
    got = metrics(project)
    assert got["multitask.json"], "no multitask figures"
    assert got == expected
