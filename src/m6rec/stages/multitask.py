"""Stage `multitask`: history attention + multi-task heads over the pretrained item vectors, one model for all domains.

Reads the pretrained LightGCN (`pretrain` stage, with the graph of the `graph` stage to propagate it once) and the
validated data, and trains on all `domains` jointly each of the `variants` (:mod:`m6rec.training.transfer`):
``attention_mt`` / ``mean_mt`` (target attention / mean-pooled history, retrieval + rating + like heads) and
``attention_st`` / ``mean_st`` (retrieval only). Every variant is evaluated on valid and test (full ranking; RMSE
of the rating head, or of the score's calibration for single-task variants; like AUC).

Outputs: `out_dir`/model.pt (the `save_variant`, self-describing), `metrics` ({domain: {variant: {valid, test,
fit_s}}}), `plot` (test NDCG@20 per domain/variant), `explanations` (markdown: a few users' recommendations with the
history items attention credits) and `bundle` (the `save_variant`'s serving bundle, history scorer).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from m6rec import registry, tracking
from m6rec.config import ProtocolParams, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.splits import ordered_domains
from m6rec.evaluation.explain import explanations_markdown
from m6rec.model_params import MultitaskParams
from m6rec.runtime import configure as configure_runtime
from m6rec.runtime import worker_count
from m6rec.serving.export import bundle_meta, export_model
from m6rec.stage_io import stage_params, tracking_settings, write_json, write_metrics, write_text
from m6rec.training.assembly import CHECKPOINT, load_pretrained
from m6rec.training.checkpoint import save_checkpoint
from m6rec.training.transfer import train_variants

log = logging.getLogger(__name__)


def plot_rows(metrics: dict[str, dict], metric: str = "ndcg@20") -> list[dict]:
    return [{"model": f"{d}/{v}", "domain": d, f"test_{metric}": r["test"][metric]}
            for d, variants in metrics.items() for v, r in variants.items()]


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "multitask", MultitaskParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    t0 = time.perf_counter()
    prepared = load_prepared(cfg.in_dir)
    items = load_pretrained(cfg.pretrain_dir, cfg.graph_dir)
    domains = list(cfg.domains) or [d for d in items.source_domains if d in prepared.domains]
    unseen = [d for d in domains if d not in items.source_domains]
    if unseen:
        log.warning("multitask domains %s were not pretraining domains: their item vectors are text only", unseen)
    datas = {d: domain_data(prepared, d) for d in domains}
    ordered = ordered_domains(prepared.meta, domains)
    resolved = {"multitask": asdict(cfg), "protocol": asdict(protocol)}
    with tracking.start_run("multitask", resolved, settings=tracking_settings(params),
                            data_paths=[cfg.in_dir, cfg.pretrain_dir]):
        model, metrics, explanations = train_variants(items, datas, cfg, protocol, ordered=ordered,
                                                       workers=worker_count(params))
        out = save_checkpoint(Path(cfg.out_dir) / CHECKPOINT, model, args=model.config(), params=resolved,
                              meta={"domains": domains, "variant": cfg.save_variant, "encoder": items.encoder,
                                    "ordered": ordered, "pretrain_source_domains": list(items.source_domains)})
        write_metrics(cfg.metrics, metrics)
        write_json(cfg.plot, plot_rows(metrics))
        write_text(cfg.explanations, explanations_markdown(explanations, cfg.save_variant))
        meta = bundle_meta(cfg.save_variant, "multitask", {d: metrics[d][cfg.save_variant] for d in datas},
                           tracking.data_version(paths=[cfg.in_dir]), encoder=items.encoder,
                           encoder_max_seq_length=items.encoder_max_seq_length)
        bundle = export_model(cfg.bundle, model, datas, prepared, meta)
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        tracking.log_artifact(cfg.explanations)
        tracking.log_artifact(bundle / "bundle.json")
        registry.log_bundle_model(bundle, prepared)
    log.info("multitask done in %.1fs -> %s, %s, %s", time.perf_counter() - t0, out, cfg.metrics, cfg.explanations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
