"""Stage `baselines`: MostPopular, ItemKNN, PureSVD, GF-CF, BPR-MF and EASE per domain (ranking), BiasedALS
(ratings).

Fits and evaluates them (:mod:`m6rec.training.baselines`) and writes per-domain model files under `out_dir`,
`metrics` ({domain: {model: {valid, test}}}), a plot table of test NDCG@10 by model per domain, and one serving
bundle per ranking model, every domain in it: `bundles`/<model>/ (meta ``model`` = <model>, ``stage`` =
``baselines``, ``metrics`` = {domain: {<model>: {valid, test}}}), each a promotion candidate. `bundle` is the BPR-MF
bundle as before (a copy of `bundles`/bprmf). These are the floor every later model must beat.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from m6rec import registry, tracking
from m6rec.config import ProtocolParams, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.model_params import BaselinesParams
from m6rec.runtime import configure as configure_runtime
from m6rec.serving.export import bundle_meta, export_model
from m6rec.stage_io import stage_params, tracking_settings, write_json, write_metrics
from m6rec.training.baselines import plot_rows, run_domain
from m6rec.training.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

SERVED = "bprmf"  # the baseline whose bundle is also written at `bundle` (the register stage's candidate)


def save_models(out_dir: Path, fitted: dict, cfg: BaselinesParams) -> None:
    """BPR-MF as a self-describing checkpoint, PureSVD's factors as arrays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if "puresvd" in fitted:
        svd = fitted["puresvd"]
        np.savez(out_dir / "puresvd.npz", user=svd.user_vectors.numpy(), item=svd.item_vectors.numpy())
    if "bprmf" in fitted:
        mf = fitted["bprmf"]
        save_checkpoint(out_dir / "bprmf.pt", mf, args={"n_users": mf.n_users, "n_items": mf.n_items,
                                                        "dim": cfg.mf_dim, "reg": cfg.mf_reg},
                        params=asdict(cfg), meta={"domain": mf.domain})


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "baselines", BaselinesParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    prepared = load_prepared(cfg.in_dir)
    domains = list(cfg.domains) or prepared.domains
    metrics: dict[str, dict] = {}
    served: dict[str, dict] = {}  # {model: {domain: fitted model}}
    datas = {}
    resolved = {"baselines": asdict(cfg), "protocol": asdict(protocol)}
    with tracking.start_run("baselines", resolved, settings=tracking_settings(params),
                            data_paths=[cfg.in_dir]):
        for domain in domains:
            datas[domain] = data = domain_data(prepared, domain)

            def on_epoch(epoch: int, record: dict, domain: str = domain) -> None:
                tracking.log_epoch({f"{domain}.bprmf.{k}": v for k, v in record.items()}, step=epoch)

            metrics[domain], fitted = run_domain(data, cfg, protocol, on_epoch=on_epoch)
            save_models(Path(cfg.out_dir) / domain, fitted, cfg)
            for name, model in fitted.items():
                served.setdefault(name, {})[domain] = model
            fitted = None
        write_metrics(cfg.metrics, metrics)
        write_json(cfg.plot, plot_rows(metrics))
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        version = tracking.data_version(paths=[cfg.in_dir]) if served else ""
        for name, per_domain in served.items():
            meta = bundle_meta(name, "baselines", {d: metrics[d][name] for d in per_domain}, version)
            path = export_model(Path(cfg.bundles) / name, per_domain, {d: datas[d] for d in per_domain}, prepared,
                                meta)
            tracking.log_artifact(path / "bundle.json", artifact_path=f"bundles/{name}")
            registry.log_bundle_model(path, prepared, name=name)
            if name == SERVED:
                if Path(cfg.bundle).exists():
                    shutil.rmtree(cfg.bundle)
                shutil.copytree(path, cfg.bundle)
    log.info("baselines done: %s", cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
