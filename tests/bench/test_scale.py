"""The scale bench (bench/bench_scale.py) end to end on a small synthetic size: every dvc.yaml stage runs for real
and leaves its figures in the JSON.

5k interactions with the `tiny` budget (the smallest knobs, one epoch per trainer): the bench's own cost is a
dozen stage processes (each imports torch and most MLflow), ~2-4 min on the shared 2-core box; 100k with the
`bench` budget takes ~10 min, so the bigger sizes are bench runs, not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_bench_writes_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "bench_scale.py"), "--sizes", "5k", "--budget", "tiny",
                          "--out", str(out), "--work-dir", str(tmp_path), "--extrapolate", ""],
                         cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, f"bench exited {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    payload = json.loads(out.read_text(encoding="utf-8"))
    (run,) = payload["runs"]
    assert run["size"] == 5000 and run["data"]["interactions"] > 4000  # repeats of a pair are dropped
    expected = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert [s["stage"] for s in run["stages"]] == expected
    failed = {s["stage"]: s.get("error") for s in run["stages"] if s["status"] != "ok"}
    assert not failed, f"stages failed: {failed}"
    for st in run["stages"]:
        assert st["wall_s"] > 0 and st["peak_rss_mib"] > 0, st
    assert run["text_encoding"]["n_encoded"] > 0  # distinct texts: nothing came from a cache
    assert payload["first_wall"] is None
