"""Stage `finetune`: adapt the multi-task model to each target domain; zero-shot, parameter-efficient and full
fine-tuning against the same model trained from scratch, on 10/50/100% of the target's training users.

Starting point: the `multitask` stage's checkpoint (history attention and task heads trained on the source
domains, over the `pretrain` stage's item vectors) and the pretrained item inputs of the target. Modes:

- ``zero_shot``: no target training at all; the target's item vectors come from pretraining (see `target_items`),
  the attention, heads and the per-domain recency adapter (mean of the source domains') from the multitask model;
- ``efficient``: only the task heads, the logit scale, the target's recency adapter and the text projection train;
- ``full``: every parameter trains (item residuals and the attention included);
- ``scratch``: the same architecture, randomly initialised (item residuals, text projection, attention, heads),
  trained like ``full``.

`target_items`: ``text`` (default) builds the target's item vectors from the pretrained text projection alone, as the
pretrained model would for a domain it never saw (no id embedding, no propagation), so that the comparison with
``scratch`` on 10% of the users is not flattered by pretraining on the target's other 90%; the pretrained text
projection was still fitted with the target's item texts in the graph if the target was a pretraining domain
(excluding it from `graph.domains` makes the run fully clean). ``pretrained`` uses the target's pretrained
(propagated) item vectors as the frozen base, if the target was a pretraining domain.

Training users are seeded, nested subsets (10% within 50% within 100%) of the users with at least two training
interactions; early stopping validates on those users' validation items only. Every run is evaluated on the
target's full test split (full ranking, every user, each user's known history as input), with RMSE (explicit
domains) and like AUC.

Outputs: `metrics` ({domain: {"zero_shot" | "<mode>@<fraction>": {valid, test, fit_s, ...}}}), `plot` (test
NDCG@10 per fraction, one column per domain/mode), `out_dir`/<domain>/model.pt (`save_mode` at the largest
fraction) and `bundle`: the serving bundle of the whole family, i.e. the multi-task model's domains (copied from
`source_bundle`) plus every fine-tuned target, each scored by its own history attention (a promotion candidate).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from m6rec import tracking
from m6rec.config import ConfigError, TrackingParams, section
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.runtime import set_threads
from m6rec.evaluation.protocol import EvaluateParams
from m6rec.serving.bundle import DomainBundle, export_bundle, load_bundle, raw_user_ids
from m6rec.stages.multitask import (PretrainedItems, TrainConfig, bundle_meta, check_domains, domain_bundle,
                                    evaluate_model, load_pretrained, rating_stats, train_config, train_model)
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.stages.cli import stage_params

log = logging.getLogger(__name__)

MODES = ("zero_shot", "efficient", "full", "scratch")
TARGET_ITEMS = ("text", "pretrained")
CHECKPOINT = "model.pt"


@dataclass(frozen=True)
class FinetuneParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    pretrain_dir: str = "models/pretrain"  # pretrained LightGCN checkpoint (item text vectors, base vectors)
    graph_dir: str = "data/graph"  # its graph (to propagate the pretrained item vectors)
    multitask_dir: str = "models/multitask"  # multi-task checkpoint: the starting point
    out_dir: str = "models/finetune"  # <domain>/model.pt of `save_mode` at the largest fraction
    source_bundle: str = "models/multitask/bundle"  # the multi-task model's serving bundle ("" = targets only)
    bundle: str = "models/finetune/bundle"  # source_bundle's domains + the fine-tuned targets ("" = none)
    metrics: str = "metrics/finetune.json"  # {domain: {zero_shot | <mode>@<fraction>: {valid, test, ...}}}
    plot: str = "plots/finetune.json"  # test NDCG@10 per fraction; columns "<domain>/<mode>"
    domains: tuple[str, ...] = ("ml-100k",)  # target domains (must not be multitask training domains)
    fractions: tuple[float, ...] = (0.1, 0.5, 1.0)  # shares of the target's training users (nested, seeded)
    modes: tuple[str, ...] = MODES  # zero_shot, efficient, full, scratch
    target_items: str = "text"  # text: target items by text projection only | pretrained: pretrained vectors
    save_mode: str = "full"  # mode whose model is saved (at the largest fraction)
    residual_std: float = 0.1  # scratch: std of the item residuals' initialisation
    examples_per_user: int = 20  # (history -> next item) examples per user and epoch
    negatives: int = 256  # shared retrieval negatives per batch
    batch_size: int = 512  # examples per batch
    epochs: int = 5  # maximum epochs per run
    lr: float = 0.003  # Adam learning rate (every mode)
    weight_decay: float = 0.0  # Adam L2 penalty
    eval_every: int = 1  # validate every N epochs (early stopping on evaluate.select_metric)
    patience: int = 2  # validations without improvement before stopping
    valid_users: int = 1000  # at most this many training users validated for early stopping (0 = all)
    eval_batch_users: int = 256  # users per full-ranking batch
    like_threshold: float = 4.0  # explicit domains: a rating >= this is a like
    seed: int = 42  # subsets, sampling and initialisation

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ConfigError(f"params.yaml finetune.modes: unknown {unknown}; modes: {list(MODES)}")
        if self.target_items not in TARGET_ITEMS:
            raise ConfigError(f"params.yaml finetune.target_items must be one of {TARGET_ITEMS}, "
                              f"got {self.target_items!r}")
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad or not self.fractions:
            raise ConfigError(f"params.yaml finetune.fractions must be in (0, 1], got {list(self.fractions)}")


def user_subset(data: DomainData, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of the users with >= 2 training interactions (sorted). Subsets of one seed are nested."""
    counts = np.diff(data.train.indptr)
    eligible = np.flatnonzero(counts >= 2)
    order = np.random.default_rng(seed).permutation(eligible)
    n = max(1, int(round(fraction * len(eligible))))
    return np.sort(order[:n])


