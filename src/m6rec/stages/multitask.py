"""Stage `multitask`: history attention + multi-task heads over the pretrained item vectors, one model for all domains.

Reads the pretrained LightGCN (`pretrain` stage; with the graph of the `graph` stage to propagate it once) and the
validated data. Item vectors start as the pretrained ones (``m6rec.models.multitask`` explains the split into a frozen
base, a trainable residual and the text projection); a user is their last ``max_len`` items. Trains, on all
`domains` jointly, each of the `variants`:

- ``attention_mt`` / ``mean_mt``: target attention / mean-pooled history, retrieval + rating + like heads;
- ``attention_st`` / ``mean_st``: the same, retrieval only (single-task).

Evaluates every variant on valid and test (full ranking; RMSE of the rating head on explicit domains; AUC of the
like head), saves the `save_variant` as a self-describing checkpoint, and writes for a few real users the top
recommendations with the history items that attention credits for them.

Outputs: `out_dir`/model.pt, `metrics` ({domain: {variant: {valid, test, fit_s}}}), `plot` (test NDCG@20 per
domain/variant), `explanations` (markdown).

Retrieval-only (``*_st``) variants have no trained rating or like head: their RMSE is that of the best affine map
``a + b * score`` fitted on training pairs, their AUC that of the retrieval score itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from m6rec.config import ConfigError, TrackingParams, section
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.data.sequences import Sequences, history_window, split_histories, user_sequences, window_mean
from m6rec.evaluation.metrics import ranking_metrics, rating_metrics
from m6rec.evaluation.protocol import EvaluateParams, evaluate_split
from m6rec.models.multitask import Batch, Catalogue, MultiTaskRecommender
from m6rec.runtime import set_threads
from m6rec.serving.bundle import (DomainBundle, HistoryScorer, export_bundle, make_domain_bundle,
                                  raw_user_ids)
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.training.loop import fit
from m6rec.stages.cli import stage_params

log = logging.getLogger(__name__)

CHECKPOINT = "model.pt"
PRETRAIN_CHECKPOINT = "model.pt"
VARIANTS = {  # name -> (pooling, multi-task)
    "attention_mt": ("attention", True),
    "attention_st": ("attention", False),
    "mean_mt": ("mean", True),
    "mean_st": ("mean", False),
}


@dataclass(frozen=True)
class MultitaskParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    pretrain_dir: str = "models/pretrain"  # pretrained LightGCN checkpoint (model.pt)
    graph_dir: str = "data/graph"  # the graph the checkpoint was trained on (to propagate item vectors once)
    out_dir: str = "models/multitask"  # model.pt of `save_variant`
    metrics: str = "metrics/multitask.json"  # {domain: {variant: {valid, test, fit_s}}}
    plot: str = "plots/multitask.json"  # test NDCG@20 per domain/variant
    explanations: str = "reports/explanations.md"  # top recommendations with the history items attention credits
    bundle: str = "models/multitask/bundle"  # serving bundle of `save_variant` (history scorer; finetune extends it)
    domains: tuple[str, ...] = ()  # training domains; () = every source domain of the pretrained model
    variants: tuple[str, ...] = tuple(VARIANTS)  # which of attention_mt, attention_st, mean_mt, mean_st to train
    save_variant: str = "attention_mt"  # the variant saved for fine-tuning and explained
    # parameter groups trained (m6rec.models.multitask.GROUPS); the per-item residuals are left out by default:
    # free per-item vectors overfit the next-item objective within an epoch and undo the pretraining
    train_groups: tuple[str, ...] = ("encoder", "heads", "adapters", "text_projection")
    max_len: int = 50  # history items kept per user (most recent)
    n_interests: int = 4  # K interest vectors of the attention pooling
    hidden: int = 64  # attention key size and task-tower width
    use_position: bool = True  # learn a recency bias per domain and interest (attention pooling)
    recency_init: float = 5.0  # slope of the recency prior: the oldest column starts at -this, the newest at 0
    gate_scale: float = 5.0  # initial sharpness of the target attention over interests (learned)
    w_retrieval: float = 1.0  # task weight of the sampled-softmax retrieval loss
    w_rating: float = 0.5  # task weight of the rating MSE (explicit domains)
    w_like: float = 0.5  # task weight of the like BCE
    like_threshold: float = 4.0  # explicit domains: a rating >= this is a like
    temperature: float = 1.0  # initial retrieval softmax temperature (learned); 1 suits pretrained dot products
    examples_per_user: int = 5  # (history -> next item) examples drawn per user and epoch
    negatives: int = 256  # shared uniform retrieval negatives per batch
    batch_size: int = 512  # examples per batch (one domain per batch)
    epochs: int = 3  # maximum epochs
    lr: float = 0.003  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    eval_every: int = 1  # validate every N epochs (early stopping on evaluate.select_metric)
    patience: int = 2  # validations without improvement before stopping
    valid_users: int = 500  # users per domain sampled for early-stopping validation (0 = all)
    eval_batch_users: int = 256  # users per full-ranking batch (memory ~ batch x K x n_items floats)
    explain_users: int = 3  # users per domain in the explanations report
    explain_top: int = 3  # recommendations per user, and history items shown per recommendation
    seed: int = 42  # torch, sampling and subset seed


@dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by the multitask and finetune stages."""

    examples_per_user: int = 20
    negatives: int = 256
    batch_size: int = 512
    epochs: int = 4
    lr: float = 0.003
    weight_decay: float = 0.0
    eval_every: int = 1
    patience: int = 2
    valid_users: int = 1000
    eval_batch_users: int = 256
    like_threshold: float = 4.0
    seed: int = 42


