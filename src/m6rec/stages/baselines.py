"""Stage `baselines`: MostPopular, ItemKNN, PureSVD, GF-CF and BPR-MF per domain (ranking), BiasedALS (ratings).

Writes per-domain model files under `out_dir`, `metrics/baselines.json` ({domain: {model: {valid, test}}}) and a
plot table of test NDCG@10 by model per domain. These are the floor every later model must beat.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from m6rec.config import TrackingParams, section
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.evaluation.protocol import EvaluateParams, evaluate_domain, evaluate_ratings, evaluate_split
from m6rec.models.gfcf import GFCF
from m6rec.models.itemknn import ItemKNN
from m6rec.models.mf import BPRMF, BiasedALS, PureSVD
from m6rec.models.popularity import MostPopular
from m6rec.runtime import set_threads
from m6rec.training.checkpoint import save_checkpoint
from m6rec.training.loop import fit
from m6rec.training.sampling import BPRSampler
from m6rec.stages.cli import stage_params

log = logging.getLogger(__name__)

MODELS = ("mostpop", "itemknn", "puresvd", "gfcf", "bprmf", "als")


@dataclass(frozen=True)
class BaselinesParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    out_dir: str = "models/baselines"  # per-domain model files
    metrics: str = "metrics/baselines.json"  # {domain: {model: {valid, test}}}
    plot: str = "plots/baselines.json"  # test NDCG@10 by domain/model (dvc plots)
    bundle: str = "models/baselines/bundle"  # BPR-MF serving bundle (a promotion candidate)
    domains: tuple[str, ...] = ()  # () = every prepared domain
    models: tuple[str, ...] = MODELS  # which baselines to run
    itemknn_neighbours: int = 100  # neighbours kept per item
    itemknn_shrink: float = 10.0  # similarity shrinkage
    svd_dim: int = 64  # PureSVD rank
    gfcf_k: int = 64  # GF-CF ideal low-pass rank
    gfcf_alpha: float = 0.3  # GF-CF weight of the ideal low-pass term
    mf_dim: int = 64  # BPR-MF embedding size
    mf_epochs: int = 40  # BPR-MF max epochs
    mf_batch: int = 4096  # BPR-MF batch size (edges)
    mf_lr: float = 0.005  # Adam learning rate
    mf_reg: float = 1e-4  # L2 weight on the batch's embeddings
    mf_eval_every: int = 5  # validate every N epochs (early stopping)
    mf_patience: int = 2  # checks without improvement before stopping
    als_dim: int = 16  # BiasedALS factors (explicit domains only)
    als_reg: float = 10.0  # BiasedALS ridge penalty
    als_iterations: int = 10  # BiasedALS alternations
    seed: int = 42


def train_bprmf(data: DomainData, cfg: BaselinesParams, ev: EvaluateParams, progress: bool = True,
                on_epoch=None) -> tuple[BPRMF, dict]:
    """BPR-MF with early stopping on the validation metric; returns the model (best weights) and fit info."""
    torch.manual_seed(cfg.seed)
    model = BPRMF(data.n_users, data.n_items, dim=cfg.mf_dim, reg=cfg.mf_reg)
    sampler = BPRSampler(data.train, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mf_lr)

    def validate() -> float:
        model.eval()
        return evaluate_split(model.score, data, "valid", ev.ks, ev.batch_users)[ev.select_metric]

    hist = fit(model, lambda epoch: sampler.epoch(cfg.mf_batch), opt, cfg.mf_epochs, validate=validate,
               eval_every=cfg.mf_eval_every, patience=cfg.mf_patience, progress=progress,
               name=f"bprmf[{data.name}]", on_epoch=on_epoch)
    model.eval()
    return model, {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "fit_s": hist.seconds,
                   "initial_valid": hist.initial_metric, "best_valid": hist.best_metric}


def run_domain(data: DomainData, cfg: BaselinesParams, ev: EvaluateParams, out_dir: Path | None = None,
               progress: bool = True, on_epoch=None, factors: dict | None = None) -> dict[str, dict]:
    """Fit and evaluate every configured baseline on one domain; returns {model: {valid, test, fit_s, ...}}.

    `factors`, if given, receives BPR-MF's (user_vectors, item_vectors) for the serving bundle.
    """
    results: dict[str, dict] = {}
    unknown = sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise ValueError(f"params.yaml baselines.models has unknown models {unknown}; known: {list(MODELS)}")
    for name in cfg.models:
        if name == "als" and not data.explicit:
            continue
        t0 = time.perf_counter()
        if name == "mostpop":
            model = MostPopular().fit(data.train)
            res = evaluate_domain(model.score, data, ev.ks, batch_users=ev.batch_users)
        elif name == "itemknn":
            model = ItemKNN(cfg.itemknn_neighbours, cfg.itemknn_shrink).fit(data.train)
            res = evaluate_domain(model.score, data, ev.ks, batch_users=ev.batch_users)
        elif name == "puresvd":
            model = PureSVD(cfg.svd_dim, seed=cfg.seed).fit(data.train)
            res = evaluate_domain(model.score, data, ev.ks, batch_users=ev.batch_users)
            if out_dir is not None:
                np.savez(out_dir / "puresvd.npz", user=model.user_vectors.numpy(), item=model.item_vectors.numpy())
        elif name == "gfcf":
            model = GFCF(cfg.gfcf_k, cfg.gfcf_alpha, seed=cfg.seed).fit(data.train)
            res = evaluate_domain(model.score, data, ev.ks, batch_users=min(ev.batch_users, 1024))
        elif name == "bprmf":
            model, info = train_bprmf(data, cfg, ev, progress, on_epoch=on_epoch)
            res = evaluate_domain(model.score, data, ev.ks, batch_users=ev.batch_users)
            res.update(info)
            if factors is not None:
                factors["bprmf"] = tuple(t.numpy() for t in model.factors())
            if out_dir is not None:
                save_checkpoint(out_dir / "bprmf.pt", model,
                                args={"n_users": data.n_users, "n_items": data.n_items, "dim": cfg.mf_dim,
                                      "reg": cfg.mf_reg},
                                params=asdict(cfg), meta={"domain": data.name})
        else:  # als: rating prediction on explicit feedback
            fr = data.frames["train"]
            model = BiasedALS(cfg.als_dim, cfg.als_reg, cfg.als_iterations, seed=cfg.seed).fit(
                fr["user"].to_numpy(), fr["item"].to_numpy(), fr["value"].to_numpy(), data.n_users, data.n_items)
            low, high = float(fr["value"].min()), float(fr["value"].max())
            predict = lambda u, i: model.predict(u, i, low, high)  # noqa: E731
            res = {"valid": evaluate_ratings(predict, data, "valid"), "test": evaluate_ratings(predict, data, "test")}
        res.setdefault("fit_s", time.perf_counter() - t0)
        res["total_s"] = time.perf_counter() - t0
        results[name] = res
        test = res["test"]
        log.info("%s %-8s test %s (%.1fs)", data.name, name,
                 ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k in ("recall@20", "ndcg@10", "ndcg@20",
                                                                            "rmse", "mae")),
                 res["total_s"])
    return results


def plot_rows(metrics: dict[str, dict[str, dict]], metric: str = "ndcg@10") -> list[dict]:
    """Flat rows for `dvc plots`: one per domain/model with the test metric."""
    return [{"model": f"{domain}/{model}", "domain": domain, f"test_{metric}": res["test"][metric]}
            for domain, models in metrics.items() for model, res in models.items() if metric in res["test"]]


def export_mf_bundle(path: Path, prepared, datas: dict[str, DomainData], factors: dict[str, dict],
                     metrics: dict[str, dict], data_version: str) -> Path:
    """The BPR-MF factors of every domain as one serving bundle (a candidate for the champion gate)."""
    from m6rec.serving.bundle import export_bundle, make_domain_bundle, raw_user_ids

    domains = {d: make_domain_bundle(datas[d], raw_user_ids(prepared, d), item_vectors=f["bprmf"][1],
                                     user_vectors=f["bprmf"][0])
               for d, f in factors.items() if "bprmf" in f}
    model_metrics = {d: {k: v for k, v in metrics[d]["bprmf"].items() if k in ("valid", "test")} for d in domains}
    return export_bundle(path, domains, {"model": "bprmf", "stage": "baselines", "metrics": model_metrics,
                                         "data_version": data_version})


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    from m6rec import tracking

    cfg = section(params, "baselines", BaselinesParams)
    ev = section(params, "evaluate", EvaluateParams)
    set_threads()
    prepared = load_prepared(cfg.in_dir)
    domains = list(cfg.domains) or prepared.domains
    out_dir = Path(cfg.out_dir)
    metrics: dict[str, dict] = {}
    datas: dict[str, DomainData] = {}
    factors: dict[str, dict] = {}
    data_version = tracking.data_version(paths=[cfg.in_dir])
    with tracking.start_run("baselines", {"baselines": asdict(cfg), "evaluate": asdict(ev)},
                            data_paths=[cfg.in_dir], settings=section(params, "tracking", TrackingParams)):
        for domain in domains:
            datas[domain] = data = domain_data(prepared, domain)
            (out_dir / domain).mkdir(parents=True, exist_ok=True)
            factors[domain] = {}

            def on_epoch(epoch: int, record: dict, domain: str = domain) -> None:
                tracking.log_epoch({f"{domain}.bprmf.{k}": v for k, v in record.items()}, step=epoch)

            metrics[domain] = run_domain(data, cfg, ev, out_dir / domain, on_epoch=on_epoch,
                                         factors=factors[domain])
        for path, payload in ((cfg.metrics, metrics), (cfg.plot, plot_rows(metrics))):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        if any("bprmf" in f for f in factors.values()):
            export_mf_bundle(Path(cfg.bundle), prepared, datas, factors, metrics, data_version)
            tracking.log_artifact(Path(cfg.bundle) / "bundle.json")
    log.info("baselines done: %s", cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
