"""Evaluating a history model: full ranking through the shared protocol, plus rating RMSE/MAE and like AUC on the
split's own interactions (each scored with the user's history as the protocol defines it for that split)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.data.negatives import KnownPairs, reject_known
from m6rec.data.sequences import history_window, user_sequences, window_mean
from m6rec.evaluation.metrics import rating_metrics
from m6rec.evaluation.protocol import evaluate, input_histories, input_splits
from m6rec.model_params import TrainParams
from m6rec.models.multitask import Catalogue, MultiTaskRecommender

log = logging.getLogger(__name__)


def split_history_ratings(data: DomainData, max_len: int, test_input: str = "train_valid"
                          ) -> dict[str, np.ndarray]:
    """Mean rating of each user's :func:`m6rec.evaluation.protocol.input_histories` window per split (NaN on
    implicit domains or without history)."""
    out = {}
    for split in ("valid", "test", "cold"):
        seq = user_sequences(data, input_splits(split, test_input))
        out[split] = (window_mean(seq, seq.indptr[1:], seq.indptr[:-1], max_len) if data.explicit
                      else np.full(data.n_users, np.nan))
    return out


def split_inputs(data: DomainData, max_len: int, test_input: str = "train_valid") -> dict[str, np.ndarray]:
    """``{split: input_histories}`` for valid, test and cold."""
    return {s: input_histories(data, max_len, s, test_input) for s in ("valid", "test", "cold")}


def _pair_outputs(model: MultiTaskRecommender, domain: int, history: np.ndarray, rating: np.ndarray,
                  users: np.ndarray, items: np.ndarray, cat: Catalogue, batch: int = 4096) -> dict[str, np.ndarray]:
    """predict_pairs over (row ``users[i]`` of `history` / `rating`, ``items[i]``) in batches."""
    out: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(users), batch):
        rows = users[s:s + batch]
        res = model.predict_pairs(domain, torch.from_numpy(history[rows]), torch.from_numpy(items[s:s + batch]),
                                  cat, torch.from_numpy(rating[rows].astype(np.float32)))
        for k, v in res.items():
            if k != "attention":
                out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def calibrate(model: MultiTaskRecommender, domain: int, data: DomainData, cat: Catalogue,
              max_pairs: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Fit the model's ``rating ~ a + b * score`` (:meth:`MultiTaskRecommender.calibrate_ratings`) over (a sample
    of) the training pairs, each scored with its own past."""
    max_len = model.history_len
    seq = user_sequences(data, ("train",))
    flat = np.arange(len(seq.items))
    if len(flat) > max_pairs:
        flat = np.sort(np.random.default_rng(seed).choice(flat, max_pairs, replace=False))
    owners = np.searchsorted(seq.indptr, flat, side="right") - 1
    hist = history_window(seq, flat, seq.indptr[owners], max_len)
    rating = window_mean(seq, flat, seq.indptr[owners], max_len)
    scores = _pair_outputs(model, domain, hist, rating, np.arange(len(flat)), seq.items[flat], cat)["score"]
    return model.calibrate_ratings(domain, torch.from_numpy(scores), torch.from_numpy(seq.values[flat]))


def pair_metrics(model: MultiTaskRecommender, domain: int, data: DomainData, split: str, history: np.ndarray,
                 history_rating: np.ndarray, cat: Catalogue, like_threshold: float, seed: int = 0
                 ) -> dict[str, float]:
    """RMSE/MAE (explicit domains) and like AUC on the split's interactions.

    AUC positives: liked interactions (rating >= threshold, or any on implicit domains); negatives: disliked
    interactions plus one sampled never-interacted, non-cold item per interaction. The like head scores them when
    the model trained it, else the retrieval score does. Ratings come from the rating head, else from the model's
    calibration of its score (:func:`calibrate`), else there is no RMSE.
    """
    frame = data.frames[split]
    if frame.empty:
        return {}
    users = frame["user"].to_numpy(np.int64, copy=True)
    items = frame["item"].to_numpy(np.int64, copy=True)
    values = frame["value"].to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(~data.cold_items)
    frames = pd.concat([data.frames[s] for s in ("train", "valid", "test", "cold")])
    known = KnownPairs(frames["user"].to_numpy(np.int64), frames["item"].to_numpy(np.int64), data.n_items)
    neg = reject_known(pool[rng.integers(0, len(pool), len(users))],
                       lambda idx, items: known.contains(users[idx], items),
                       lambda idx: pool[rng.integers(0, len(pool), len(idx))], rounds=5)
    pos_out = _pair_outputs(model, domain, history, history_rating, users, items, cat)
    neg_out = _pair_outputs(model, domain, history, history_rating, users, neg, cat)
    use_like = model.task_weights["like"] > 0
    like_key = "like" if use_like else "score"
    labels = np.concatenate([(values >= like_threshold) if data.explicit else np.ones(len(users), bool),
                             np.zeros(len(users), bool)])
    out: dict[str, float] = {}
    if labels.all() or not labels.any():
        log.warning("%s %s: AUC undefined (one class only)", data.name, split)
    else:
        out["auc"] = float(roc_auc_score(labels, np.concatenate([pos_out[like_key], neg_out[like_key]])))
    if data.explicit and "rating" in pos_out:
        out.update(rating_metrics(pos_out["rating"], values))
    return out


def evaluate_model(model: MultiTaskRecommender, datas: dict[str, DomainData], splits: tuple[str, ...],
                   protocol: ProtocolParams, train: TrainParams, users: dict[str, np.ndarray] | None = None,
                   pairs: bool = True) -> dict[str, dict]:
    """``{domain: {split: metrics}}``: full-ranking metrics (:func:`m6rec.evaluation.protocol.evaluate`) plus
    RMSE/AUC when `pairs` (`train`: the like threshold and the sampling seed).

    `users`: restrict the *valid* ranking to these users per domain (test always covers every user).
    """
    model.eval()
    out: dict[str, dict] = {}
    with torch.no_grad():
        for d, data in datas.items():
            k = model.domain_index(d)
            cat = model.cached_catalogue(k)
            hists = split_inputs(data, model.history_len, protocol.test_input) if pairs else {}
            ratings = split_history_ratings(data, model.history_len, protocol.test_input) if pairs else {}
            if pairs and data.explicit and model.task_weights["rating"] == 0:
                calibrate(model, k, data, cat, seed=train.seed)
            res: dict[str, dict] = {}
            for split in splits:
                subset = users[d] if split == "valid" and users is not None and d in users else None
                m = evaluate(model, data, split, protocol, users=subset)
                if not m:
                    continue
                if pairs and split in ("valid", "test"):
                    m.update(pair_metrics(model, k, data, split, hists[split], ratings[split], cat,
                                          train.like_threshold, seed=train.seed))
                res[split] = m
            out[d] = res
    return out
