"""Training of :class:`m6rec.models.seqrec.UniversalSeqRec`: pretraining on several source domains at once, and
fine-tuning on a target domain in one of the modes of :data:`m6rec.models.seqrec.MODE_GROUPS` (or from scratch).

Batches are windows of the users' time-ordered *training* interactions (never valid/test), mixed across the source
domains, with every position predicting the next item. The source domains share one concatenated catalogue, so the
batch's distinct targets are negatives from all domains; ``log_q`` is each item's log frequency as a target.
Popularity inputs are each domain's training counts (the observed histories).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.data.sequences import Sequences, history_window, user_sequences
from m6rec.evaluation.protocol import evaluate
from m6rec.models.seqrec import DomainTable, UniversalSeqRec, popularity_feature, sequence_chunks
from m6rec.training.checkpoint import CheckpointError, load_checkpoint
from m6rec.training.loop import FitHistory, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeqRecTrainParams:
    """Training knobs (the bench passes them; a stage would read them from params.yaml)."""

    epochs: int = 10  # int: upper bound on epochs (early stopping on validation)
    batch_size: int = 128  # int: windows per batch
    lr: float = 1e-3  # float: Adam learning rate
    weight_decay: float = 0.0  # float: Adam weight decay
    patience: int = 2  # int: validations without gain before stopping
    valid_users: int = 300  # int: sampled users per domain for the validation metric (0 = no early stopping)
    metric: str = "ndcg@10"  # str: validation metric
    seed: int = 0  # int


def train_counts(data: DomainData) -> np.ndarray:
    """Each item's number of training interactions (the observed input histories)."""
    return np.asarray(data.train.sum(axis=0)).ravel().astype(np.float64)


def attach(model: UniversalSeqRec, datas: Mapping[str, DomainData], text: Mapping[str, np.ndarray]) -> None:
    """Attach every domain of `datas` with its text vectors and training popularity."""
    for d, data in datas.items():
        if d not in text:
            raise KeyError(f"no text vectors for domain '{d}'")
        model.attach_domain(d, text[d], train_counts(data))


def joint_catalogue(model: UniversalSeqRec, datas: Mapping[str, DomainData]) -> tuple[str, dict[str, int]]:
    """One catalogue concatenating the (attached) domains of `datas`; returns its name and item offsets."""
    name = "joint:" + "+".join(datas)  # never a domain's own name (one source alone would be overwritten)
    offsets, total, texts, pops = {}, 0, [], []
    for d in datas:
        tab = model.table(d)
        offsets[d] = total
        total += tab.n_items
        texts.append(tab.text)
        pops.append(tab.pop)
    model.tables[name] = DomainTable(text=torch.cat(texts), pop=torch.cat(pops))
    return name, offsets


