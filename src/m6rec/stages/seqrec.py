"""Stage `seqrec`: the universal text-based sequence model, pretrained once on the source domains and served on
every domain with item text, the ones it never trained on included (zero-shot).

Reads the validated data and the items' sentence vectors (`text_embeddings` stage). Pretraining
(:func:`m6rec.training.seqrec.pretrained_model`) runs on the training sequences of `sources` (default: the
pretrain-role domains that are not fine-tuning targets) and is skipped when `out_dir`/model.pt was trained on the
same inputs (same fingerprint): a domain added by config (``m6rec add-domain``) is onboarded through this stage
without re-pretraining. Every other served domain is scored zero-shot from its item texts and its observed
popularity, with the score terms calibrated label-free on its training histories
(:func:`m6rec.training.seqrec.serve_target`); the fine-tuning targets (`finetune`) are also fine-tuned in
`finetune_mode` on all their training users, and the better of the two on validation is served. Domains without
item text vectors are skipped (logged).

Outputs: `out_dir`/model.pt (the pretrained model; meta: sources, fingerprint, fit record), `metrics` ({domain:
{seqrec: {valid, test, cold, mode, role, mix}}}: `mode` is what is served, source / zero_shot / the fine-tuning
mode) and `bundle` (every served domain, dot-product scorer: a promotion candidate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from m6rec import registry, tracking
from m6rec.config import ProtocolParams, domain_entries, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.sequences import split_histories
from m6rec.data.splits import ordered_domains
from m6rec.evaluation.protocol import evaluate_domain
from m6rec.model_params import SeqRecParams
from m6rec.models.textsim import domain_text_vectors
from m6rec.runtime import configure as configure_runtime
from m6rec.runtime import map_tasks, task_seed, worker_count
from m6rec.serving.bundle_io import export_bundle
from m6rec.serving.export import bundle_meta, domain_bundle, raw_user_ids
from m6rec.stage_io import stage_params, tracking_settings, write_metrics
from m6rec.text.embeddings import load_embeddings
from m6rec.training.checkpoint import save_checkpoint
from m6rec.training.seqrec import SeqRecTrainParams, pretrained_model, serve_target

log = logging.getLogger(__name__)
CHECKPOINT = "model.pt"


def roles(params: dict, cfg: SeqRecParams) -> tuple[list[str], list[str]]:
    """(sources, fine-tuning targets): the section's lists, else resolved from the top-level domain roles."""
    entries = domain_entries(params) if "domains" in params else []
    sources = list(cfg.sources) or [e.name for e in entries if e.pretrain and not e.finetune]
    targets = list(cfg.finetune) or [e.name for e in entries if e.finetune]
    return sources, targets


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "seqrec", SeqRecParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    t0 = time.perf_counter()
    prepared = load_prepared(cfg.in_dir)
    emb, mask, emb_meta = load_embeddings(cfg.embeddings_dir)
    declared = list(cfg.domains) or list(prepared.domains)
    with_text = [d for d in declared if d in emb_meta["item_offsets"]
                 and mask[emb_meta["item_offsets"][d]: emb_meta["item_offsets"][d] + emb_meta["n_items"][d]].any()]
    skipped = sorted(set(declared) - set(with_text))
    if skipped:
        log.info("seqrec skips %s: no item text vectors", skipped)
    sources, ft_targets = roles(params, cfg)
    sources = [d for d in sources if d in with_text]
    if not sources:
        raise SystemExit(f"seqrec: no source domain with item text among "
                         f"{list(cfg.sources) or 'the pretrain-role domains'}")
    text = domain_text_vectors(emb, emb_meta, with_text)
    ordered = ordered_domains(prepared.meta, with_text)
    datas = {d: domain_data(prepared, d) for d in with_text}
    train = SeqRecTrainParams(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, patience=cfg.patience,
                              valid_users=cfg.valid_users, seed=cfg.seed)
    tune = SeqRecTrainParams(**{**asdict(train), "epochs": cfg.finetune_epochs})
    model_args = dict(text_dim=int(emb.shape[1]), dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                      max_len=cfg.max_len, n_experts=cfg.n_experts, dropout=cfg.dropout)
    resolved = {"seqrec": asdict(cfg), "protocol": asdict(protocol), "sources": sources}
    with tracking.start_run("seqrec", resolved, settings=tracking_settings(params),
                            data_paths=[cfg.in_dir, cfg.embeddings_dir]):
        ckpt = Path(cfg.out_dir) / CHECKPOINT
        model, record, reused = pretrained_model(ckpt, model_args, {d: datas[d] for d in sources}, text, protocol,
                                                 train, progress=True)
        if not reused:
            save_checkpoint(ckpt, model, args=model.config(), params=resolved,
                            meta={**record, "encoder": emb_meta.get("encoder")})
        for row in record["valid"]:
            tracking.log_epoch({"valid_metric": row[1]}, step=row[0])

        def serve_one(d: str) -> tuple[dict, dict]:
            """One domain's served model, figures and bundle (in a worker process when runtime.workers allows)."""
            data = datas[d]
            if d in sources:
                served, info = model, {"mode": "source", "mix": {**model.mix, "text_tau": None}}
            else:
                served, info = serve_target(model, data, text[d], protocol, tune, cfg.calibrate,
                                            cfg.finetune_mode if d in ft_targets else None, ordered=ordered[d])
            res = evaluate_domain(served, data, protocol, ("valid", "test", "cold"))
            role = "source" if d in sources else "finetune" if d in ft_targets else "zero_shot"
            log.info("%s seqrec (%s) test ndcg@10 %.4f ndcg@20 %.4f", d, info["mode"], res["test"]["ndcg@10"],
                     res["test"]["ndcg@20"])
            served.set_histories(d, split_histories(data, served.history_len)["test"])
            bundle = domain_bundle(served.export(d), data, raw_user_ids(prepared, d))
            return {"seqrec": {**res, "mode": info["mode"], "role": role, "mix": info["mix"]}}, bundle

        # the longest first: fine-tuning targets (they train), then by size
        order = sorted(datas, key=lambda d: (d not in ft_targets or d in sources,
                                             -datas[d].n_users * datas[d].n_items))
        done = dict(zip(order, map_tasks(serve_one, order, worker_count(params), task_seed(params), what="domain")))
        metrics: dict[str, dict] = {}
        bundles = {}
        for d in datas:
            metrics[d], bundles[d] = done.pop(d)
        write_metrics(cfg.metrics, metrics)
        meta = bundle_meta("seqrec", "seqrec", {d: m["seqrec"] for d, m in metrics.items()},
                           tracking.data_version(paths=[cfg.in_dir]), encoder=emb_meta.get("encoder"),
                           encoder_max_seq_length=emb_meta.get("max_seq_length"), sources=sources)
        bundle = export_bundle(cfg.bundle, bundles, meta)
        tracking.log_metrics(metrics)
        tracking.log_artifact(cfg.metrics)
        tracking.log_artifact(bundle / "bundle.json")
        registry.log_bundle_model(bundle, prepared)
    log.info("seqrec done in %.1fs (%s pretraining) -> %s, %s", time.perf_counter() - t0,
             "reused" if reused else "new", cfg.metrics, cfg.bundle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
