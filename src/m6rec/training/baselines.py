"""The baselines every later model must beat, fitted and evaluated per domain (the `baselines` stage's work):
MostPopular, ItemKNN, PureSVD, GF-CF, BPR-MF and EASE (ranking, the shared protocol) and BiasedALS (ratings).

Every ranking baseline exports a serving bundle (``model.export(domain)``, :mod:`m6rec.models.base`)."""

from __future__ import annotations

import logging
import time

import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData
from m6rec.evaluation.protocol import evaluate, evaluate_domain, evaluate_ratings
from m6rec.model_params import BaselinesParams
from m6rec.models.ease import EASE
from m6rec.models.gfcf import GFCF
from m6rec.models.itemknn import ItemKNN
from m6rec.models.mf import BPRMF, BiasedALS, PureSVD
from m6rec.models.popularity import MostPopular
from m6rec.training.loop import fit
from m6rec.training.sampling import BPRSampler

log = logging.getLogger(__name__)

MODELS = ("mostpop", "itemknn", "puresvd", "gfcf", "bprmf", "ease", "als")


def train_bprmf(data: DomainData, cfg: BaselinesParams, protocol: ProtocolParams, progress: bool = True,
                on_epoch=None) -> tuple[BPRMF, dict]:
    """BPR-MF with early stopping on the validation metric; returns the model (best weights) and fit info."""
    torch.manual_seed(cfg.seed)
    model = BPRMF(data.n_users, data.n_items, dim=cfg.mf_dim, reg=cfg.mf_reg)
    model.domain = data.name
    sampler = BPRSampler(data.train, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mf_lr)

    def validate() -> float:
        model.eval()
        return evaluate(model, data, "valid", protocol)[protocol.select_metric]

    hist = fit(model, lambda epoch: sampler.epoch(cfg.mf_batch), opt, cfg.mf_epochs, validate=validate,
               eval_every=cfg.mf_eval_every, patience=cfg.mf_patience, progress=progress,
               name=f"bprmf[{data.name}]", on_epoch=on_epoch)
    model.eval()
    return model, {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "fit_s": hist.seconds,
                   "initial_valid": hist.initial_metric, "best_valid": hist.best_metric}


def train_ease(data: DomainData, cfg: BaselinesParams, protocol: ProtocolParams) -> tuple[EASE, dict]:
    """EASE with λ from ``cfg.ease_lambdas``: the value with the best validation metric (the Gram matrix is built
    once; each λ costs one Cholesky inverse). Returns the model at the best λ and each λ's figure."""
    if not cfg.ease_lambdas:
        raise ValueError("params.yaml baselines.ease_lambdas is empty")
    model = EASE(cfg.ease_lambdas[0], max_items=cfg.ease_max_items)
    model.domain = data.name
    grid: dict[str, float] = {}
    best = (float("-inf"), cfg.ease_lambdas[0], None)
    for lam in cfg.ease_lambdas:
        model.fit(data.train, lam)
        grid[str(lam)] = figure = evaluate(model, data, "valid", protocol)[protocol.select_metric]
        log.info("%s ease lambda %g: valid %s %.4f", data.name, lam, protocol.select_metric, figure)
        if figure > best[0]:
            best = (figure, lam, model.B)
    model.lam, model.B = best[1], best[2]  # the best λ's B, kept: no refit
    model.release()
    return model, {"lambda": best[1], "lambda_grid": grid}


def fit_baseline(name: str, data: DomainData, cfg: BaselinesParams, protocol: ProtocolParams,
                 progress: bool = True, on_epoch=None):
    """One fitted ranking baseline for `data` (its ``domain`` set) and its fit info."""
    if name == "mostpop":
        model, info = MostPopular().fit(data.train), {}
    elif name == "itemknn":
        model, info = ItemKNN(cfg.itemknn_neighbours, cfg.itemknn_shrink).fit(data.train), {}
    elif name == "puresvd":
        model, info = PureSVD(cfg.svd_dim, seed=cfg.seed).fit(data.train), {}
    elif name == "gfcf":
        model, info = GFCF(cfg.gfcf_k, cfg.gfcf_alpha, seed=cfg.seed).fit(data.train), {}
    elif name == "bprmf":
        model, info = train_bprmf(data, cfg, protocol, progress, on_epoch=on_epoch)
    elif name == "ease":
        model, info = train_ease(data, cfg, protocol)
    else:
        raise ValueError(f"unknown ranking baseline {name!r}; known: {[m for m in MODELS if m != 'als']}")
    model.domain = data.name
    return model, info


def rating_baseline(data: DomainData, cfg: BaselinesParams) -> dict[str, dict]:
    """BiasedALS on an explicit-feedback domain: {valid, test} RMSE/MAE."""
    fr = data.frames["train"]
    model = BiasedALS(cfg.als_dim, cfg.als_reg, cfg.als_iterations, seed=cfg.seed).fit(
        fr["user"].to_numpy(), fr["item"].to_numpy(), fr["value"].to_numpy(), data.n_users, data.n_items)
    low, high = float(fr["value"].min()), float(fr["value"].max())
    predict = lambda u, i: model.predict(u, i, low, high)  # noqa: E731
    return {"valid": evaluate_ratings(predict, data, "valid"), "test": evaluate_ratings(predict, data, "test")}


def run_domain(data: DomainData, cfg: BaselinesParams, protocol: ProtocolParams, progress: bool = True,
               on_epoch=None) -> tuple[dict[str, dict], dict]:
    """Fit and evaluate every configured baseline on one domain; returns ({model: {valid, test, fit_s, ...}},
    {model: the fitted ranking model})."""
    unknown = sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise ValueError(f"params.yaml baselines.models has unknown models {unknown}; known: {list(MODELS)}")
    results: dict[str, dict] = {}
    fitted: dict = {}
    for name in cfg.models:
        if name == "als" and not data.explicit:
            continue
        t0 = time.perf_counter()
        if name == "als":
            res = rating_baseline(data, cfg)
        else:
            model, info = fit_baseline(name, data, cfg, protocol, progress, on_epoch)
            fit_s = time.perf_counter() - t0
            res = {**evaluate_domain(model, data, protocol), **info}
            res.setdefault("fit_s", fit_s)
            fitted[name] = model
        res.setdefault("fit_s", time.perf_counter() - t0)
        res["total_s"] = time.perf_counter() - t0
        results[name] = res
        test = res["test"]
        log.info("%s %-8s test %s (%.1fs)", data.name, name,
                 ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k in ("recall@20", "ndcg@10", "ndcg@20",
                                                                            "rmse", "mae")),
                 res["total_s"])
    return results, fitted


def plot_rows(metrics: dict[str, dict[str, dict]], metric: str = "ndcg@10") -> list[dict]:
    """Flat rows for `dvc plots`: one per domain/model with the test metric."""
    return [{"model": f"{domain}/{model}", "domain": domain, f"test_{metric}": res["test"][metric]}
            for domain, models in metrics.items() for model, res in models.items() if metric in res["test"]]
