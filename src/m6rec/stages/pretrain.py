"""Stage `pretrain`: open-domain LightGCN with text-aware items over the multi-domain graph.

Reads the graph (`graph` stage), the item text embeddings (`text_embeddings` stage) and the validated data (for the
evaluation splits). Trains :class:`m6rec.models.lightgcn.TextLightGCN` (:mod:`m6rec.training.pretrain`: BPR,
negatives from the positive's own domain, never cold-start items, early stopping on the mean validation
`protocol.select_metric` over the source domains), and writes:

- `out_dir`/model.pt: self-describing checkpoint (class, constructor args, weights incl. the text buffer, resolved
  params, domain order and id offsets); rebuild with ``m6rec.training.checkpoint.load_checkpoint`` and attach the
  graph's adjacency with ``model.set_graph(load_graph(graph_dir).adj)``.
- `metrics`: ``{domain: {"lightgcn": {"valid": {...}, "test": {...}, "cold": {...}, "fit_s": ...}}}``.
- `plot`: one row per validation (epoch, mean validation metric, training loss); the full per-epoch curve is in the
  checkpoint's meta.
- `bundle`: the serving bundle of every source domain (dot scorer, the model's own text projection).

A domain's users are scored against that domain's items only.

Data-parallel training: ``torchrun --standalone --nproc_per_node=N -m m6rec.stages.pretrain --params params.yaml``
(see :mod:`m6rec.training.distributed` and docs/scaling.md). Every rank propagates the full graph and takes its shard
of each batch; DDP averages the gradients, rank 0 validates (the metric is broadcast so that every rank stops at the
same epoch) and alone writes outputs and talks to MLflow. Without torchrun the stage runs as a single process.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from m6rec.config import ProtocolParams, load_params, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.graph.build import load_graph
from m6rec.log import setup_logging
from m6rec.model_params import PretrainParams
from m6rec.runtime import configure as configure_runtime
from m6rec.serving.export import bundle_meta, export_model
from m6rec.stage_io import split_timings, tracking_settings, write_json, write_metrics
from m6rec.text.embeddings import load_embeddings
from m6rec.training.checkpoint import save_checkpoint
from m6rec.training.distributed import DistEnv, cleanup, init_distributed
from m6rec.training.pretrain import CHECKPOINT, MODEL_NAME, checkpoint_meta, run, text_inputs, train

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    env = init_distributed()
    try:
        return _main(args.params, env)
    finally:
        if env.distributed:
            cleanup()


def _main(params_path: str, env: DistEnv) -> int:
    """The stage on one process; with `env` distributed, ranks other than 0 only train (no outputs, no MLflow)."""
    setup_logging(None if env.rank == 0 else "WARNING")
    params = load_params(params_path)
    cfg = section(params, "pretrain", PretrainParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    prepared = load_prepared(cfg.in_dir)
    graph = load_graph(cfg.graph_dir)
    if list(graph.domains) != prepared.domains[: len(graph.domains)] or any(
            graph.n_items_per_domain[k] != prepared.meta["per_domain"][d]["n_items"]
            for k, d in enumerate(graph.domains)):
        raise SystemExit(f"graph in {cfg.graph_dir} (domains {list(graph.domains)}) does not match the data in "
                         f"{cfg.in_dir} ({prepared.domains}): rerun the graph stage")
    text, emb, mask, emb_meta = None, None, None, None
    if cfg.use_text:
        emb, mask, emb_meta = load_embeddings(cfg.embeddings_dir)
        if emb_meta["domains"] != prepared.domains:
            raise SystemExit(f"text embeddings in {cfg.embeddings_dir} follow domains {emb_meta['domains']} but "
                             f"{cfg.in_dir} has {prepared.domains}: rerun the text_embeddings stage")
        text = text_inputs(emb, mask, graph.n_items)
    if env.rank != 0:
        train(prepared, graph, text, cfg, protocol, progress=False, env=env)
        return 0
    from m6rec import registry, tracking

    resolved = {"pretrain": asdict(cfg), "protocol": asdict(protocol)}
    with tracking.start_run("pretrain", resolved, settings=tracking_settings(params),
                            tags={"world_size": str(env.world_size)} if env.distributed else None,
                            data_paths=[cfg.in_dir, cfg.graph_dir, cfg.embeddings_dir]):
        model, metrics, info = run(prepared, graph, text, cfg, protocol, env=env)
        for row in info["curve"]:
            tracking.log_epoch({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics(metrics)
        datas = {d: domain_data(prepared, d) for d in graph.source_domains}
        meta = bundle_meta(MODEL_NAME, "pretrain", {d: r[MODEL_NAME] for d, r in metrics.items()},
                           tracking.data_version(paths=[cfg.in_dir]),
                           encoder=emb_meta["encoder"] if emb_meta else None,
                           encoder_max_seq_length=emb_meta.get("max_seq_length") if emb_meta else None)
        export_model(cfg.bundle, model, datas, prepared, meta)
        tracking.log_artifact(Path(cfg.bundle) / "bundle.json")
        registry.log_bundle_model(cfg.bundle, prepared)
    # the fit record without its seconds (they are in the metrics' timings file and MLflow): the checkpoint is then
    # the same bytes on a rerun, so a fresh `make run` leaves dvc.lock as committed
    out = save_checkpoint(Path(cfg.out_dir) / CHECKPOINT, model, args=model.config(), params=resolved,
                          meta=checkpoint_meta(graph, emb_meta, split_timings(info)[0]))
    write_metrics(cfg.metrics, metrics)
    write_json(cfg.plot, [{"epoch": r["epoch"], "valid_metric": r["valid_metric"], "loss": r["loss"]}
                          for r in info["curve"] if "valid_metric" in r])
    for d, r in metrics.items():
        res = r[MODEL_NAME]
        log.info("%s test ndcg@20 %.4f recall@20 %.4f%s", d, res["test"]["ndcg@20"], res["test"]["recall@20"],
                 f", cold ndcg@20 {res['cold']['ndcg@20']:.4f}" if "cold" in res else "")
    log.info("pretrain done in %.1fs (best epoch %d) -> %s, %s", info["fit_s"], info["best_epoch"], out, cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
