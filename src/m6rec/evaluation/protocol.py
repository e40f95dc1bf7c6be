"""The evaluation protocol every stage uses (see docs/architecture.md). It takes a model (the contract of
:mod:`m6rec.models.base`), not a score function.

- valid: relevant = validation items; training items masked; a history model sees the training items.
- test:  relevant = test items; training and validation items masked (the user's whole known past); a history
  model sees train + valid.
- cold:  candidates = the domain's held-out cold-start items only; relevant = the user's interactions with them;
  masked and seen as for test.
All full ranking over the domain's catalogue (or the cold candidates), no sampled negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.data.sequences import split_histories
from m6rec.evaluation.metrics import ranking_metrics, rating_metrics
from m6rec.models.base import Recommender

ScoreFn = Callable[[np.ndarray], torch.Tensor]
SPLITS = ("valid", "test", "cold")


def score_fn(model: Recommender, data: DomainData, split: str) -> ScoreFn:
    """``users -> model.full_scores(...)`` with the input the protocol allows for `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown evaluation split '{split}' ({', '.join(SPLITS)})")
    history = split_histories(data, model.history_len)[split] if model.history_len else None

    def score(users: np.ndarray) -> torch.Tensor:
        return model.full_scores(data.name, users, None if history is None else history[users])

    return score


def evaluate_split(score: ScoreFn, data: DomainData, split: str, ks: Sequence[int] = (10, 20),
                    batch_users: int = 2048, users: np.ndarray | None = None,
                    progress: bool = False) -> dict[str, float]:
    """The protocol's masks and relevance for `split` around any score function (e.g. a serving bundle's)."""
    kw = dict(ks=ks, batch_users=batch_users, users=users, progress=progress)
    if split == "valid":
        return ranking_metrics(score, data.train, data.valid, **kw)
    if split == "test":
        return ranking_metrics(score, data.train, data.test, exclude=data.valid, **kw)
    if split == "cold":
        if not data.cold_items.any():
            return {}
        return ranking_metrics(score, data.train, data.cold, exclude=data.valid, candidates=data.cold_items, **kw)
    raise ValueError(f"unknown evaluation split '{split}' ({', '.join(SPLITS)})")


def evaluate(model: Recommender, data: DomainData, split: str, protocol: ProtocolParams,
             users: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
    """Full-ranking metrics of `model` on one split of one domain (`users`: a subset to rank, e.g. for early
    stopping); ``{}`` for a cold split of a domain without cold items."""
    return evaluate_split(score_fn(model, data, split), data, split, protocol.ks, protocol.batch_users, users,
                           progress)


def evaluate_domain(model: Recommender, data: DomainData, protocol: ProtocolParams,
                    splits: Sequence[str] = ("valid", "test")) -> dict[str, dict[str, float]]:
    """``{split: metrics}``, splits without anything to evaluate left out."""
    out = {s: evaluate(model, data, s, protocol) for s in splits}
    return {s: m for s, m in out.items() if m}


def evaluate_domains(model: Recommender, datas: dict[str, DomainData], splits: Sequence[str],
                     protocol: ProtocolParams) -> dict[str, dict[str, dict[str, float]]]:
    """``{domain: {split: metrics}}`` of a model over several domains (splits without anything to evaluate, such as
    cold on a domain without cold items, left out)."""
    return {d: evaluate_domain(model, data, protocol, splits) for d, data in datas.items()}


def evaluate_ratings(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], data: DomainData,
                     split: str = "test") -> dict[str, float]:
    """RMSE/MAE of a rating predictor on an explicit-feedback domain's split."""
    frame = data.frames[split]
    pred = predict(frame["user"].to_numpy(), frame["item"].to_numpy())
    return rating_metrics(pred, frame["value"].to_numpy())
