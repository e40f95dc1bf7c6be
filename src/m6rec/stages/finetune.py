"""Stage `finetune`: adapt the multi-task model to each target domain; zero-shot, parameter-efficient and full
fine-tuning against the same model trained from scratch, on shares of the target's training users.

Starting point: the `multitask` stage's checkpoint (history attention and task heads trained on the source
domains, over the `pretrain` stage's item vectors) and the pretrained item inputs of the target. Modes
(:func:`m6rec.training.assembly.target_model`):

- ``zero_shot``: no target training at all; the target's item vectors come from pretraining (see `target_items`),
  the attention, heads and the per-domain recency adapter (mean of the source domains') from the multitask model;
- ``efficient``: only the task heads, the logit scale, the target's recency adapter and the text projection train;
- ``full``: every parameter trains (item residuals and the attention included);
- ``scratch``: the same architecture, randomly initialised, trained like ``full``.

`target_items`: ``text`` (default) builds the target's item vectors from the pretrained text projection alone, as the
pretrained model would for a domain it never saw, so that the comparison with ``scratch`` on a few users is not
flattered by pretraining on the target's other users (the text projection was still fitted with the target's item
texts in the graph if the target was a pretraining domain; excluding it from `graph.domains` makes the run fully
clean). ``pretrained`` uses the target's pretrained (propagated) item vectors as the frozen base.

Inductive: a target that was not a pretraining domain (``pretrain: false``, e.g. added by ``m6rec add-domain``)
is fine-tuned from its item texts (`embeddings_dir`), with ``target_items: text``.

Training users are seeded, nested subsets of the users with at least two training interactions; early stopping
validates on those users' validation items only. Every run is evaluated on the target's full test split.

Outputs: `metrics` ({domain: {"zero_shot" | "<mode>@<fraction>": {valid, test, fit_s, ...}}}), `plot` (test
NDCG@10 per fraction, one column per domain/mode), `out_dir`/<domain>/model.pt (`save_mode` at the largest
fraction) and `bundle`: the multi-task model's domains (from `source_bundle`) plus every fine-tuned target, each
scored by its own history attention (a promotion candidate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from m6rec import registry, tracking
from m6rec.config import ConfigError, ProtocolParams, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.model_params import FinetuneParams
from m6rec.runtime import configure as configure_runtime
from m6rec.runtime import worker_count
from m6rec.serving.bundle_io import export_bundle, read_meta
from m6rec.serving.export import bundle_meta, domain_bundle, merge_bundles, raw_user_ids
from m6rec.stage_io import stage_params, tracking_settings, write_json, write_metrics
from m6rec.training.assembly import CHECKPOINT, load_pretrained, with_unseen_domains
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.training.transfer import finetune_target, run_name

log = logging.getLogger(__name__)


def plot_rows(metrics: dict[str, dict], fractions: tuple[float, ...], metric: str = "ndcg@10") -> list[dict]:
    """One row per fraction with a ``<domain>/<mode>`` column of test `metric` (zero-shot repeated as a level)."""
    rows = []
    for f in sorted(fractions):
        row: dict = {"fraction": f}
        for d, runs in metrics.items():
            for res in runs.values():
                if res["fraction"] is None or res["fraction"] == f:
                    row[f"{d}/{res['mode']}"] = res["test"][metric]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "finetune", FinetuneParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    t0 = time.perf_counter()
    prepared = load_prepared(cfg.in_dir)
    source, _ = load_checkpoint(Path(cfg.multitask_dir) / CHECKPOINT)
    items = load_pretrained(cfg.pretrain_dir, cfg.graph_dir)
    resolved = {"finetune": asdict(cfg), "protocol": asdict(protocol)}
    with tracking.start_run("finetune", resolved, settings=tracking_settings(params),
                            data_paths=[cfg.in_dir, cfg.multitask_dir]):
        metrics: dict[str, dict] = {}
        targets = {}
        datas = {d: domain_data(prepared, d) for d in cfg.domains}
        unseen = [d for d in datas if d not in items.base]
        if unseen and cfg.target_items == "pretrained":
            raise ConfigError(f"finetune targets {unseen} were not pretraining domains, so they have no pretrained "
                              f"item vectors: use finetune.target_items: text (their items from their text)")
        items = with_unseen_domains(items, datas, cfg.embeddings_dir)
        for domain, data in datas.items():
            if cfg.target_items == "pretrained" and domain not in items.source_domains:
                log.warning("%s was not a pretraining domain: its 'pretrained' item vectors are untrained", domain)
            metrics[domain], model = finetune_target(source, items, data, cfg, protocol,
                                                     workers=worker_count(params))
            if model is None:
                continue
            targets[domain] = (domain_bundle(model.export(domain), data, raw_user_ids(prepared, domain)),
                               metrics[domain][run_name(cfg)])
            save_checkpoint(Path(cfg.out_dir) / domain / CHECKPOINT, model, args=model.config(), params=resolved,
                            meta={"domain": domain, "mode": cfg.save_mode, "fraction": max(cfg.fractions),
                                  "source": str(Path(cfg.multitask_dir) / CHECKPOINT),
                                  "source_domains": list(source.domains), "encoder": items.encoder})
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # a declared output even when no model is saved
        write_metrics(cfg.metrics, metrics)
        write_json(cfg.plot, plot_rows(metrics, cfg.fractions))
        if cfg.bundle and (targets or cfg.source_bundle):
            name = f"finetune-{cfg.save_mode}"  # the family: e.g. attention_mt-finetune-full
            if cfg.source_bundle:
                name = f"{read_meta(cfg.source_bundle).get('model', 'multitask')}-{name}"
            meta = bundle_meta(name, "finetune", {d: m for d, (_, m) in targets.items()},
                               tracking.data_version(paths=[cfg.in_dir]), encoder=items.encoder,
                               encoder_max_seq_length=items.encoder_max_seq_length)
            domains = {d: b for d, (b, _) in targets.items()}
            if cfg.source_bundle:
                domains, meta = merge_bundles(cfg.source_bundle, domains, meta)
            bundle = export_bundle(cfg.bundle, domains, meta)
            tracking.log_artifact(bundle / "bundle.json")
            registry.log_bundle_model(bundle, prepared)
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
    log.info("finetune done in %.1fs -> %s", time.perf_counter() - t0, cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
