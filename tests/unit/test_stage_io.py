"""stage_io's writer: durations out of the DVC outs, headline figures for `dvc metrics show`."""

from __future__ import annotations

import json
from pathlib import Path

from m6rec.stage_io import headline, split_timings, timings_path, write_json, write_metrics

RESULT = {"valid": {"ndcg@10": 0.1, "ndcg@20": 0.2, "recall@20": 0.3, "hit@20": 0.5, "auc": 0.7,
                    "mrr": 0.4},
          "test": {"ndcg@20": 0.25, "precision@10": 0.01, "rmse": 0.9}, "cold": {"ndcg@20": 0.05},
          "fit_s": 1.5, "eval_s": 0.5, "best_epoch": 3}


def test_split_timings_moves_every_duration_and_keeps_the_nesting():
    kept, timings = split_timings({"d": {"m": RESULT}, "rows": [{"epoch": 1, "epoch_s": 2.0}, {"epoch": 2}]})
    assert kept["d"]["m"]["best_epoch"] == 3 and "fit_s" not in kept["d"]["m"] and kept["rows"][0] == {"epoch": 1}
    assert timings == {"d": {"m": {"fit_s": 1.5, "eval_s": 0.5}}, "rows": [{"epoch_s": 2.0}, None]}
    assert split_timings({"a": 1}) == ({"a": 1}, None)


def test_headline_keeps_three_ranking_figures_rmse_and_auc():
    top = headline({"d": {"m": RESULT}})["d"]["m"]
    assert top == {"valid": {"ndcg@10": 0.1, "ndcg@20": 0.2, "recall@20": 0.3, "auc": 0.7},
                   "test": {"ndcg@20": 0.25, "rmse": 0.9}, "fit_s": 1.5, "eval_s": 0.5, "best_epoch": 3}


def test_write_metrics_writes_full_headline_and_timings(tmp_path: Path):
    path = tmp_path / "metrics" / "stage.json"
    write_metrics(path, {"d": {"m": RESULT}})
    full = json.loads(path.read_text())["d"]["m"]
    assert full["cold"] == {"ndcg@20": 0.05} and "fit_s" not in full
    top = json.loads((tmp_path / "metrics" / "stage.headline.json").read_text())["d"]["m"]
    assert "cold" not in top and "fit_s" not in top and "hit@20" not in top["valid"]
    assert json.loads((tmp_path / "reports" / "timings" / "stage.json").read_text()) == {
        "d": {"m": {"fit_s": 1.5, "eval_s": 0.5}}}
    assert not (tmp_path / "reports" / "timings" / "stage.headline.json").exists()


def test_write_json_without_timings_writes_no_timings_file(tmp_path: Path):
    write_json(tmp_path / "plots" / "p.json", [{"epoch": 1, "loss": 0.5}])
    assert not timings_path(tmp_path / "plots" / "p.json").exists()
    assert timings_path(tmp_path / "plots" / "p.json") == tmp_path / "reports" / "timings" / "p.plot.json"
    assert timings_path(tmp_path / "x.json") == tmp_path / "x.timings.json"