def train_config(cfg) -> TrainConfig:
    """The :class:`TrainConfig` fields of a stage's params dataclass."""
    return TrainConfig(**{k: getattr(cfg, k) for k in TrainConfig.__dataclass_fields__})


# ---- item inputs from pretraining ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainedItems:
    """Per-domain item inputs derived from a pretrained model, in the layout :class:`MultiTaskRecommender` takes.

    ``base[d]``: the pretrained (propagated) item vector minus the item's own text term ``text_scale * W t_i``;
    ``text[d]``: sentence vectors (zero rows for items without text; None without text); ``text_weight``: ``W``
    ``[dim, text_dim]`` (None: the model's own initialisation).
    """

    base: dict[str, np.ndarray]
    text: dict[str, np.ndarray | None]
    text_weight: np.ndarray | None
    text_scale: float
    source_domains: tuple[str, ...]
    encoder: str | None = None
    encoder_max_seq_length: int | None = None

    @property
    def dim(self) -> int:
        return int(next(iter(self.base.values())).shape[1])

    @property
    def text_dim(self) -> int:
        if self.text_weight is not None:
            return int(self.text_weight.shape[1])
        return next((int(t.shape[1]) for t in self.text.values() if t is not None), 0)


def pretrained_items(model, meta: dict) -> PretrainedItems:
    """Split a :class:`m6rec.models.lightgcn.TextLightGCN` (graph attached) into per-domain item inputs."""
    model.eval()
    with torch.no_grad():
        _, items = model()
        alpha0 = float(model.alpha[0])
        text_full, weight = None, None
        if model.text_proj is not None:
            direct = torch.zeros_like(items)
            direct[model.text_items] = alpha0 * model.text_vectors(model.text_feats)
            items = items - direct
            text_full = torch.zeros(model.n_items, model.text_dim, dtype=model.text_feats.dtype)
            text_full[model.text_items] = model.text_feats
            weight = model.text_proj.weight.detach().float().numpy().copy()
    base, text = {}, {}
    for d in meta["domains"]:
        off, n = int(meta["item_offsets"][d]), int(meta["n_items"][d])
        base[d] = items[off:off + n].float().numpy().copy()
        text[d] = None if text_full is None else text_full[off:off + n].numpy().copy()
    return PretrainedItems(base=base, text=text, text_weight=weight, text_scale=alpha0,
                           source_domains=tuple(meta.get("source_domains", meta["domains"])),
                           encoder=meta.get("encoder"), encoder_max_seq_length=meta.get("encoder_max_seq_length"))


