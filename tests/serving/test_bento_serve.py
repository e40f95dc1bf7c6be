"""A self-contained bento: the champion of a real sqlite MLflow store in tmp imported into a tmp BentoML model store,
packed by `python -m m6rec.orchestration build-bento` (a real `bentoml build`), then served by `bentoml serve <tag>`
on 127.0.0.1 with MLFLOW_TRACKING_URI pointing at a port nobody listens on. Also: no rebuild for an unchanged
champion, the source tree's fallback to the model store, and the clear exit when there is no model at all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from m6rec import registry
from m6rec.config import TrackingParams
from m6rec.serving.bento_model import LABEL_HASH, LABEL_VERSION, MODEL_NAME
from m6rec.serving.bundle_io import HASH_TAG
from m6rec.serving.local_server import LocalServer
from tests.serving.test_bento_include import REPO
from tests.serving.test_startup import DOMAINS, make_registry, serve_fails

SKIPPED = 99  # build-bento's exit status when nothing changed (Airflow's skip)


def dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def build(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m6rec.orchestration", "build-bento"], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=900)


def bentos(home: Path) -> list[Path]:
    return sorted(p for p in (home / "bentos" / "m6rec").glob("*") if p.is_dir() and p.name != "latest")


def models(home: Path) -> list[Path]:
    return sorted(p for p in (home / "models" / MODEL_NAME).glob("*") if p.is_dir() and p.name != "latest")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_prepared):
    """Registry with v1, v2 (v2 @champion), and a bento built from it in a tmp BENTOML_HOME."""
    root = tmp_path_factory.mktemp("bento")
    reg = make_registry(root / "store", tiny_prepared)
    home = root / "bentoml"
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_TRACKING_URI": reg["uri"]}
    res = build(env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (bento,) = bentos(home)
    return {"reg": reg, "home": home, "env": env, "bento": bento, "root": root}


def test_the_bento_packs_the_champion_with_its_labels(built):
    reg, home = built["reg"], built["home"]
    (model,) = models(home)
    info = yaml.safe_load((model / "model.yaml").read_text())
    version = reg["versions"][-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", reg["uri"])
        digest = registry.get_version("m6rec", version, settings=TrackingParams()).tags[HASH_TAG]
    assert info["labels"][LABEL_VERSION] == version and info["labels"][LABEL_HASH] == digest
    assert (model / "bundle" / "bundle.json").is_file()
    bento = yaml.safe_load((built["bento"] / "bento.yaml").read_text())
    tag = f"{MODEL_NAME}:{model.name}"
    assert [m["tag"] for m in bento["services"][0]["models"]] == [tag]  # what containerize copies into the image
    assert bento["args"] == {"model": tag}
    assert bento["labels"]["champion_model"] == tag and bento["labels"][LABEL_VERSION] == version
    assert {r["route"] for r in bento["schema"]["routes"]} == {
        "/recommend", "/recommend_items", "/similar_items", "/explain", "/metadata"}  # health: GET /livez, /readyz


def test_the_bento_serves_without_a_registry(built, tmp_path):
    """`bentoml serve <tag>` with the bento's own code and no MLflow to reach: recommendations, probes, metadata."""
    tag = f"m6rec:{built['bento'].name}"
    env = {"BENTOML_HOME": str(built["home"]), "MLFLOW_TRACKING_URI": dead_uri(), "M6REC_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(built["bento"] / "src" / "src")}  # the code the bento ships
    with LocalServer(env=env, cwd=tmp_path, service=tag, log_path=tmp_path / "serve.log") as srv:
        assert httpx.get(f"{srv.url}/livez", timeout=10).status_code == 200
        assert httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
        meta = httpx.post(f"{srv.url}/metadata", json={}, timeout=30).json()
        assert meta["origin"] == "store" and meta["version"] == built["reg"]["versions"][-1]
        assert meta["source"].startswith(f"{MODEL_NAME}:") and meta["model"] == "svd-v2"
        r = httpx.post(f"{srv.url}/recommend", json={"domain": DOMAINS[0], "user": "nobody", "k": 4}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == "popularity" and len(body["items"]) == 4
        assert all(set(row) == {"item", "title", "score"} and 0 < row["score"] <= 1 for row in body["items"])
        for old in ("health", "ready"):  # the duplicated POST probes are gone
            assert httpx.post(f"{srv.url}/{old}", json={}, timeout=30).status_code == 404
        bad = {"domain": DOMAINS[0], "user": "nobody", "k": "ten"}  # a schema error: the client's, not the server's
        assert httpx.post(f"{srv.url}/recommend", json=bad, timeout=30).status_code == 400
        assert httpx.post(f"{srv.url}/metadata", json={}, timeout=30).status_code == 200  # flushes the log line
        log = srv.log_tail(10**6)
    assert "from the BentoML model store, no registry asked" in log and "LookupError" not in log
    assert "Traceback" not in log
    (line,) = [ln for ln in log.splitlines() if "client error /recommend 400" in ln]
    assert "[INFO]" in line and "fields=k" in line
    assert "mlflow.db" not in {p.name for p in built["bento"].rglob("*")}  # no empty store created in the bento


def test_build_is_skipped_while_the_champion_is_unchanged(built):
    before_bentos, before_models = bentos(built["home"]), models(built["home"])
    res = build(built["env"])
    assert res.returncode == SKIPPED, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SKIPPED: bento m6rec:" in res.stderr + res.stdout
    assert bentos(built["home"]) == before_bentos and models(built["home"]) == before_models
    with pytest.MonkeyPatch.context() as mp:  # a new champion: one more model, one more bento
        mp.setenv("MLFLOW_TRACKING_URI", built["reg"]["uri"])
        registry.set_alias(built["reg"]["versions"][0], settings=TrackingParams())
    try:
        res = build(built["env"])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert len(bentos(built["home"])) == len(before_bentos) + 1
        assert len(models(built["home"])) == len(before_models) + 1
    finally:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", built["reg"]["uri"])
            registry.set_alias(built["reg"]["versions"][-1], settings=TrackingParams())


def test_the_source_tree_falls_back_to_the_model_store(built, tmp_path):
    env = {"BENTOML_HOME": str(built["home"]), "MLFLOW_TRACKING_URI": dead_uri(), "M6REC_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "M6REC_PARAMS": str(tmp_path / "none.yaml")}
    with LocalServer(env=env, cwd=tmp_path, log_path=tmp_path / "serve.log") as srv:
        meta = httpx.post(f"{srv.url}/metadata", json={}, timeout=30).json()
        assert meta["origin"] == "store"
        log = srv.log_tail(10**6)
    assert "is unreachable" in log and "falling back to the BentoML model store" in log


def test_no_registry_and_no_stored_model_exits_naming_both(tmp_path):
    out = serve_fails(tmp_path, {"BENTOML_HOME": str(tmp_path / "empty-bentoml"), "MLFLOW_TRACKING_URI": dead_uri(),
                                 "M6REC_PARAMS": str(tmp_path / "none.yaml")})
    line = next(ln for ln in out.splitlines() if "m6rec cannot serve" in ln)
    assert "the MLflow registry cannot be used" in line and f"holds no '{MODEL_NAME}' model" in line, out[-2000:]
