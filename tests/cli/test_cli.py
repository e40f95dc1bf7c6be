"""The `m6rec` command line as a user runs it (`python -m m6rec`, real subprocesses): help, recommend on a real
bundle, add-domain of a CSV made from a real dataset, then the real prepare and validate stages on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

import m6rec
from m6rec.config import load_params
from m6rec.data.sources import load_registry
from tests.cli.conftest import DOMAIN
from tests.data.generic_samples import csv_sample
from tests.data_fixtures import REPO


def m6(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    res = subprocess.run([sys.executable, "-m", "m6rec", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"m6rec {' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-5000:]}")
    return res


def test_help_lists_every_command_and_the_console_script_is_declared():
    out = m6("--help").stdout
    for cmd in ("run", "recommend", "similar", "serve", "add-domain", "download", "orchestration"):
        assert cmd in out, cmd
    assert "--force" in m6("run", "--help").stdout
    assert "127.0.0.1" in m6("serve", "--help").stdout
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["m6rec"] == "m6rec.cli:main" and scripts["m6rec-download"] == "m6rec.stages.download:main"
    # The DAGs' entry point is unchanged and reachable from the new one.
    assert '"validate"' in m6("orchestration", "stages", "--dvc-yaml", str(REPO / "dvc.yaml"), "--params",
                              str(REPO / "params.yaml")).stdout


def test_recommend_prints_the_models_answer(small_bundle: Path):
    from m6rec.serving.bundle_io import load_bundle

    user = load_bundle(small_bundle).domains[DOMAIN].raw_user[5]
    res = m6("recommend", "--domain", DOMAIN, "--user", user, "--k", "4", "--model", str(small_bundle), "--json")
    answer = json.loads(res.stdout)
    assert answer["items"] == m6rec.load(small_bundle).recommend(DOMAIN, user, k=4)
    assert answer["domain"] == DOMAIN and answer["user"] == user
    table = m6("recommend", "-d", DOMAIN, "-u", user, "-k", "4", "-m", str(small_bundle)).stdout.splitlines()
    assert table[1].split() == ["rank", "item", "score", "title"] and len(table) == 2 + 4
    first = answer["items"][0]
    assert table[2].split()[1] == first["item"] and table[2].endswith(first["title"])
    anon = json.loads(m6("recommend", "-d", DOMAIN, "--item", first["item"], "-k", "3", "-m", str(small_bundle),
                         "--json").stdout)
    assert len(anon["items"]) == 3
    unknown = json.loads(m6("recommend", "-d", DOMAIN, "-u", "no-such-user", "-m", str(small_bundle), "--json").stdout)
    assert unknown["source"] == "popularity" and len(unknown["items"]) == 10
    bad = m6("recommend", "-d", "books", "-u", user, "-m", str(small_bundle), check=False)
    assert bad.returncode == 2 and "unknown domain 'books'" in bad.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: params.yaml and config/ copied from the repository."""
    root = tmp_path / "project"
    (root / "config").mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    shutil.copy2(REPO / "config" / "datasets.yaml", root / "config" / "datasets.yaml")
    return root


