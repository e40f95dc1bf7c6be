"""Start-up refuses what it cannot verify: real sqlite MLflow stores in tmp, real `bentoml serve` subprocesses.

In-process tests cover the loader (cache, hash, tags); the subprocess tests check that a fault ends `bentoml
serve` itself (exit status 3, one line naming it) instead of a worker crash loop. The 30 s start-up limit below is
the bound the server must exit within, not a speed measurement.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from m6rec import registry as model_registry
from m6rec import tracking
from m6rec.config import TrackingParams
from m6rec.serving.bundle_io import HASH_TAG, content_hash, export_bundle
from m6rec.serving.loader import ServeParams, StartupError, cache_root, load_served_model
from m6rec.serving.local_server import LocalServer
from tests.serving.svd_bundles import svd_bundle

SETTINGS = TrackingParams()
DOMAINS = ["ml-100k", "ml-latest-small"]
EXIT_WITHIN_S = 30.0


def make_registry(root: Path, prepared, versions: int = 2, tag: bool = True) -> dict:
    """A store in ``root`` with ``versions`` bundles (distinct vectors), the last one @champion."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    bundles, infos = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("M6REC_ARTIFACT_ROOT", raising=False)
        with tracking.start_run("register", {}, data_paths=[], settings=SETTINGS):
            for v in range(versions):
                b = export_bundle(root / f"bundle{v + 1}", svd_bundle(prepared, DOMAINS, 4, random=True, seed=v),
                                  {"model": f"svd-v{v + 1}"})
                tags = {HASH_TAG: content_hash(b)} if tag else {}
                infos.append(model_registry.register_model(model_registry.log_model(b, f"svd-v{v + 1}"), tags=tags,
                                                     settings=SETTINGS))
                bundles.append(b)
        model_registry.set_alias(infos[-1].version, settings=SETTINGS)
    return {"root": root, "uri": uri, "bundles": bundles, "versions": [i.version for i in infos]}


