"""Comparing runs with DVC, as a user does: `dvc exp run -S`, `dvc exp show`, `dvc metrics diff`, `dvc plots diff`.

A tiny DVC project in tmp_path, a git repository with the repo's plot templates, runs two stages: a popularity
ranker on real MovieLens-100K ratings (leave-last-out) that writes its figures through m6rec's metrics writer,
and the real `evaluate` stage. The metrics and plot files are committed to git (as in the project), so every
command that compares with HEAD can read them there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.data_fixtures import REPO, mirror_dir

DVC = Path(sys.executable).with_name("dvc")

SCORE = '''"""Popularity ranking of ml-100k, leave-last-out: each user's latest item is the test item."""
import sys, time
import numpy as np, yaml
from m6rec.stage_io import write_json, write_metrics

t0 = time.perf_counter()
min_rating = yaml.safe_load(open("params.yaml"))["popularity"]["min_rating"]
u, i, r, ts = np.loadtxt("u.data", dtype=np.int64, unpack=True)
order = np.lexsort((ts, u))
u, i, r = u[order], i[order], r[order]
last = np.r_[u[1:] != u[:-1], True]  # each user's latest rating
train = ~last & (r >= min_rating)
counts = np.bincount(i[train], minlength=i.max() + 1)
rank_of = np.empty_like(counts)
rank_of[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
ranks = rank_of[i[last]]
def ndcg(k): return float(np.mean(np.where(ranks < k, 1 / np.log2(ranks + 2), 0)))
def hit(k): return float(np.mean(ranks < k))
test = {"ndcg@10": ndcg(10), "ndcg@20": ndcg(20), "recall@20": hit(20), "hit@10": hit(10), "n_users": int(last.sum())}
metrics = {"ml-100k": {"mostpop": {"valid": test, "test": test, "fit_s": time.perf_counter() - t0}}}
write_metrics("metrics/popularity.json", metrics)
write_json("plots/popularity.json", [{"domain": "ml-100k", "model": "mostpop", "test_ndcg@10": test["ndcg@10"]}])
'''

DVC_YAML = {
    "stages": {
        "popularity": {
            "cmd": "python score.py", "deps": ["score.py", "u.data"], "params": ["popularity"],
            "outs": [{"metrics/popularity.json": {"cache": False}}, {"plots/popularity.json": {"cache": False}}],
            "metrics": [{"metrics/popularity.headline.json": {"cache": False}}],
        },
        "evaluate": {
            "cmd": "python -m m6rec.stages.evaluate", "deps": ["metrics/popularity.json"], "params": ["evaluate"],
            "metrics": [{"metrics/headline.json": {"cache": False}}],
            "outs": [{"plots/summary.json": {"cache": False}}, {"reports/summary.json": {"cache": False}},
                     {"reports/summary.md": {"cache": False}}],
        },
    },
    "plots": [{"summary": {"template": "bar_by_domain", "x": "test_ndcg@20",
                           "y": {"plots/summary.json": "model"}}}],
}


def _run(project: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _find(tree: object, key: str) -> list:
    """Every value under `key` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        return ([tree[key]] if key in tree else []) + [v for x in tree.values() for v in _find(x, key)]
    if isinstance(tree, list):
        return [v for x in tree for v in _find(x, key)]
    return []


def test_experiment_shows_metrics_and_param_diff(tmp_path: Path):
    project = tmp_path / "proj"
    project.mkdir()
    shutil.copy(mirror_dir() / "ml-100k" / "u.data", project / "u.data")
    shutil.copytree(REPO / ".dvc" / "plots", project / "plots_templates")
    (project / "score.py").write_text(SCORE)
    evaluate = {"inputs": ["metrics/popularity.json"], "headline": "metrics/headline.json",
                "summary": "reports/summary.json", "plot": "plots/summary.json", "report": "reports/summary.md",
                "metric": "ndcg@20", "reference": "mostpop"}
    (project / "params.yaml").write_text(yaml.safe_dump({"popularity": {"min_rating": 1}, "evaluate": evaluate}))
    (project / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (project / ".gitignore").write_text("/reports/\n/dvc_plots/\n")
    _run(project, "git", "init", "-q", "-b", "main")
    _run(project, str(DVC), "init", "-q")
    shutil.move(project / "plots_templates", project / ".dvc" / "plots")
    _run(project, str(DVC), "repro", "-q")
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-q", "-m", "baseline")

    # The committed metrics carry quality only; the duration went to the git-ignored timings file.
    committed = json.loads((project / "metrics" / "popularity.json").read_text())
    assert "fit_s" not in committed["ml-100k"]["mostpop"]
    timings = json.loads((project / "reports" / "timings" / "popularity.json").read_text())
    assert timings["ml-100k"]["mostpop"]["fit_s"] > 0
    top = json.loads((project / "metrics" / "popularity.headline.json").read_text())["ml-100k"]["mostpop"]
    assert set(top["test"]) == {"ndcg@10", "ndcg@20", "recall@20"}  # no hit@10, n_users: the full file has them
    base = json.loads((project / "metrics" / "headline.json").read_text())["ml-100k"]["best"]["ndcg@20"]
    # A rerun of the same inputs changes nothing: dvc.lock and git are clean.
    _run(project, str(DVC), "repro", "-f", "-q")
    assert _run(project, "git", "status", "--porcelain") == ""

    _run(project, str(DVC), "exp", "run", "-q", "-S", "popularity.min_rating=4")
    new = json.loads((project / "metrics" / "headline.json").read_text())["ml-100k"]["best"]["ndcg@20"]
    assert new != base

    shown = json.loads(_run(project, str(DVC), "exp", "show", "--json"))
    assert {1, 4} <= set(_find(shown, "min_rating"))  # the baseline's and the experiment's param
    assert {base, new} <= set(_find(shown, "ndcg@20"))  # and both headline figures, none missing (`!`)

    diff = json.loads(_run(project, str(DVC), "metrics", "diff", "HEAD", "--json"))
    assert diff["metrics/headline.json"]["ml-100k.best.ndcg@20"] == {"old": base, "new": new,
                                                                    "diff": new - base}
    params = json.loads(_run(project, str(DVC), "params", "diff", "HEAD", "--json"))
    assert params["params.yaml"]["popularity.min_rating"]["old"] == 1
    assert params["params.yaml"]["popularity.min_rating"]["new"] == 4

    plots = json.loads(_run(project, str(DVC), "plots", "diff", "HEAD", "--json"))
    assert not plots.get("errors"), plots["errors"]
    (summary,) = plots["data"]["summary"]
    assert summary["type"] == "vega" and summary["content"]["facet"]["row"]["field"] == "domain"  # our template
    values = summary["content"]["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD", "workspace"}
    assert {v["test_ndcg@20"] for v in values} == {base, new}