def target_model(source: MultiTaskRecommender, items: PretrainedItems, data: DomainData, mode: str,
                 target_items: str, residual_std: float, seed: int, users: np.ndarray | None = None
                 ) -> MultiTaskRecommender:
    """A one-domain model for the target, initialised for `mode`, with the trainable parameters set.

    Non-scratch modes load the source's shared weights and start the target's recency adapter at the mean of the
    source domains'; ``scratch`` is a fresh seeded model of the same architecture. Rating statistics come from the
    training `users` (zero-shot: the source's explicit domains' mean, where there is one).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {list(MODES)}")
    check_domains(items, {data.name: data})
    scratch = mode == "scratch"
    args = {**source.config(), "domains": [data.name], "n_items": [data.n_items], "explicit": [data.explicit],
            "residual_std": residual_std if scratch else 0.0}
    torch.manual_seed(seed)
    model = MultiTaskRecommender(**args)
    if not scratch:
        model.load_shared(source.shared_state())
        recency = [source.table(k).recency for k in range(len(source.domains))]
        if model.table(0).recency is not None and all(r is not None for r in recency):
            with torch.no_grad():
                model.table(0).recency.copy_(torch.stack([r.detach() for r in recency]).mean(0))
    base = items.base[data.name] if (target_items == "pretrained" and not scratch) else None
    text = items.text[data.name]
    if target_items == "text" and text is None:
        raise ValueError(f"target_items 'text' needs item text vectors, but the pretrained model has none for "
                         f"{data.name}: use target_items 'pretrained' or pretrain with text")
    stats = rating_stats(data, users)
    if mode == "zero_shot" and data.explicit:
        means = [float(source.table(k).rating_stats[0]) for k in range(len(source.domains)) if source.explicit[k]]
        if means:
            stats = (float(np.mean(means)), stats[1], stats[2])
    model.set_items(0, None if base is None else torch.from_numpy(base),
                    None if text is None else torch.from_numpy(text), stats)
    model.set_trainable("full" if scratch else mode)
    return model


def run_target(source: MultiTaskRecommender, items: PretrainedItems, data: DomainData, cfg: FinetuneParams,
               ev: EvaluateParams, progress: bool = True) -> tuple[dict[str, dict], MultiTaskRecommender | None]:
    """Every mode and fraction on one target domain; returns ({run name: results}, the model to save)."""
    if data.name in source.domains:
        raise ConfigError(f"finetune target {data.name} is a training domain of the multi-task model "
                          f"({source.domains}): zero-shot would not be zero-shot; remove it from multitask.domains")
    tc: TrainConfig = train_config(cfg)
    max_len = source.encoder.max_len
    out: dict[str, dict] = {}
    saved = None
    for mode in cfg.modes:
        fractions = (None,) if mode == "zero_shot" else tuple(sorted(cfg.fractions))
        for fraction in fractions:
            users = None if fraction is None else user_subset(data, fraction, cfg.seed)
            name = mode if fraction is None else f"{mode}@{fraction:g}"
            model = target_model(source, items, data, mode, cfg.target_items, cfg.residual_std, cfg.seed, users)
            t0 = time.perf_counter()
            info = {"fit_s": 0.0, "epochs": 0, "best_epoch": 0}
            if mode != "zero_shot":
                info = train_model(model, {data.name: data}, tc, ev, users={data.name: users}, progress=progress,
                                   name=f"{data.name}/{name}")
            res = evaluate_model(model, {data.name: data}, ("valid", "test"), tuple(ev.ks), tc, max_len)[data.name]
            res.update(mode=mode, fraction=fraction, n_train_users=0 if users is None else int(len(users)),
                       n_trainable=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                       fit_s=info["fit_s"], epochs=info["epochs"], best_epoch=info["best_epoch"],
                       total_s=time.perf_counter() - t0)
            out[name] = res
            t = res["test"]
            log.info("%s %-14s test ndcg@10 %.4f recall@20 %.4f ndcg@20 %.4f%s auc %.4f (%.1fs)", data.name, name,
                     t["ndcg@10"], t["recall@20"], t["ndcg@20"], f" rmse {t['rmse']:.4f}" if "rmse" in t else "",
                     t.get("auc", float("nan")), res["total_s"])
            if mode == cfg.save_mode and fraction == max(cfg.fractions):
                saved = model
    return out, saved


def export_family_bundle(cfg: FinetuneParams, targets: dict[str, tuple[DomainBundle, dict]],
                         items: PretrainedItems) -> Path | None:
    """`source_bundle`'s domains plus each fine-tuned target (its serving domain and run results) as one bundle."""
    if not cfg.bundle or not (targets or cfg.source_bundle):
        return None
    domains, metrics, model_name = {}, {}, f"finetune-{cfg.save_mode}"  # e.g. attention_mt-finetune-full
    if cfg.source_bundle:
        source = load_bundle(cfg.source_bundle)
        domains.update(source.domains)
        metrics.update(source.meta.get("metrics", {}))
        model_name = f"{source.meta.get('model', 'multitask')}-{model_name}"
    for d, (domain, res) in targets.items():
        domains[d] = domain
        metrics[d] = res
    meta = bundle_meta(model_name, metrics, items, tracking.data_version(paths=[cfg.in_dir]), "finetune")
    return export_bundle(cfg.bundle, domains, meta)


