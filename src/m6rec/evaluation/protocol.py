"""The evaluation protocol every stage uses (see docs/architecture.md). It takes a model (the contract of
:mod:`m6rec.models.base`), not a score function.

- valid: relevant = validation items; training items masked; every model sees the training items only.
- test:  relevant = test items; training and validation items masked (the user's whole known past); every model
  sees what the service serves, everything known before the test period: train + valid (``protocol.test_input:
  train_valid``, the default; ``train`` scores from the training items only, for comparison).
- cold:  candidates = the domain's held-out cold-start items only; relevant = the user's interactions with them;
  masked and seen as for test.
All full ranking over the domain's catalogue (or the cold candidates), no sampled negatives.

The input (``history`` of :meth:`m6rec.models.base.Recommender.full_scores`): a history model (``history_len >
0``) gets the last ``history_len`` items of the input splits (:func:`input_histories`); every other model gets the
users' rows of the input splits as a binary csr ``[B, n_items]`` (:func:`input_rows`) where the input goes beyond
what it was fitted on (test / cold with ``train_valid``), and None otherwise (its fitted user representation *is*
the training input): factor models fold the rows in, item-item models score them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

import scipy.sparse as sp

from m6rec.config import TEST_INPUTS, ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.data.sequences import last_items, user_sequences
from m6rec.evaluation.metrics import ranking_metrics, rating_metrics
from m6rec.models.base import Recommender

ScoreFn = Callable[[np.ndarray], torch.Tensor]
SPLITS = ("valid", "test", "cold")


def input_splits(split: str, test_input: str = "train_valid") -> tuple[str, ...]:
    """The interaction splits a model may see of a user when scored for `split` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown evaluation split '{split}' ({', '.join(SPLITS)})")
    if test_input not in TEST_INPUTS:
        raise ValueError(f"unknown test input '{test_input}' ({', '.join(TEST_INPUTS)})")
    return ("train",) if split == "valid" or test_input == "train" else ("train", "valid")


def input_rows(data: DomainData, split: str, test_input: str = "train_valid") -> sp.csr_matrix:
    """Binary csr ``[n_users, n_items]``: every user's interactions of :func:`input_splits` (the rows a factor
    model folds in and an item-item model scores; also what the serving bundle is built from at ``train_valid``)."""
    rows = sum((getattr(data, s) for s in input_splits(split, test_input)), sp.csr_matrix(data.train.shape,
                                                                                           dtype=np.float32))
    rows = sp.csr_matrix(rows, dtype=np.float32)
    rows.data[:] = 1.0
    rows.sort_indices()
    return rows


def input_histories(data: DomainData, max_len: int, split: str, test_input: str = "train_valid") -> np.ndarray:
    """int64 ``[n_users, max_len]``: every user's last `max_len` items of :func:`input_splits`, oldest first,
    right-aligned, -1 padded (a history model's input)."""
    return last_items(user_sequences(data, input_splits(split, test_input)), max_len)


def score_fn(model: Recommender, data: DomainData, split: str, test_input: str = "train_valid") -> ScoreFn:
    """``users -> model.full_scores(...)`` with the input the protocol allows for `split`."""
    sources = input_splits(split, test_input)
    if model.history_len:
        history = input_histories(data, model.history_len, split, test_input)
    else:  # the fitted user representation is the training input: pass rows only where the input goes beyond it
        history = input_rows(data, split, test_input) if sources != ("train",) else None

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
    return evaluate_split(score_fn(model, data, split, protocol.test_input), data, split, protocol.ks,
                          protocol.batch_users, users, progress)


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