def load_pretrained(pretrain_dir: str | Path, graph_dir: str | Path) -> PretrainedItems:
    """Read the `pretrain` stage's checkpoint, attach its graph and derive the item inputs."""
    from m6rec.graph.build import load_graph

    model, info = load_checkpoint(Path(pretrain_dir) / PRETRAIN_CHECKPOINT)
    graph = load_graph(graph_dir)
    meta = info["meta"]
    if list(graph.domains) != list(meta["domains"]):
        raise ValueError(f"graph in {graph_dir} has domains {list(graph.domains)} but the checkpoint in "
                         f"{pretrain_dir} was trained on {meta['domains']}: rerun the graph and pretrain stages")
    model.set_graph(graph.adj)
    return pretrained_items(model, meta)


def svd_items(datas: dict[str, DomainData], dim: int, seed: int = 0) -> PretrainedItems:
    """Cheap stand-in for pretraining: PureSVD item factors ``V sqrt(S)`` of each domain's training matrix."""
    from scipy.sparse.linalg import svds

    base = {}
    for d, data in datas.items():
        k = max(1, min(dim, min(data.train.shape) - 1))
        v0 = np.random.default_rng(seed).standard_normal(min(data.train.shape))
        _, s, vt = svds(data.train.astype(np.float64), k=k, v0=v0)
        vecs = np.zeros((data.n_items, dim), dtype=np.float32)
        vecs[:, :k] = (vt.T * np.sqrt(s)).astype(np.float32)
        base[d] = vecs
    return PretrainedItems(base=base, text=dict.fromkeys(datas), text_weight=None, text_scale=1.0,
                           source_domains=tuple(datas))


def check_domains(items: PretrainedItems, datas: dict[str, DomainData]) -> None:
    """Catalogue sizes of the data must match the pretrained id space."""
    for d, data in datas.items():
        if d not in items.base:
            raise ValueError(f"domain '{d}' is not in the pretrained model (it has {sorted(items.base)})")
        if items.base[d].shape[0] != data.n_items:
            raise ValueError(f"domain '{d}': the pretrained model has {items.base[d].shape[0]} items, the data "
                             f"{data.n_items}: rerun the pretraining on the current data")


