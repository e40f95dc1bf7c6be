"""Training a history model: (history -> next item) examples per epoch, early stopping on validation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.data.negatives import KnownPairs, reject_known
from m6rec.data.sequences import Sequences, history_window, user_sequences, window_mean
from m6rec.evaluation.protocol import evaluate
from m6rec.model_params import TrainParams
from m6rec.models.multitask import Batch, MultiTaskRecommender
from m6rec.training.loop import fit

log = logging.getLogger(__name__)


@dataclass
class _DomainExamples:
    index: int  # domain index in the model
    seq: Sequences
    users: np.ndarray  # users whose examples are drawn
    pool: np.ndarray  # items allowed as negatives (not cold-start)
    explicit: bool
    known: KnownPairs  # every known interaction (train, valid, test)
    n_items: int


class ExampleSampler:
    """Per epoch, up to `examples_per_user` (history -> next item) examples per user and domain, in shuffled
    single-domain batches with fresh negatives. Targets are training items at positions >= 1 (at least one item of
    history); the history is the `max_len` items before the target."""

    def __init__(self, datas: dict[str, DomainData], domain_index: dict[str, int], cfg: TrainParams, max_len: int,
                 users: dict[str, np.ndarray] | None = None) -> None:
        self.cfg, self.max_len = cfg, max_len
        self.rng = np.random.default_rng(cfg.seed)
        self.domains: list[_DomainExamples] = []
        for d, data in datas.items():
            seq = user_sequences(data, ("train",))
            chosen = np.arange(data.n_users) if users is None or d not in users else np.unique(users[d])
            pool = np.flatnonzero(~data.cold_items).astype(np.int64)
            known = pd.concat([data.frames[s] for s in ("train", "valid", "test")])
            known_pairs = KnownPairs(known["user"].to_numpy(np.int64), known["item"].to_numpy(np.int64), data.n_items)
            self.domains.append(_DomainExamples(domain_index[d], seq, chosen, pool, data.explicit, known_pairs,
                                                data.n_items))

    def _positions(self, ex: _DomainExamples) -> np.ndarray:
        """Flat sequence positions of this epoch's targets."""
        lengths = np.diff(ex.seq.indptr)[ex.users]
        n_pos = np.maximum(lengths - 1, 0)
        owner = np.repeat(ex.users, n_pos)
        if not len(owner):
            return np.zeros(0, dtype=np.int64)
        local = np.arange(len(owner)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos) + 1  # 1..len-1
        flat = ex.seq.indptr[owner] + local
        # Keep a random `examples_per_user` of each user's positions: rank random keys within the user.
        order = np.lexsort((self.rng.random(len(owner)), owner))
        rank = np.arange(len(owner)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
        keep = order[rank < self.cfg.examples_per_user]
        return flat[keep]

    def _like_negatives(self, ex: _DomainExamples, users: np.ndarray) -> np.ndarray:
        def draw(idx: np.ndarray) -> np.ndarray:
            return ex.pool[self.rng.integers(0, len(ex.pool), len(idx))]

        return reject_known(draw(users), lambda idx, items: ex.known.contains(users[idx], items), draw, rounds=3)

    def epoch(self, batch_size: int | None = None) -> list[Batch]:
        """This epoch's batches, every domain's shuffled together."""
        batch_size = batch_size or self.cfg.batch_size
        batches: list[Batch] = []
        for ex in self.domains:
            flat = self.rng.permutation(self._positions(ex))
            if not len(flat):
                continue
            owners = np.searchsorted(ex.seq.indptr, flat, side="right") - 1
            hist = history_window(ex.seq, flat, ex.seq.indptr[owners], self.max_len)
            target = ex.seq.items[flat]
            values = ex.seq.values[flat]
            like = (values >= self.cfg.like_threshold) if ex.explicit else np.ones(len(flat), dtype=bool)
            rating = values if ex.explicit else np.full(len(flat), np.nan)
            like_neg = self._like_negatives(ex, owners)
            hist_rating = (window_mean(ex.seq, flat, ex.seq.indptr[owners], self.max_len) if ex.explicit
                           else np.full(len(flat), np.nan))
            for s in range(0, len(flat), batch_size):
                sl = slice(s, s + batch_size)
                negs = ex.pool[self.rng.integers(0, len(ex.pool), self.cfg.negatives)]
                batches.append(Batch(
                    domain=ex.index, history=torch.from_numpy(hist[sl]), target=torch.from_numpy(target[sl]),
                    negatives=torch.from_numpy(negs), like_negatives=torch.from_numpy(like_neg[sl]),
                    rating=torch.from_numpy(rating[sl].astype(np.float32)),
                    like=torch.from_numpy(like[sl].astype(np.float32)),
                    history_rating=torch.from_numpy(hist_rating[sl].astype(np.float32))))
        order = self.rng.permutation(len(batches))
        return [batches[i] for i in order]


def validation_users(datas: dict[str, DomainData], n: int, seed: int,
                     among: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per domain, at most `n` (0 = all) seeded users with validation items (from `among` if given)."""
    rng = np.random.default_rng(seed)
    out = {}
    for d, data in datas.items():
        users = np.flatnonzero(np.diff(data.valid.indptr) > 0)
        if among is not None and d in among:
            users = np.intersect1d(users, among[d])
        if n and len(users) > n:
            users = np.sort(rng.choice(users, n, replace=False))
        out[d] = users
    return out


def train_model(model: MultiTaskRecommender, datas: dict[str, DomainData], cfg: TrainParams,
                protocol: ProtocolParams, users: dict[str, np.ndarray] | None = None, progress: bool = True,
                name: str = "multitask") -> dict:
    """Train the parameters that require grad, early stopping on the mean validation `select_metric` of the
    domains (validated on `users`' validation items only when given); returns fit info."""
    max_len = model.encoder.max_len
    sampler = ExampleSampler(datas, {d: model.domain_index(d) for d in datas}, cfg, max_len, users)
    valid_users = validation_users(datas, cfg.valid_users, cfg.seed, users)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def validate() -> float:
        model.eval()
        res = [evaluate(model, data, "valid", protocol, users=valid_users[d]) for d, data in datas.items()]
        return float(np.mean([r[protocol.select_metric] for r in res if r]))

    hist = fit(model, lambda epoch: sampler.epoch(), optimizer, cfg.epochs, validate=validate,
               eval_every=cfg.eval_every, patience=cfg.patience, progress=progress, name=name)
    model.eval()
    return {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "fit_s": hist.seconds,
            "initial_valid": hist.initial_metric, "best_valid": hist.best_metric, "losses": hist.losses}
