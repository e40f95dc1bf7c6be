"""The evaluation protocol every stage uses (see docs/architecture.md).

- valid: relevant = validation items; training items masked.
- test:  relevant = test items; training and validation items masked (the user's whole known past).
- cold:  candidates = the domain's held-out cold-start items only; relevant = the user's interactions with them.
All full ranking over the domain's catalogue (or the cold candidates), no sampled negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from m6rec.data.dataset import DomainData
from m6rec.evaluation.metrics import ranking_metrics, rating_metrics

ScoreFn = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class EvaluateParams:
    """params.yaml `evaluate`: metric settings shared by every stage, and the `evaluate` stage's own files."""

    ks: tuple[int, ...] = (10, 20)  # cut-offs for Recall/NDCG/Hit/Precision/Coverage
    batch_users: int = 2048  # users scored per batch in full-ranking evaluation
    select_metric: str = "ndcg@20"  # validation metric for early stopping and model selection
    inputs: tuple[str, ...] = ("metrics/baselines.json",)  # metrics files the evaluate stage compares
    summary: str = "metrics/summary.json"  # per-domain comparison (evaluate stage)
    plot: str = "plots/summary.json"  # rows (domain, model, metric) for dvc plots
    report: str = "reports/summary.md"  # human-readable comparison table
    metric: str = "ndcg@20"  # the test metric models are compared on
    reference: str = "mostpop"  # the floor every model is compared with


def evaluate_split(score_fn: ScoreFn, data: DomainData, split: str, ks: Sequence[int] = (10, 20),
                   batch_users: int = 2048, progress: bool = False) -> dict[str, float]:
    if split == "valid":
        return ranking_metrics(score_fn, data.train, data.valid, ks=ks, batch_users=batch_users, progress=progress)
    if split == "test":
        return ranking_metrics(score_fn, data.train, data.test, ks=ks, batch_users=batch_users,
                               exclude=data.valid, progress=progress)
    if split == "cold":
        if not data.cold_items.any():
            return {}
        return ranking_metrics(score_fn, data.train, data.cold, ks=ks, batch_users=batch_users,
                               exclude=data.valid, candidates=data.cold_items, progress=progress)
    raise ValueError(f"unknown evaluation split '{split}' (valid, test, cold)")


def evaluate_domain(score_fn: ScoreFn, data: DomainData, ks: Sequence[int] = (10, 20),
                    splits: Sequence[str] = ("valid", "test"), batch_users: int = 2048) -> dict[str, dict[str, float]]:
    return {s: evaluate_split(score_fn, data, s, ks, batch_users) for s in splits}


def evaluate_ratings(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], data: DomainData,
                     split: str = "test") -> dict[str, float]:
    """RMSE/MAE of a rating predictor on an explicit-feedback domain's split."""
    frame = data.frames[split]
    pred = predict(frame["user"].to_numpy(), frame["item"].to_numpy())
    return rating_metrics(pred, frame["value"].to_numpy())