def training_windows(datas: Mapping[str, DomainData], max_len: int, offsets: Mapping[str, int] | None = None,
                     users: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the training sequences of every domain (item ids shifted by `offsets`; `users`: per-domain
    subsets, e.g. a few-shot fraction)."""
    ins, outs = [], []
    for d, data in datas.items():
        seq = user_sequences(data, ("train",))
        x, y = sequence_chunks(seq.indptr, seq.items, max_len, None if users is None else users.get(d))
        off = 0 if offsets is None else offsets[d]
        ins.append(np.where(x >= 0, x + off, -1))
        outs.append(np.where(y >= 0, y + off, -1))
    return np.concatenate(ins), np.concatenate(outs)




class BatchMaker:
    """``epoch -> list of batches`` (shuffled windows, seeded per epoch) for :func:`m6rec.training.loop.fit`."""

    def __init__(self, catalogue: str, inputs: np.ndarray, targets: np.ndarray, n_items: int, batch_size: int,
                 seed: int) -> None:
        if len(inputs) == 0:
            raise ValueError(f"no training windows for catalogue '{catalogue}' (users without 2+ interactions?)")
        self.catalogue, self.batch_size, self.seed = catalogue, batch_size, seed
        self.inputs, self.targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        counts = np.bincount(targets[targets >= 0], minlength=n_items).astype(np.float64)
        self.log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))

    def __call__(self, epoch: int) -> list[dict]:
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(len(self.inputs), generator=g)
        return [{"domain": self.catalogue, "inputs": self.inputs[idx], "targets": self.targets[idx],
                 "log_q": self.log_q} for idx in order.split(self.batch_size)]

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)


def validation(model: UniversalSeqRec, datas: Mapping[str, DomainData], protocol: ProtocolParams,
               cfg: SeqRecTrainParams, users: Mapping[str, np.ndarray] | None = None):
    """``() -> mean validation metric`` over `datas` on seeded user samples (of `users` when given)."""
    rng = np.random.default_rng(cfg.seed)
    samples = {}
    for d, data in datas.items():
        pool = np.arange(data.n_users) if users is None else np.asarray(users[d])
        pool = pool[np.asarray(data.valid.sum(axis=1)).ravel()[pool] > 0]
        samples[d] = np.sort(rng.choice(pool, min(cfg.valid_users, len(pool)), replace=False))

    def metric() -> float:
        vals = [evaluate(model, datas[d], "valid", protocol, users=u)[cfg.metric] for d, u in samples.items()
                if len(u)]
        return float(np.mean(vals)) if vals else 0.0

    return metric


def pretrain(model: UniversalSeqRec, datas: Mapping[str, DomainData], text: Mapping[str, np.ndarray],
             protocol: ProtocolParams, cfg: SeqRecTrainParams, progress: bool = False) -> FitHistory:
    """Next-item pretraining on the training sequences of every domain of `datas` (source domains)."""
    torch.manual_seed(cfg.seed)
    attach(model, datas, text)
    name, offsets = joint_catalogue(model, datas)
    x, y = training_windows(datas, model.history_len, offsets)
    batches = BatchMaker(name, x, y, model.table(name).n_items, cfg.batch_size, cfg.seed)
    log.info("seqrec pretrain on %s: %d windows, %d batches per epoch", list(datas), len(x), len(batches))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    validate = validation(model, datas, protocol, cfg) if cfg.valid_users else None
    hist = fit(model, batches, opt, cfg.epochs, validate=validate, patience=cfg.patience, progress=progress,
               name="seqrec-pretrain")
    del model.tables[name]
    return hist


def fraction_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """The first ``ceil(fraction * n_users)`` users of a seeded permutation: nested across fractions."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    perm = np.random.default_rng(seed).permutation(n_users)
    return np.sort(perm[: max(1, math.ceil(fraction * n_users))])


def finetune(pretrained: UniversalSeqRec | None, data: DomainData, text: np.ndarray, mode: str,
             users: np.ndarray, protocol: ProtocolParams, cfg: SeqRecTrainParams,
             model_args: Mapping | None = None, progress: bool = False) -> tuple[UniversalSeqRec, FitHistory | None]:
    """A copy of `pretrained` adapted to `data` in `mode` on the training sequences of `users` only (``scratch``: a
    fresh model of `model_args`, every parameter trained). The target's popularity input is always every user's
    observed training history. Validation (early stopping) uses the valid split of `users`."""
    torch.manual_seed(cfg.seed)  # every mode: the same run whatever ran before (e.g. a reused pretraining)
    if mode == "scratch":
        model = UniversalSeqRec(**(model_args or (pretrained.config() if pretrained is not None else {})))
    else:
        if pretrained is None:
            raise ValueError(f"fine-tuning mode {mode!r} needs a pretrained model")
        model = copy.deepcopy(pretrained)
        model.set_mix()  # a calibrated zero-shot mix is an inference setting; training starts from the trained model
        model.text_tau = None
    model.attach_domain(data.name, text, train_counts(data))
    if mode in ("full", "scratch"):
        model.enable_ids(data.name)
    trainable = model.set_trainable(mode)
    if not trainable:
        return model, None
    x, y = training_windows({data.name: data}, model.history_len, users={data.name: users})
    batches = BatchMaker(data.name, x, y, data.n_items, cfg.batch_size, cfg.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    validate = validation(model, {data.name: data}, protocol, cfg, {data.name: users}) if cfg.valid_users else None
    hist = fit(model, batches, opt, cfg.epochs, validate=validate, patience=cfg.patience, progress=progress,
               name=f"seqrec-{mode}")
    return model, hist


def observed_holdout(data: DomainData, max_len: int, max_users: int = 1000, seed: int = 0, ordered: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Label-free check on a domain's observed input histories: each sampled user's last *training* item is the
    target, the training items before it the input (and masked). Returns (inputs [n, L], targets [n], masks).

    ``ordered=False`` (a domain whose interaction order means nothing, e.g. a random split): the target is a seeded
    random training item of the user instead of the last one; the last item of an unordered list is an artefact of
    the file (lastfm's is the highest artist id), and calibrating on it drops popularity that the test rewards."""
    seq = user_sequences(data, ("train",))
    lengths = np.diff(seq.indptr)
    users = np.flatnonzero(lengths >= 3)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if not ordered:
        rng = np.random.default_rng(seed + 1)
        items = seq.items.copy()
        for u in users:
            j, last = rng.integers(seq.indptr[u], seq.indptr[u + 1]), seq.indptr[u + 1] - 1
            items[j], items[last] = items[last], items[j]
        seq = Sequences(indptr=seq.indptr, items=items, values=seq.values)
    ends = seq.indptr[users + 1] - 1
    inputs = history_window(seq, ends, seq.indptr[users], max_len)
    masks = [seq.items[seq.indptr[u]: e] for u, e in zip(users, ends)]
    return inputs, seq.items[ends], masks


def calibrate_mix(model: UniversalSeqRec, data: DomainData,
                  grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
                  taus: tuple[float | None, ...] = (None, 0.05, 0.1, 0.2), k: int = 10, seed: int = 0,
                  ordered: bool = True) -> dict[str, float | None]:
    """Choose the score terms' multipliers (:meth:`UniversalSeqRec.set_mix`; text fixed at 1) and the text term
    (trained mean cosine, or the kernel at one of `taus`) by NDCG@k of each user's last observed training item
    (:func:`observed_holdout`; its popularity input without those items): no validation or test label is read.
    Sets them on the model and returns them. ``ordered``: see :func:`observed_holdout`."""
    inputs, targets, masks = observed_holdout(data, model.history_len, seed=seed, ordered=ordered)
    model.set_mix()
    model.text_tau = None
    if not len(targets):
        return {**model.mix, "text_tau": None}
    users = np.arange(len(inputs))
    model.set_mix(seq=1.0, text=0.0, pop=0.0)
    parts = {"seq": model.full_scores(data.name, users, inputs)}
    # The popularity input counts every training interaction, the held-out last items too: scored with it, a
    # popular pseudo-target would look predictable because it was counted. Score the popularity term from the
    # counts without the pseudo-targets (what a real future item's popularity input looks like).
    counts = np.maximum(train_counts(data) - np.bincount(targets, minlength=model.table(data.name).n_items), 0.0)
    with torch.no_grad():
        parts["pop"] = model.gate_score(popularity_feature(counts)).expand(len(inputs), -1).clone()
    texts = {}
    model.set_mix(seq=0.0, text=1.0, pop=0.0)
    for tau in taus:
        model.text_tau = tau
        texts[tau] = model.full_scores(data.name, users, inputs)
    rows = torch.from_numpy(np.concatenate([np.full(len(m), i) for i, m in enumerate(masks)]))
    cols = torch.from_numpy(np.concatenate(masks))
    idx, tgt = torch.arange(len(targets)), torch.from_numpy(targets)
    best, choice = -1.0, (1.0, 1.0, None)
    for tau, text in texts.items():
        for ws in grid:
            for wp in grid:
                scores = ws * parts["seq"] + text + wp * parts["pop"]
                target_score = scores[idx, tgt].clone()
                scores[rows, cols] = float("-inf")
                rank = (scores > target_score.unsqueeze(1)).sum(1)
                ndcg = float(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros(())).mean())
                if ndcg > best + 1e-9:
                    best, choice = ndcg, (ws, wp, tau)
    model.set_mix(seq=choice[0], text=1.0, pop=choice[1])
    model.text_tau = choice[2]
    log.info("%s: calibrated seq %.2f pop %.2f text_tau %s (observed-history ndcg@%d %.4f)", data.name, choice[0],
             choice[1], choice[2], k, best)
    return {**model.mix, "text_tau": choice[2]}


def source_fingerprint(model_args: Mapping, cfg: SeqRecTrainParams, protocol: ProtocolParams,
                       datas: Mapping[str, DomainData], text: Mapping[str, np.ndarray]) -> str:
    """sha256 of everything pretraining reads: the model and training settings, the protocol (early stopping) and,
    per source domain in order, its time-ordered training sequences, its validation rows and its text vectors.
    Pretraining is deterministic given these, so an equal fingerprint means an equal model."""
    h = hashlib.sha256(json.dumps({"model": dict(model_args), "train": asdict(cfg), "protocol": asdict(protocol)},
                                  sort_keys=True, default=list).encode())
    for d, data in datas.items():
        seq = user_sequences(data, ("train",))
        valid = data.valid.tocsr()
        h.update(d.encode())
        for arr in (seq.indptr, seq.items, valid.indptr, valid.indices):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(text[d], dtype=np.float32).tobytes())
    return h.hexdigest()


def pretrained_model(path: str | Path, model_args: Mapping, datas: Mapping[str, DomainData],
                     text: Mapping[str, np.ndarray], protocol: ProtocolParams, cfg: SeqRecTrainParams,
                     progress: bool = False) -> tuple[UniversalSeqRec, dict, bool]:
    """The model pretrained on the source domains `datas`: the checkpoint at `path` when its fingerprint
    (:func:`source_fingerprint`) is that of these inputs, else a new pretraining. Returns (model, the record kept in
    the checkpoint's meta, whether it was reused). Onboarding a domain therefore never re-pretrains."""
    fp = source_fingerprint(model_args, cfg, protocol, datas, text)
    path = Path(path)
    if path.is_file():
        try:
            model, info = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("%s is not reusable (%s): pretraining again", path, exc)
        else:
            if isinstance(model, UniversalSeqRec) and info["meta"].get("fingerprint") == fp:
                log.info("seqrec: reusing %s (same sources, data and settings: fingerprint %s)", path, fp[:12])
                attach(model, datas, text)
                return model, dict(info["meta"]), True
            log.info("seqrec: %s was trained on other inputs: pretraining again", path)
    torch.manual_seed(cfg.seed)
    model = UniversalSeqRec(**model_args)
    hist = pretrain(model, datas, text, protocol, cfg, progress=progress)
    model.eval()
    record = {"fingerprint": fp, "sources": list(datas), "epochs": hist.epochs, "best_epoch": hist.best_epoch,
              "losses": [round(float(x), 6) for x in hist.losses],
              "valid": [[int(e), round(float(m), 6)] for e, m in hist.metrics]}
    return model, record, False


def serve_target(model: UniversalSeqRec, data: DomainData, text: np.ndarray, protocol: ProtocolParams,
                 cfg: SeqRecTrainParams, calibrate: bool = True, finetune_mode: str | None = None,
                 ordered: bool = True) -> tuple[UniversalSeqRec, dict]:
    """The model a domain the pretraining never saw is served with: zero-shot (a copy of `model` given the domain's
    text and observed popularity, its score terms calibrated label-free when `calibrate`), or, with
    `finetune_mode`, that mode fine-tuned on all of the domain's training users when it is better on validation
    (``protocol.select_metric``). Returns (model, {"mode", "mix", "valid": {mode: metric}})."""
    zero = copy.deepcopy(model)
    zero.attach_domain(data.name, text, train_counts(data))
    mix = {**zero.mix, "text_tau": None}
    if calibrate:
        mix = calibrate_mix(zero, data, taus=(None,), seed=cfg.seed, ordered=ordered)
    options = {"zero_shot": zero}
    if finetune_mode:
        tuned, _ = finetune(model, data, text, finetune_mode, np.arange(data.n_users), protocol, cfg)
        tuned.eval()
        options[finetune_mode] = tuned
    valid = {m: float(evaluate(o, data, "valid", protocol)[protocol.select_metric]) for m, o in options.items()}
    mode = max(valid, key=lambda m: (valid[m], m == "zero_shot"))
    log.info("%s: seqrec serves %s (valid %s %s)", data.name, mode, protocol.select_metric,
             {m: round(v, 4) for m, v in valid.items()})
    return options[mode], {"mode": mode, "mix": mix, "valid": valid}


__all__ = ["source_fingerprint", "pretrained_model", "serve_target", "observed_holdout", "calibrate_mix",
           "SeqRecTrainParams", "attach", "joint_catalogue", "training_windows", "BatchMaker", "validation",
           "pretrain", "fraction_users", "finetune", "train_counts"]