def artifact_folder(root: Path, model: str) -> Path:
    """The artifact-store folder of the logged bundle whose meta names ``model``."""
    for meta in (root / "mlartifacts").rglob("bundle.json"):
        if json.loads(meta.read_text())["model"] == model:
            return meta.parent
    raise AssertionError(f"no logged bundle of {model} under {root / 'mlartifacts'}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_prepared):
    return make_registry(tmp_path_factory.mktemp("startup") / "store", tiny_prepared)


def load(registry: dict, cache: Path, monkeypatch, uri: str = "models:/m6rec@champion", source: str = "registry"):
    """The registry only (no fallback to the BentoML model store: tests/serving/test_bento_serve.py covers it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    return load_served_model(ServeParams(model_uri=uri, cache_dir=str(cache), model_source=source), SETTINGS)


def test_cache_is_keyed_by_version_and_reused(registry, tmp_path, monkeypatch):
    served = load(registry, tmp_path / "cache", monkeypatch)
    assert served.version == registry["versions"][-1] and served.bundle.meta["model"] == "svd-v2"
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    digest = model_registry.get_version("m6rec", served.version, settings=SETTINGS).tags[HASH_TAG][len("sha256:"):]
    assert entries == [f"m6rec-v{served.version}-{digest[:16]}"]  # no leftover partial download beside it
    marker = next((tmp_path / "cache" / entries[0]).rglob("bundle.json"))  # under the pyfunc model's artifacts/
    inode = marker.stat().st_ino
    again = load(registry, tmp_path / "cache", monkeypatch)
    assert again.version == served.version and marker.stat().st_ino == inode  # reused, not downloaded again
    load(registry, tmp_path / "cache", monkeypatch, uri="models:/m6rec/1")
    assert [p.name[:8] for p in sorted((tmp_path / "cache").iterdir())] == ["m6rec-v1", "m6rec-v2"]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    tempfile.tempdir = None  # re-read TMPDIR
    try:
        assert cache_root(ServeParams()) == tmp_path / f"m6rec-models-{__import__('os').getuid()}"
    finally:
        tempfile.tempdir = None


def test_tampered_cache_is_downloaded_again(registry, tmp_path, monkeypatch):
    served = load(registry, tmp_path / "cache", monkeypatch)
    (entry,) = (tmp_path / "cache").iterdir()
    vec = next(entry.rglob("item_vectors.npy"))
    vec.write_bytes(vec.read_bytes()[:-8])
    again = load(registry, tmp_path / "cache", monkeypatch)
    registered = model_registry.get_version("m6rec", served.version, settings=SETTINGS)
    assert content_hash(next(entry.rglob("bundle.json")).parent) == registered.tags[HASH_TAG]
    assert again.bundle.domains[DOMAINS[0]].item_vectors.shape == served.bundle.domains[DOMAINS[0]].item_vectors.shape


def test_untagged_version_is_refused(tmp_path, tiny_prepared, monkeypatch):
    reg = make_registry(tmp_path / "store", tiny_prepared, versions=1, tag=False)
    with pytest.raises(StartupError, match=f"has no '{HASH_TAG}' tag"):
        load(reg, tmp_path / "cache", monkeypatch)


def test_missing_store_is_refused_and_not_created(tmp_path, monkeypatch):
    reg = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with pytest.raises(tracking.StoreError, match="does not exist"):
        load(reg, tmp_path / "cache", monkeypatch)
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------- the real server must exit


def serve_fails(cwd: Path, env: dict[str, str]) -> str:
    """Start `bentoml serve`; it must exit with status 3 within EXIT_WITHIN_S; returns its output."""
    # An empty BentoML home: a champion in the user's model store would be served instead (the registry fallback).
    # An empty download cache too: bundles are byte-identical across tests, and a verified cached copy of the same
    # version and hash is (rightly) served without downloading the faulty artifacts again.
    (cwd / "tmp").mkdir(exist_ok=True)
    srv = LocalServer(env={"HF_HUB_OFFLINE": "1", "M6REC_THREADS": "1", "BENTOML_HOME": str(cwd / "bentoml"),
                           "TMPDIR": str(cwd / "tmp"), **env},
                      cwd=cwd,
                      startup_timeout=EXIT_WITHIN_S, log_path=cwd / "serve.log")
    try:
        with pytest.raises(RuntimeError, match="exited with 3 during start-up"):
            srv.start()
    finally:
        srv.stop()
    out = (cwd / "serve.log").read_text(errors="replace")
    assert "Traceback" not in out.split("m6rec cannot serve")[-1]  # the reason is the last word, not a traceback
    return out


def _replace_v2_with_v1(reg: dict) -> None:
    v1, v2 = artifact_folder(reg["root"], "svd-v1"), artifact_folder(reg["root"], "svd-v2")
    for name in [p.name for p in v2.iterdir() if p.name != "MLmodel"]:
        target = v2 / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        (shutil.copytree if (v1 / name).is_dir() else shutil.copy)(v1 / name, target)


def _truncate_one_file(reg: dict) -> None:
    vec = next(artifact_folder(reg["root"], "svd-v2").rglob("item_vectors.npy"))
    vec.write_bytes(vec.read_bytes()[:100])


def _remove_artifacts(reg: dict) -> None:
    shutil.rmtree(reg["root"] / "mlartifacts")


@pytest.mark.parametrize("fault, message", [
    (_replace_v2_with_v1, r"hashes to sha256:\w+ but version 2 was registered as sha256:"),
    (_truncate_one_file, r"hashes to sha256:\w+ but version 2 was registered as"),
    (_remove_artifacts, r"m6rec cannot serve: \w+"),
])
def test_serve_exits_on_a_broken_champion(fault, message, tmp_path, tiny_prepared):
    import re

    reg = make_registry(tmp_path / "store", tiny_prepared)
    fault(reg)
    out = serve_fails(tmp_path, {"MLFLOW_TRACKING_URI": reg["uri"], "M6REC_PARAMS": str(tmp_path / "none.yaml")})
    line = next(ln for ln in out.splitlines() if "m6rec cannot serve" in ln)
    assert re.search(message, line), out[-3000:]


def test_serve_exits_on_a_missing_store_or_a_dead_server(tmp_path):
    import socket

    out = serve_fails(tmp_path, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 "M6REC_PARAMS": str(tmp_path / "none.yaml")})
    assert "StoreError" in out and "mlflow.db does not exist" in out
    assert not (tmp_path / "mlflow.db").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = serve_fails(tmp_path, {"MLFLOW_TRACKING_URI": dead, "M6REC_PARAMS": str(tmp_path / "none.yaml")})
    assert f"{dead} is unreachable" in out


def test_serve_exits_on_a_bundle_folder_missing_a_file(tmp_path, tiny_prepared):
    b = export_bundle(tmp_path / "bundle", svd_bundle(tiny_prepared, DOMAINS, 4), {"model": "svd4"})
    (b / DOMAINS[0] / "seen.npz").unlink()
    out = serve_fails(tmp_path, {"M6REC_BUNDLE": str(b), "M6REC_PARAMS": str(tmp_path / "none.yaml")})
    assert "BundleError" in out and "seen.npz" in out