def test_add_domain_registers_a_csv_dataset_that_prepare_and_validate_accept(project: Path):
    ratings, movies, kept = csv_sample(project / "mydata", n_users=80)
    before = load_registry(project / "config" / "datasets.yaml")
    res = m6("add-domain", "shop", "--path", str(ratings), "--format", "csv", "--user-col", "customer",
             "--item-col", "product", "--rating-col", "stars", "--time-col", "when", "--item-file", str(movies),
             "--title-col", "name", "--text-col", "genres", "--no-baselines", cwd=project)
    summary = json.loads(res.stdout)
    assert summary["interactions"] == len(kept) and summary["rating_scale"] == [0.5, 5.0, 0.5]
    # The registry gained one generic entry with a local source; the existing ones are untouched.
    registry = load_registry(project / "config" / "datasets.yaml")
    assert set(registry) - set(before) == {"shop"} and all(registry[n] == before[n] for n in before)
    spec = registry["shop"]
    assert (spec.parser, spec.path, spec.interactions, spec.items) == ("csv", "mydata", "ratings.csv", "movies.csv")
    assert spec.columns == {"user": "customer", "item": "product", "rating": "stars", "timestamp": "when"}
    # params.yaml: one entry in the domain list (comments kept), the observed rating scale for validate.
    text = (project / "params.yaml").read_text(encoding="utf-8")
    assert text.startswith("# m6rec parameters") and "# int: users with fewer interactions" in text
    params = load_params(project / "params.yaml")
    assert params["domains"]["shop"] == {"pretrain": False, "baselines": False}  # a new domain starts zero-shot
    assert params["validate"]["rating_scales"]["shop"] == [0.5, 5.0, 0.5]
    repo_params = load_params(REPO / "params.yaml")
    assert {k: v for k, v in params.items() if k not in ("domains", "validate")} == \
        {k: v for k, v in repo_params.items() if k not in ("domains", "validate")}
    assert (project / "data" / "raw" / "shop" / "ratings.csv").read_bytes() == ratings.read_bytes()
    # A second add of the same name is refused, naming it.
    again = m6("add-domain", "shop", "--path", str(ratings), "--user-col", "customer", "--item-col", "product",
               cwd=project, check=False)
    assert again.returncode == 2 and "already registers a dataset 'shop'" in again.stderr
    # The real prepare and validate stages on the new domain alone (tmp params from the file add-domain wrote).
    params["domains"] = {"shop": params["domains"]["shop"]}
    (project / "tmp_params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    for stage in ("prepare", "validate"):
        subprocess.run([sys.executable, "-m", f"m6rec.stages.{stage}", "--params", "tmp_params.yaml"], cwd=project,
                       env=env, check=True, capture_output=True, timeout=600)
    meta = json.loads((project / "data" / "validated" / "meta.json").read_text(encoding="utf-8"))
    assert meta["domains"] == ["shop"] and meta["per_domain"]["shop"]["n_raw_interactions"] == len(kept)
    summary = json.loads((project / "reports" / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["success"] is True


def test_add_domain_names_a_wrong_column_and_writes_nothing(project: Path):
    ratings, _, _ = csv_sample(project / "mydata", n_users=20)
    registry_before = (project / "config" / "datasets.yaml").read_bytes()
    params_before = (project / "params.yaml").read_bytes()
    res = m6("add-domain", "shop", "--path", str(ratings), "--user-col", "customer", "--item-col", "sku",
             cwd=project, check=False)
    assert res.returncode == 2 and "no column 'sku' (the registry's columns.item)" in res.stderr
    assert (project / "config" / "datasets.yaml").read_bytes() == registry_before
    assert (project / "params.yaml").read_bytes() == params_before


@pytest.mark.slow
def test_add_domain_run_onboards_a_new_domain_zero_shot_and_serves_it_over_http(tiny_project_copy):
    """The user's path end to end in a real DVC project: with the universal model pretrained, `add-domain --run`
    takes a CSV through prepare, validate, text encoding and the seqrec stage WITHOUT re-pretraining (model.pt is
    the same bytes), the new domain is served zero-shot from a real BentoML server on 127.0.0.1, the data stages
    are up to date afterwards, and the bundle is a candidate of the champion gate."""
    import hashlib

    from m6rec.api import rows
    from m6rec.serving.bundle_io import load_bundle
    from m6rec.serving.local_server import LocalServer
    from tests.conftest import VENV_BIN, run_in, tiny_env

    project = tiny_project_copy("own-data")
    env = dict(tiny_env(project), PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    run_in(project, str(VENV_BIN / "dvc"), "repro", "seqrec", env=env, timeout=900)
    ckpt = project / "models" / "seqrec" / "model.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    sources = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["domains"]

    _, _, kept = csv_sample(project / "mydata", n_users=80)
    res = run_in(project, sys.executable, "-m", "m6rec", "add-domain", "shop", "--path", "mydata/ratings.csv",
                 "--user-col", "customer", "--item-col", "product", "--rating-col", "stars", "--time-col", "when",
                 "--item-file", "mydata/movies.csv", "--title-col", "name", "--text-col", "genres", "--run",
                 env=env, timeout=900)
    assert "reusing models/seqrec/model.pt" in res.stderr + res.stdout  # no re-pretraining
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["domains"]["shop"] == {"pretrain": False} and set(sources) < set(params["domains"])
    meta = json.loads((project / "data" / "validated" / "meta.json").read_text(encoding="utf-8"))
    assert meta["domains"][-1] == "shop" and meta["per_domain"]["shop"]["n_raw_interactions"] == len(kept)
    embedded = json.loads((project / "data" / "embeddings" / "meta.json").read_text(encoding="utf-8"))
    assert embedded["domains"] == meta["domains"]
    figures = json.loads((project / "metrics" / "seqrec.json").read_text(encoding="utf-8"))["shop"]["seqrec"]
    assert figures["role"] == "zero_shot" and figures["mode"] == "zero_shot" and figures["test"]["ndcg@20"] > 0
    status = run_in(project, str(VENV_BIN / "dvc"), "status", "data.dvc", "prepare", "validate", "text_embeddings",
                    env=env).stdout
    assert "up to date" in status, status
    assert "models/seqrec/bundle" in params["register"]["candidates"]

    bundle = project / "models" / "seqrec" / "bundle"
    user = load_bundle(bundle).domains["shop"].raw_user[3]
    with LocalServer(env={"M6REC_BUNDLE": str(bundle), "HF_HUB_OFFLINE": "1"}, cwd=project,
                     log_path=project / "serve.log") as srv:
        req = urllib.request.Request(f"{srv.url}/recommend", data=json.dumps({"domain": "shop", "user": user,
                                     "k": 5}).encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
    served = [r["item"] for r in rows(answer)]
    assert served == [r["item"] for r in m6rec.load(bundle).recommend("shop", user, k=5)]
    assert len(served) == 5 and set(served) <= set(load_bundle(bundle).domains["shop"].raw_item)