"""The evaluate stage's comparison logic."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from m6rec.stages import evaluate
from tests.data_fixtures import REPO


def test_summary_picks_the_best_model_and_compares_with_popularity(tmp_path: Path):
    base = {"ml-100k": {"mostpop": {"valid": {"ndcg@20": 0.1}, "test": {"ndcg@20": 0.12, "ndcg@10": 0.1,
                                                                          "recall@20": 0.2, "hit@20": 0.5}},
                        "bprmf": {"valid": {"ndcg@20": 0.15}, "test": {"ndcg@20": 0.18}},
                        "als": {"valid": {"rmse": 1.0}, "test": {"rmse": 1.0}}}}
    pre = {"ml-100k": {"lightgcn": {"valid": {"ndcg@20": 0.16}, "test": {"ndcg@20": 0.2, "ndcg@10": 0.15,
                                                                         "recall@20": 0.3, "mrr": 0.4},
                                    "cold": {"ndcg@20": 0.05}}}}
    (tmp_path / "baselines.json").write_text(json.dumps(base))
    (tmp_path / "pretrain.json").write_text(json.dumps(pre))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(inputs=[str(tmp_path / "baselines.json"), str(tmp_path / "pretrain.json")],
                              summary=str(tmp_path / "s.json"), plot=str(tmp_path / "p.json"),
                              headline=str(tmp_path / "h.json"),
                              report=str(tmp_path / "r.md"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main(["--params", str(tmp_path / "params.yaml")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())["ml-100k"]
    assert summary["best_model"] == "pretrain/lightgcn"
    assert summary["mostpop_test_ndcg@20"] == 0.12
    assert list(summary["models"]) == ["pretrain/lightgcn", "baselines/bprmf", "baselines/mostpop"]  # als has no ndcg
    assert "| pretrain/lightgcn | 0.2000 | 1.67x |" in (tmp_path / "r.md").read_text()
    # The headline (the DVC metric): per domain the best model and the reference, three test figures each.
    assert json.loads((tmp_path / "h.json").read_text()) == {"ml-100k": {
        "best_model": "pretrain/lightgcn", "best": {"ndcg@10": 0.15, "ndcg@20": 0.2, "recall@20": 0.3},
        "mostpop": {"ndcg@10": 0.1, "ndcg@20": 0.12, "recall@20": 0.2}}}
    # The plot rows facet by domain: the model names carry no domain.
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0] == {"domain": "ml-100k", "model": "pretrain/lightgcn", "test_ndcg@20": 0.2}


def test_missing_metrics_file_is_a_clear_error(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"]["inputs"] = [str(tmp_path / "nope.json")]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        evaluate.main(["--params", str(tmp_path / "params.yaml")])
    except SystemExit as exc:
        assert "nope.json not found" in str(exc)
    else:
        raise AssertionError("a missing metrics file must stop the stage")