def plot_rows(metrics: dict[str, dict], fractions: tuple[float, ...], metric: str = "ndcg@10") -> list[dict]:
    """One row per fraction with a ``<domain>/<mode>`` column of test `metric` (zero-shot repeated as a level)."""
    rows = []
    for f in sorted(fractions):
        row: dict = {"fraction": f}
        for d, runs in metrics.items():
            for name, res in runs.items():
                if res["fraction"] is None or res["fraction"] == f:
                    row[f"{d}/{res['mode']}"] = res["test"][metric]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "finetune", FinetuneParams)
    ev = section(params, "evaluate", EvaluateParams)
    set_threads()
    t0 = time.perf_counter()
    prepared = load_prepared(cfg.in_dir)
    source, info = load_checkpoint(Path(cfg.multitask_dir) / CHECKPOINT)
    items = load_pretrained(cfg.pretrain_dir, cfg.graph_dir)
    with tracking.start_run("finetune", {"finetune": asdict(cfg), "evaluate": asdict(ev)},
                            data_paths=[cfg.in_dir, cfg.multitask_dir],
                            settings=section(params, "tracking", TrackingParams)):
        metrics: dict[str, dict] = {}
        saved: dict[str, tuple[DomainBundle, dict]] = {}
        for domain in cfg.domains:
            if cfg.target_items == "pretrained" and domain not in items.source_domains:
                log.warning("%s was not a pretraining domain: its 'pretrained' item vectors are untrained", domain)
            data = domain_data(prepared, domain)
            metrics[domain], model = run_target(source, items, data, cfg, ev)
            if model is not None:
                saved[domain] = (domain_bundle(model, data, raw_user_ids(prepared, domain)),
                                 metrics[domain][f"{cfg.save_mode}@{max(cfg.fractions):g}"])
                save_checkpoint(Path(cfg.out_dir) / domain / CHECKPOINT, model, args=model.config(),
                                params={"finetune": asdict(cfg), "evaluate": asdict(ev)},
                                meta={"domain": domain, "mode": cfg.save_mode, "fraction": max(cfg.fractions),
                                      "source": str(Path(cfg.multitask_dir) / CHECKPOINT),
                                      "source_domains": list(source.domains), "encoder": items.encoder})
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # a declared output even when no model is saved
        for path, payload in ((cfg.metrics, metrics), (cfg.plot, plot_rows(metrics, cfg.fractions))):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        bundle = export_family_bundle(cfg, saved, items)
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        if bundle is not None:
            tracking.log_artifact(bundle / "bundle.json")
    log.info("finetune done in %.1fs -> %s", time.perf_counter() - t0, cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