def rating_stats(data: DomainData, users: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of the training ratings of an explicit domain (of `users` only if given); zeros else."""
    if not data.explicit:
        return (0.0, 0.0, 0.0)
    frame = data.frames["train"]
    if users is not None:
        frame = frame[frame["user"].isin(users)]
    values = frame["value"].to_numpy(dtype=np.float64)
    return (float(values.mean()), float(values.min()), float(values.max()))


ARCH_KEYS = ("max_len", "n_interests", "hidden", "use_position", "recency_init", "gate_scale", "temperature")


def architecture(cfg) -> dict:
    """Constructor arguments of :class:`MultiTaskRecommender` taken from a params section."""
    return {k: getattr(cfg, k) for k in ARCH_KEYS}


def ordered_domains(meta: dict, domains) -> dict[str, bool]:
    """Whether each domain's per-user interaction order means something (chronological split) or not."""
    return {d: meta["per_domain"][d].get("split_method", "chronological") == "chronological" for d in domains}


def build_model(items: PretrainedItems, datas: dict[str, DomainData], pooling: str, weights: dict[str, float],
                arch: dict, seed: int, ordered: dict[str, bool] | None = None) -> MultiTaskRecommender:
    """A seeded model over `datas` whose item tables and text projection come from `items` (`arch`: see
    :func:`architecture`). Domains that are not `ordered` get a flat recency prior."""
    check_domains(items, datas)
    torch.manual_seed(seed)
    domains = list(datas)
    model = MultiTaskRecommender(
        domains, [datas[d].n_items for d in domains], [datas[d].explicit for d in domains], dim=items.dim,
        text_dim=items.text_dim, pooling=pooling, task_weights=weights, text_scale=items.text_scale, **arch)
    if items.text_weight is not None:
        with torch.no_grad():
            model.text_proj.weight.copy_(torch.from_numpy(items.text_weight))
    for k, d in enumerate(domains):
        text = items.text[d]
        model.set_items(k, torch.from_numpy(items.base[d]), None if text is None else torch.from_numpy(text),
                        rating_stats(datas[d]))
        if ordered is not None and not ordered.get(d, True):
            model.set_recency(k, 0.0)
    return model


# ---- training examples -----------------------------------------------------------------------------------------
@dataclass
class _DomainExamples:
    index: int  # domain index in the model
    seq: Sequences
    users: np.ndarray  # users whose examples are drawn
    pool: np.ndarray  # items allowed as negatives (not cold-start)
    explicit: bool
    positive_keys: np.ndarray  # sorted user * n_items + item of every known interaction
    n_items: int


class ExampleSampler:
    """Per epoch, up to `examples_per_user` (history -> next item) examples per user and domain, in shuffled
    single-domain batches with fresh negatives. Targets are training items at positions >= 1 (at least one item of
    history); the history is the `max_len` items before the target."""

    def __init__(self, datas: dict[str, DomainData], domain_index: dict[str, int], cfg: TrainConfig, max_len: int,
                 users: dict[str, np.ndarray] | None = None) -> None:
        self.cfg, self.max_len = cfg, max_len
        self.rng = np.random.default_rng(cfg.seed)
        self.domains: list[_DomainExamples] = []
        for d, data in datas.items():
            seq = user_sequences(data, ("train",))
            chosen = np.arange(data.n_users) if users is None or d not in users else np.unique(users[d])
            pool = np.flatnonzero(~data.cold_items).astype(np.int64)
            known = pd.concat([data.frames[s] for s in ("train", "valid", "test")])
            keys = np.unique(known["user"].to_numpy(np.int64) * data.n_items + known["item"].to_numpy(np.int64))
            self.domains.append(_DomainExamples(domain_index[d], seq, chosen, pool, data.explicit, keys,
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
        neg = ex.pool[self.rng.integers(0, len(ex.pool), len(users))]
        for _ in range(3):  # vectorised rejection of known interactions
            keys = users * ex.n_items + neg
            pos = np.minimum(np.searchsorted(ex.positive_keys, keys), len(ex.positive_keys) - 1)
            clash = ex.positive_keys[pos] == keys
            if not clash.any():
                break
            neg[clash] = ex.pool[self.rng.integers(0, len(ex.pool), int(clash.sum()))]
        return neg

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


# ---- evaluation ------------------------------------------------------------------------------------------------
def split_history_ratings(data: DomainData, max_len: int) -> dict[str, np.ndarray]:
    """Mean rating of each user's :func:`split_histories` window (NaN on implicit domains or without history)."""
    out = {}
    for split, source in (("valid", ("train",)), ("test", ("train", "valid"))):
        seq = user_sequences(data, source)
        out[split] = (window_mean(seq, seq.indptr[1:], seq.indptr[:-1], max_len) if data.explicit
                      else np.full(data.n_users, np.nan))
    out["cold"] = out["test"]
    return out


def score_fn(model: MultiTaskRecommender, domain: int, history: np.ndarray, cat: Catalogue):
    """Full-catalogue score function for :func:`m6rec.evaluation.metrics.ranking_metrics`."""
    def score(users: np.ndarray) -> torch.Tensor:
        return model.score(domain, torch.from_numpy(history[users]), cat).scores
    return score


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


def score_calibration(model: MultiTaskRecommender, domain: int, data: DomainData, max_len: int,
                      cat: Catalogue, max_pairs: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Least-squares ``rating ~ a + b * score`` over (a sample of) training pairs, each scored with its own past."""
    seq = user_sequences(data, ("train",))
    flat = np.arange(len(seq.items))
    if len(flat) > max_pairs:
        flat = np.sort(np.random.default_rng(seed).choice(flat, max_pairs, replace=False))
    owners = np.searchsorted(seq.indptr, flat, side="right") - 1
    hist = history_window(seq, flat, seq.indptr[owners], max_len)
    rating = window_mean(seq, flat, seq.indptr[owners], max_len)
    scores = _pair_outputs(model, domain, hist, rating, np.arange(len(flat)), seq.items[flat], cat)["score"]
    a_mat = np.stack([np.ones_like(scores), scores], axis=1).astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(a_mat, seq.values[flat], rcond=None)
    return float(a), float(b)


def pair_metrics(model: MultiTaskRecommender, domain: int, data: DomainData, split: str, history: np.ndarray,
                 history_rating: np.ndarray, cat: Catalogue, like_threshold: float,
                 calibration: tuple[float, float] | None, seed: int = 0) -> dict[str, float]:
    """RMSE/MAE (explicit domains) and like AUC on the split's interactions.

    AUC positives: liked interactions (rating >= threshold, or any on implicit domains); negatives: disliked
    interactions plus one sampled never-interacted, non-cold item per interaction. The like head scores them when
    the model trained it, else the retrieval score does. Ratings come from the rating head, else from
    ``calibration`` (a, b) applied to the score.
    """
    frame = data.frames[split]
    if frame.empty:
        return {}
    users = frame["user"].to_numpy(np.int64, copy=True)
    items = frame["item"].to_numpy(np.int64, copy=True)
    values = frame["value"].to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(~data.cold_items)
    known = pd.concat([data.frames[s] for s in ("train", "valid", "test", "cold")])
    keys = np.unique(known["user"].to_numpy(np.int64) * data.n_items + known["item"].to_numpy(np.int64))
    neg = pool[rng.integers(0, len(pool), len(users))]
    for _ in range(5):
        clash = np.isin(users * data.n_items + neg, keys)
        if not clash.any():
            break
        neg[clash] = pool[rng.integers(0, len(pool), int(clash.sum()))]
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
    if data.explicit:
        if model.task_weights["rating"] > 0:
            pred = pos_out["rating"]
        elif calibration is not None:
            _, low, high = model.table(domain).rating_stats.tolist()
            pred = np.clip(calibration[0] + calibration[1] * pos_out["score"], low, high)
        else:
            pred = None
        if pred is not None:
            out.update(rating_metrics(pred, values))
    return out


def evaluate_model(model: MultiTaskRecommender, datas: dict[str, DomainData], splits: tuple[str, ...],
                   ks: tuple[int, ...], cfg: TrainConfig, max_len: int,
                   users: dict[str, np.ndarray] | None = None, pairs: bool = True) -> dict[str, dict]:
    """``{domain: {split: metrics}}``: full-ranking metrics (the shared protocol) plus RMSE/AUC when `pairs`.

    `users`: restrict the *valid* ranking to these users per domain (test always covers every user).
    """
    model.eval()
    out: dict[str, dict] = {}
    with torch.no_grad():
        for d, data in datas.items():
            k = model.domain_index(d)
            cat = model.catalogue(k)
            hists = split_histories(data, max_len)
            ratings = split_history_ratings(data, max_len) if pairs else {}
            calibration = None
            if pairs and data.explicit and model.task_weights["rating"] == 0:
                calibration = score_calibration(model, k, data, max_len, cat, seed=cfg.seed)
            res: dict[str, dict] = {}
            for split in splits:
                fn = score_fn(model, k, hists[split], cat)
                if split == "valid" and users is not None and d in users:
                    m = ranking_metrics(fn, data.train, data.valid, ks=ks, batch_users=cfg.eval_batch_users,
                                        users=users[d])
                else:
                    m = evaluate_split(fn, data, split, ks, cfg.eval_batch_users)
                if not m:
                    continue
                if pairs and split in ("valid", "test"):
                    m.update(pair_metrics(model, k, data, split, hists[split], ratings[split], cat,
                                          cfg.like_threshold, calibration, seed=cfg.seed))
                res[split] = m
            out[d] = res
    return out


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


def train_model(model: MultiTaskRecommender, datas: dict[str, DomainData], cfg: TrainConfig, ev: EvaluateParams,
                users: dict[str, np.ndarray] | None = None, progress: bool = True, name: str = "multitask") -> dict:
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
        res = evaluate_model(model, datas, ("valid",), tuple(ev.ks), cfg, max_len, valid_users, pairs=False)
        return float(np.mean([r["valid"][ev.select_metric] for r in res.values() if "valid" in r]))

    hist = fit(model, lambda epoch: sampler.epoch(), optimizer, cfg.epochs, validate=validate,
               eval_every=cfg.eval_every, patience=cfg.patience, progress=progress, name=name)
    model.eval()
    return {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "fit_s": hist.seconds,
            "initial_valid": hist.initial_metric, "best_valid": hist.best_metric, "losses": hist.losses}


# ---- explanations ----------------------------------------------------------------------------------------------
def explain_users(model: MultiTaskRecommender, data: DomainData, n_users: int, top: int, seed: int = 0
                  ) -> list[dict]:
    """For `n_users` seeded test users: the top-`top` recommendations (test protocol: train and valid items
    masked) and, for each, the `top` history items with the largest attention weight."""
    from m6rec.evaluation.metrics import topk_items

    k = model.domain_index(data.name)
    hist = split_histories(data, model.encoder.max_len)["test"]
    lengths = (hist >= 0).sum(1)
    candidates = np.flatnonzero((np.diff(data.test.indptr) > 0) & (lengths >= top))
    if not len(candidates):
        return []
    users = np.sort(np.random.default_rng(seed).choice(candidates, min(n_users, len(candidates)), replace=False))
    titles = data.items["title"].fillna("").astype(str).tolist()
    raw = data.items["raw_item"].astype(str).tolist()
    name = lambda i: titles[i] or raw[i]  # noqa: E731
    scored = model.score(k, torch.from_numpy(hist[users]))
    _, recs = topk_items(scored.scores, top, mask=data.train + data.valid, rows=users)
    out = []
    for row, u in enumerate(users):
        items = []
        for col in range(recs.shape[1]):
            item = int(recs[row, col])
            weights = (scored.gate[row, :, item, None] * scored.weights[row]).sum(0)  # [L], sums to 1
            w_top = torch.topk(weights, min(top, int(lengths[u])))
            because = [{"item": name(int(hist[u, j])), "weight": round(float(w), 3)}
                       for w, j in zip(w_top.values.tolist(), w_top.indices.tolist())]
            items.append({"item": name(item), "score": round(float(scored.scores[row, item]), 4),
                          "because": because, "hit": bool(data.test[u, item] > 0)})
        out.append({"user": int(u), "history_len": int(lengths[u]), "recommendations": items})
    return out


def explanations_markdown(per_domain: dict[str, list[dict]], variant: str) -> str:
    lines = [f"# Why these recommendations ({variant})", "",
             "Top recommendations (test protocol) for a few real users, each with the three history items that "
             "the target attention weights most for it (weights sum to 1 over the user's history; a ✓ marks an "
             "item the user interacted with in the test period).", ""]
    for d, users in per_domain.items():
        lines += [f"## {d}", "", "| user | recommended | because you liked (attention weight) |", "|---|---|---|"]
        for u in users:
            for r in u["recommendations"]:
                because = "; ".join(f"{b['item']} ({b['weight']:.2f})" for b in r["because"])
                mark = " ✓" if r["hit"] else ""
                lines.append(f"| {u['user']} | {r['item']}{mark} | {because} |".replace("\n", " "))
        lines.append("")
    return "\n".join(lines)


# ---- serving bundle --------------------------------------------------------------------------------------------
def domain_bundle(model: MultiTaskRecommender, data: DomainData, raw_user) -> DomainBundle:
    """One domain of `model` as a serving bundle with a history scorer: the catalogue's item vectors, every user's
    last ``max_len`` train + valid items (the input of test-time scoring), the history encoder's weights and the
    domain's recency adapter; a text projection is fitted from the items' sentence vectors when the model has them.
    Serving scores then equal :meth:`MultiTaskRecommender.score` with the test histories."""
    k = model.domain_index(data.name)
    enc = model.encoder
    table = model.table(k)
    with torch.no_grad():
        vectors = model.catalogue(k).vectors.float().numpy()
    config = {"dim": enc.dim, "n_interests": int(model.config()["n_interests"]), "max_len": enc.max_len,
              "pooling": enc.pooling, "hidden": enc.hidden}
    scorer = HistoryScorer(
        config=config, weights={n: t.detach().float().numpy().copy() for n, t in enc.state_dict().items()},
        history=split_histories(data, enc.max_len)["test"],
        recency=None if table.recency is None else table.recency.detach().float().numpy().copy())
    text = None
    if table.text is not None and bool(table.text.abs().sum() > 0):
        text = table.text.float().numpy()
    return make_domain_bundle(data, raw_user, vectors, None, item_text_vectors=text, scorer=scorer)


def bundle_meta(model_name: str, metrics: dict[str, dict], items: PretrainedItems, data_version: str,
                stage: str) -> dict:
    """Bundle meta: ``metrics`` is ``{domain: {split: {metric: v}}}`` (valid and test kept)."""
    meta = {"model": model_name, "stage": stage, "data_version": data_version,
            "metrics": {d: {s: r[s] for s in ("valid", "test") if s in r} for d, r in metrics.items()}}
    if items.encoder:
        meta.update(encoder=items.encoder, encoder_max_seq_length=items.encoder_max_seq_length)
    return meta


# ---- the stage -------------------------------------------------------------------------------------------------
def task_weights(cfg: MultitaskParams, multi: bool) -> dict[str, float]:
    if not multi:
        return {"retrieval": 1.0, "rating": 0.0, "like": 0.0}
    return {"retrieval": cfg.w_retrieval, "rating": cfg.w_rating, "like": cfg.w_like}


def run_variant(items: PretrainedItems, datas: dict[str, DomainData], cfg: MultitaskParams, ev: EvaluateParams,
                variant: str, progress: bool = True, ordered: dict[str, bool] | None = None
                ) -> tuple[MultiTaskRecommender, dict[str, dict]]:
    """Train and evaluate one variant on every domain; returns (model, {domain: {valid, test, fit_s, ...}})."""
    if variant not in VARIANTS:
        raise ConfigError(f"params.yaml multitask.variants: unknown variant {variant!r}; known: {list(VARIANTS)}")
    pooling, multi = VARIANTS[variant]
    tc = train_config(cfg)
    model = build_model(items, datas, pooling, task_weights(cfg, multi), architecture(cfg), cfg.seed, ordered)
    try:
        model.set_trainable_groups(cfg.train_groups)
    except ValueError as exc:
        raise ConfigError(f"params.yaml multitask.train_groups: {exc}") from exc
    t0 = time.perf_counter()
    info = train_model(model, datas, tc, ev, progress=progress, name=variant)
    res = evaluate_model(model, datas, ("valid", "test"), tuple(ev.ks), tc, cfg.max_len)
    eval_s = time.perf_counter() - t0 - info["fit_s"]
    for d, r in res.items():
        r.update(fit_s=info["fit_s"], eval_s=eval_s, best_epoch=info["best_epoch"], epochs=info["epochs"])
        t = r["test"]
        log.info("%s %-12s test recall@20 %.4f ndcg@20 %.4f%s auc %.4f", d, variant, t["recall@20"], t["ndcg@20"],
                 f" rmse {t['rmse']:.4f}" if "rmse" in t else "", t.get("auc", float("nan")))
    return model, res


def run(items: PretrainedItems, datas: dict[str, DomainData], cfg: MultitaskParams, ev: EvaluateParams,
        progress: bool = True, ordered: dict[str, bool] | None = None
        ) -> tuple[MultiTaskRecommender, dict, dict[str, list[dict]]]:
    """Every variant; returns (the `save_variant` model, metrics {domain: {variant: ...}}, explanations).
    `ordered`: see :func:`ordered_domains` (default: every domain ordered)."""
    if cfg.save_variant not in cfg.variants:
        raise ConfigError(f"params.yaml multitask.save_variant {cfg.save_variant!r} is not among the variants "
                          f"{list(cfg.variants)}")
    metrics: dict[str, dict] = {d: {} for d in datas}
    saved = None
    for variant in cfg.variants:
        model, res = run_variant(items, datas, cfg, ev, variant, progress, ordered)
        for d, r in res.items():
            metrics[d][variant] = r
        if variant == cfg.save_variant:
            saved = model
    explanations = {d: explain_users(saved, data, cfg.explain_users, cfg.explain_top, cfg.seed)
                    for d, data in datas.items()}
    return saved, metrics, explanations


def plot_rows(metrics: dict[str, dict], metric: str = "ndcg@20") -> list[dict]:
    return [{"model": f"{d}/{v}", "domain": d, f"test_{metric}": r["test"][metric]}
            for d, variants in metrics.items() for v, r in variants.items()]


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "multitask", MultitaskParams)
    ev = section(params, "evaluate", EvaluateParams)
    set_threads()
    prepared = load_prepared(cfg.in_dir)
    items = load_pretrained(cfg.pretrain_dir, cfg.graph_dir)
    domains = list(cfg.domains) or [d for d in items.source_domains if d in prepared.domains]
    unseen = [d for d in domains if d not in items.source_domains]
    if unseen:
        log.warning("multitask domains %s were not pretraining domains: their item vectors are text only", unseen)
    datas = {d: domain_data(prepared, d) for d in domains}
    t0 = time.perf_counter()
    from m6rec import tracking

    with tracking.start_run("multitask", {"multitask": asdict(cfg), "evaluate": asdict(ev)},
                            data_paths=[cfg.in_dir, cfg.pretrain_dir],
                            settings=section(params, "tracking", TrackingParams)):
        model, metrics, explanations = run(items, datas, cfg, ev, ordered=ordered_domains(prepared.meta, domains))
        out = save_checkpoint(Path(cfg.out_dir) / CHECKPOINT, model, args=model.config(),
                              params={"multitask": asdict(cfg), "evaluate": asdict(ev)},
                              meta={"domains": domains, "variant": cfg.save_variant, "encoder": items.encoder,
                                    "ordered": ordered_domains(prepared.meta, domains),
                                    "pretrain_source_domains": list(items.source_domains)})
        outputs = ((cfg.metrics, json.dumps(metrics, indent=2)),
                   (cfg.plot, json.dumps(plot_rows(metrics), indent=2)),
                   (cfg.explanations, explanations_markdown(explanations, cfg.save_variant)))
        for path, text in outputs:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        bundle = export_bundle(cfg.bundle, {d: domain_bundle(model, data, raw_user_ids(prepared, d))
                                            for d, data in datas.items()},
                               bundle_meta(cfg.save_variant, {d: metrics[d][cfg.save_variant] for d in datas}, items,
                                           tracking.data_version(paths=[cfg.in_dir]), "multitask"))
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        tracking.log_artifact(cfg.explanations)
        tracking.log_artifact(bundle / "bundle.json")
    log.info("multitask done in %.1fs -> %s, %s, %s", time.perf_counter() - t0, out, cfg.metrics, cfg.explanations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
