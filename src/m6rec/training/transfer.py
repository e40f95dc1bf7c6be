"""The history model's two training workflows: every multitask variant on the source domains, and every fine-tuning
mode and fraction on a target domain. Each returns models and metrics; the stages write them."""

from __future__ import annotations

import logging
import time

from m6rec.config import ConfigError, ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.evaluation.explain import explain_users
from m6rec.evaluation.history import evaluate_model
from m6rec.model_params import FinetuneParams, MultitaskParams
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.models.pretrained import PretrainedItems
from m6rec.runtime import map_tasks
from m6rec.training.assembly import VARIANTS, architecture, build_model, target_model, task_weights, user_subset
from m6rec.training.history import train_model

log = logging.getLogger(__name__)


def run_variant(items: PretrainedItems, datas: dict[str, DomainData], cfg: MultitaskParams,
                protocol: ProtocolParams, variant: str, progress: bool = True,
                ordered: dict[str, bool] | None = None) -> tuple[MultiTaskRecommender, dict[str, dict]]:
    """Train and evaluate one variant on every domain; returns (model, {domain: {valid, test, fit_s, ...}})."""
    if variant not in VARIANTS:
        raise ConfigError(f"params.yaml multitask.variants: unknown variant {variant!r}; known: {list(VARIANTS)}")
    pooling, multi = VARIANTS[variant]
    model = build_model(items, datas, pooling, task_weights(cfg, multi), architecture(cfg), cfg.seed, ordered)
    try:
        model.set_trainable_groups(cfg.train_groups)
    except ValueError as exc:
        raise ConfigError(f"params.yaml multitask.train_groups: {exc}") from exc
    t0 = time.perf_counter()
    info = train_model(model, datas, cfg.train, protocol, progress=progress, name=variant)
    res = evaluate_model(model, datas, ("valid", "test"), protocol, cfg.train)
    eval_s = time.perf_counter() - t0 - info["fit_s"]
    for d, r in res.items():
        r.update(fit_s=info["fit_s"], eval_s=eval_s, best_epoch=info["best_epoch"], epochs=info["epochs"])
        t = r["test"]
        log.info("%s %-12s test recall@20 %.4f ndcg@20 %.4f%s auc %.4f", d, variant, t["recall@20"], t["ndcg@20"],
                 f" rmse {t['rmse']:.4f}" if "rmse" in t else "", t.get("auc", float("nan")))
    return model, res


def train_variants(items: PretrainedItems, datas: dict[str, DomainData], cfg: MultitaskParams,
                   protocol: ProtocolParams, progress: bool = True, ordered: dict[str, bool] | None = None,
                   workers: int = 1) -> tuple[MultiTaskRecommender, dict, dict[str, list[dict]]]:
    """Every variant (in `workers` processes: :func:`m6rec.runtime.map_tasks`; each is seeded, so the results do
    not depend on it); returns (the `save_variant` model, metrics {domain: {variant: ...}}, explanations).
    `ordered`: :func:`m6rec.data.splits.ordered_domains` (default: every domain ordered)."""
    if cfg.save_variant not in cfg.variants:
        raise ConfigError(f"params.yaml multitask.save_variant {cfg.save_variant!r} is not among the variants "
                          f"{list(cfg.variants)}")

    def one(variant: str) -> tuple[MultiTaskRecommender | None, dict[str, dict]]:
        model, res = run_variant(items, datas, cfg, protocol, variant, progress, ordered)
        return (model if variant == cfg.save_variant else None), res

    # attention pooling costs about three times mean pooling: those first
    order = sorted(cfg.variants, key=lambda v: VARIANTS.get(v, ("",))[0] != "attention")
    done = dict(zip(order, map_tasks(one, order, workers, cfg.seed, what="variant")))
    metrics: dict[str, dict] = {d: {} for d in datas}
    saved = None
    for variant in cfg.variants:
        model, res = done[variant]
        for d, r in res.items():
            metrics[d][variant] = r
        if variant == cfg.save_variant:
            saved = model
    explanations = {d: explain_users(saved, data, cfg.explain_users, cfg.explain_top, cfg.seed)
                    for d, data in datas.items()}
    return saved, metrics, explanations


def finetune_target(source: MultiTaskRecommender, items: PretrainedItems, data: DomainData, cfg: FinetuneParams,
                    protocol: ProtocolParams, progress: bool = True, workers: int = 1
                    ) -> tuple[dict[str, dict], MultiTaskRecommender | None]:
    """Every mode and fraction on one target domain (in `workers` processes; each run is seeded, so the results do
    not depend on it); returns ({run name: results}, the `save_mode` model at the largest fraction, if that mode
    ran)."""
    if data.name in source.domains:
        raise ConfigError(f"finetune target {data.name} is a training domain of the multi-task model "
                          f"({source.domains}): zero-shot would not be zero-shot; remove it from multitask.domains")
    runs = [(mode, fraction) for mode in cfg.modes
            for fraction in ((None,) if mode == "zero_shot" else tuple(sorted(cfg.fractions)))]
    largest = max(cfg.fractions)

    def one(run: tuple[str, float | None]) -> tuple[dict, MultiTaskRecommender | None]:
        mode, fraction = run
        users = None if fraction is None else user_subset(data, fraction, cfg.seed)
        name = mode if fraction is None else f"{mode}@{fraction:g}"
        model = target_model(source, items, data, mode, cfg.target_items, cfg.residual_std, cfg.seed, users)
        t0 = time.perf_counter()
        info = {"fit_s": 0.0, "epochs": 0, "best_epoch": 0}
        if mode != "zero_shot":
            info = train_model(model, {data.name: data}, cfg.train, protocol, users={data.name: users},
                               progress=progress, name=f"{data.name}/{name}")
        res = evaluate_model(model, {data.name: data}, ("valid", "test"), protocol, cfg.train)[data.name]
        res.update(mode=mode, fraction=fraction, n_train_users=0 if users is None else int(len(users)),
                   n_trainable=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                   fit_s=info["fit_s"], epochs=info["epochs"], best_epoch=info["best_epoch"],
                   total_s=time.perf_counter() - t0)
        t = res["test"]
        log.info("%s %-14s test ndcg@10 %.4f recall@20 %.4f ndcg@20 %.4f%s auc %.4f (%.1fs)", data.name, name,
                 t["ndcg@10"], t["recall@20"], t["ndcg@20"], f" rmse {t['rmse']:.4f}" if "rmse" in t else "",
                 t.get("auc", float("nan")), res["total_s"])
        return res, (model if mode == cfg.save_mode and fraction == largest else None)

    order = sorted(runs, key=lambda r: -(r[1] or 0.0))  # the most training users first
    done = dict(zip(order, map_tasks(one, order, workers, cfg.seed, what="fine-tuning run")))
    out: dict[str, dict] = {}
    saved = None
    for mode, fraction in runs:
        res, model = done[(mode, fraction)]
        out[mode if fraction is None else f"{mode}@{fraction:g}"] = res
        saved = model if model is not None else saved
    return out, saved


def run_name(cfg: FinetuneParams) -> str:
    """The metrics key of the saved run, e.g. ``full@1``."""
    return f"{cfg.save_mode}@{max(cfg.fractions):g}"


__all__ = ["run_variant", "train_variants", "finetune_target", "run_name"]
