"""Stage `pretrain`: open-domain LightGCN with text-aware items over the multi-domain graph.

Reads the graph (`graph` stage), the item text embeddings (`text_embeddings` stage) and the validated data (for the
evaluation splits). Trains :class:`m6rec.models.lightgcn.TextLightGCN` with BPR (negatives from the positive's own
domain, never cold-start items), early stopping on the mean validation `evaluate.select_metric` over the source
domains, and writes:

- `out_dir`/model.pt: self-describing checkpoint (class, constructor args, weights incl. the text buffer, resolved
  params, domain order and id offsets); rebuild with ``m6rec.training.checkpoint.load_checkpoint`` and attach the
  graph's adjacency with ``model.set_graph(load_graph(graph_dir).adj)``.
- `metrics`: ``{domain: {"lightgcn": {"valid": {...}, "test": {...}, "cold": {...}, "fit_s": ...}}}``.
- `plot`: one row per validation (epoch, mean validation metric, training loss); the full per-epoch curve is in the
  checkpoint's meta.

A domain's users are scored against that domain's items only.

Data-parallel training: ``torchrun --standalone --nproc_per_node=N -m m6rec.stages.pretrain --params params.yaml``
(see :mod:`m6rec.training.distributed` and docs/scaling.md). Every rank propagates the full graph and takes its shard
of each batch; DDP averages the gradients, rank 0 validates (the metric is broadcast so that every rank stops at the
same epoch) and alone writes outputs and talks to MLflow. Without torchrun the stage runs as a single process.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from m6rec.config import TrackingParams, load_params, section
from m6rec.data.dataset import DomainData, Prepared, domain_data, load_prepared
from m6rec.evaluation.protocol import evaluate_split
from m6rec.graph.build import BipartiteGraph, load_graph
from m6rec.graph.sampling import DomainNegativeSampler
from m6rec.log import setup_logging
from m6rec.models.lightgcn import TextLightGCN
from m6rec.runtime import set_threads
from m6rec.evaluation.protocol import EvaluateParams
from m6rec.stages.text_embeddings import load_embeddings
from m6rec.training.checkpoint import save_checkpoint
from m6rec.training.distributed import DistEnv, broadcast_float, cleanup, ddp_loss, init_distributed
from m6rec.training.loop import fit

log = logging.getLogger(__name__)

MODEL_NAME = "lightgcn"
CHECKPOINT = "model.pt"


@dataclass(frozen=True)
class PretrainParams:
    in_dir: str = "data/validated"  # canonical data (evaluation splits, cold-start items)
    graph_dir: str = "data/graph"  # output of the graph stage
    embeddings_dir: str = "data/embeddings"  # output of the text_embeddings stage
    out_dir: str = "models/pretrain"  # model.pt
    metrics: str = "metrics/pretrain.json"  # {domain: {lightgcn: {valid, test, cold}}}
    plot: str = "plots/pretrain.json"  # per-epoch loss and validation metric
    use_text: bool = True  # item input = id embedding + projection of its text vector (False: plain LightGCN)
    embedding_dim: int = 64  # size of every embedding
    num_layers: int = 3  # LightGCN propagation layers
    propagation: str = "symmetric"  # symmetric (fast custom backward) | lgconv (torch-geometric LGConv)
    epochs: int = 30  # maximum epochs (one epoch = every training edge once)
    batch_size: int = 65536  # edges per batch; each batch costs one full propagation, so batches are large
    lr: float = 0.03  # Adam learning rate (tuned for the large batch)
    reg: float = 1e-4  # L2 weight on the batch's input embeddings
    id_dropout: float = 0.0  # training: chance an item with text is represented by its text alone (cold-start drill)
    init_std: float = 0.1  # std of the id embeddings' initialisation
    eval_every: int = 5  # validate every N epochs
    patience: int = 2  # validations without improvement before stopping
    seed: int = 42  # torch and sampler seed
    bundle: str = "models/pretrain/bundle"  # serving bundle (a candidate for the champion gate)


def text_inputs(emb: np.ndarray, mask: np.ndarray, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors of the items with text [n_text, dim], their global ids [n_text]) among the first `n_items` rows of
    the text_embeddings matrix (the graph covers a prefix of the global item ids)."""
    if emb.shape[0] < n_items or mask.shape != (emb.shape[0],):
        raise ValueError(f"text embeddings cover {emb.shape[0]} items (mask {mask.shape}) but the graph has "
                         f"{n_items}: rerun text_embeddings on the same data")
    items = np.flatnonzero(mask[:n_items])
    return torch.from_numpy(np.ascontiguousarray(emb[items])), torch.from_numpy(items.astype(np.int64))


def negative_pools(prepared: Prepared, graph: BipartiteGraph) -> list[np.ndarray]:
    """Per domain index: global ids of the items that may be negatives (all but the held-out cold-start items)."""
    pools = []
    for d, off in graph.item_offsets.items():
        data_items = prepared.items[prepared.items["domain"] == d]
        cold = np.zeros(graph.n_items_per_domain[graph.domains.index(d)], dtype=bool)
        cold[data_items.loc[data_items["cold"], "item"].to_numpy(dtype=np.int64)] = True
        pools.append(off + np.flatnonzero(~cold))
    return pools


def build_model(graph: BipartiteGraph, cfg: PretrainParams, text: tuple[torch.Tensor, torch.Tensor] | None
                ) -> TextLightGCN:
    """A fresh, seeded model over the graph's id space, with its adjacency attached."""
    torch.manual_seed(cfg.seed)
    kwargs = dict(embedding_dim=cfg.embedding_dim, num_layers=cfg.num_layers, init_std=cfg.init_std,
                  propagation=cfg.propagation, reg=cfg.reg, id_dropout=cfg.id_dropout)
    feats, items = text if (text is not None and cfg.use_text) else (None, None)
    model = TextLightGCN.with_text(graph.n_users, graph.n_items, feats, items, **kwargs)
    return model.set_graph(graph.adj)


def domain_scorer(user_vecs: torch.Tensor, item_vecs: torch.Tensor, user_offset: int, item_offset: int,
                  n_items: int) -> Callable[[np.ndarray], torch.Tensor]:
    """Score function for `ranking_metrics`: a domain's local users against that domain's items only."""
    items = item_vecs[item_offset: item_offset + n_items]

    def score(users: np.ndarray) -> torch.Tensor:
        return user_vecs[torch.from_numpy(user_offset + np.asarray(users, dtype=np.int64))] @ items.t()

    return score


def evaluate_model(model: TextLightGCN, graph: BipartiteGraph, datas: dict[str, DomainData],
                   splits: tuple[str, ...], ev: EvaluateParams) -> dict[str, dict[str, dict[str, float]]]:
    """{domain: {split: metrics}} with one propagation for all domains."""
    model.eval()
    with torch.no_grad():
        user_vecs, item_vecs = (v.cpu() for v in model())  # no copy on the CPU; metrics are computed there
    u_off, i_off = graph.user_offsets, graph.item_offsets
    out = {}
    for d, data in datas.items():
        score = domain_scorer(user_vecs, item_vecs, u_off[d], i_off[d], data.n_items)
        out[d] = {s: evaluate_split(score, data, s, ev.ks, ev.batch_users) for s in splits}
        out[d] = {s: m for s, m in out[d].items() if m}  # no cold items -> no cold entry
    return out


def train(prepared: Prepared, graph: BipartiteGraph, text: tuple[torch.Tensor, torch.Tensor] | None,
          cfg: PretrainParams, ev: EvaluateParams, progress: bool = True, env: DistEnv | None = None
          ) -> tuple[TextLightGCN, dict]:
    """Train with early stopping on the mean validation metric of the source domains; returns (model, info) with
    the model on the CPU.

    `env` (from :func:`m6rec.training.distributed.init_distributed`): when distributed, this rank trains its shard of
    every batch under DDP and only rank 0 validates; every rank returns the same weights.
    """
    env = env or DistEnv()
    model = build_model(graph, cfg, text)
    if env.device.type != "cpu":
        model.to(env.device).set_graph(graph.adj.to(env.device))
    datas = {d: domain_data(prepared, d) for d in graph.source_domains}
    sampler = DomainNegativeSampler(graph.edge_user.numpy(), graph.edge_item.numpy(), graph.edge_domain.numpy(),
                                    negative_pools(prepared, graph), seed=cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve: list[dict] = []

    def validate() -> float:
        if env.rank != 0:  # same weights on every rank: rank 0 evaluates, the others take its metric
            return broadcast_float(None)
        res = evaluate_model(model, graph, datas, ("valid",), ev)
        per_domain = {d: r["valid"][ev.select_metric] for d, r in res.items()}
        log.info("valid %s: %s", ev.select_metric, ", ".join(f"{d} {v:.4f}" for d, v in per_domain.items()))
        return broadcast_float(float(np.mean(list(per_domain.values()))))

    def on_epoch(epoch: int, record: dict) -> None:
        curve.append({"epoch": epoch, **{k: float(v) for k, v in record.items()}})

    hist = fit(model, lambda epoch: sampler.epoch(cfg.batch_size), optimizer, cfg.epochs, validate=validate,
               eval_every=cfg.eval_every, patience=cfg.patience, progress=progress, on_epoch=on_epoch,
               name=MODEL_NAME, loss_fn=ddp_loss(model, env) if env.distributed else None)
    model.eval()
    if env.device.type != "cpu":
        model.cpu().set_graph(graph.adj)
    info = {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "fit_s": hist.seconds,
            "initial_valid": hist.initial_metric, "best_valid": hist.best_metric, "curve": curve}
    if env.distributed:
        info["world_size"] = env.world_size
    return model, info


def run(prepared: Prepared, graph: BipartiteGraph, text: tuple[torch.Tensor, torch.Tensor] | None,
        cfg: PretrainParams, ev: EvaluateParams, progress: bool = True, env: DistEnv | None = None
        ) -> tuple[TextLightGCN, dict, dict]:
    """Train, then evaluate every source domain on valid, test and cold; returns (model, metrics, info)."""
    model, info = train(prepared, graph, text, cfg, ev, progress, env)
    datas = {d: domain_data(prepared, d) for d in graph.source_domains}
    results = evaluate_model(model, graph, datas, ("valid", "test", "cold"), ev)
    metrics = {d: {MODEL_NAME: {**r, "fit_s": info["fit_s"], "best_epoch": info["best_epoch"]}}
               for d, r in results.items()}
    return model, metrics, info


def checkpoint_meta(graph: BipartiteGraph, emb_meta: dict | None, info: dict) -> dict:
    """Everything needed to map ids and rebuild inputs: domain order, offsets, sizes, graph and encoder."""
    return {
        "domains": list(graph.domains),
        "source_domains": list(graph.source_domains),
        "user_offsets": graph.user_offsets,
        "item_offsets": graph.item_offsets,
        "n_users": dict(zip(graph.domains, graph.n_users_per_domain)),
        "n_items": dict(zip(graph.domains, graph.n_items_per_domain)),
        "n_edges": graph.num_edges,
        "encoder": emb_meta["encoder"] if emb_meta else None,
        "encoder_max_seq_length": emb_meta.get("max_seq_length") if emb_meta else None,
        "fit": info,
    }


def export_pretrain_bundle(path: str | Path, model: TextLightGCN, graph: BipartiteGraph, prepared: Prepared,
                           emb: np.ndarray | None, mask: np.ndarray | None, emb_meta: dict | None,
                           metrics: dict, data_version: str) -> Path:
    """Propagated user/item vectors of every source domain, the items' sentence vectors and the model's own text
    projection (encoder space -> final item space), as one serving bundle."""
    from m6rec.serving.bundle import TextProjection, export_bundle, make_domain_bundle, raw_user_ids

    model.eval()
    with torch.no_grad():
        users, items = model()
    projection = None
    if model.text_proj is not None:
        weight, bias = model.text_projection()
        projection = TextProjection(weight=weight.numpy().astype(np.float32), bias=bias.numpy().astype(np.float32))
    domains = {}
    for d in graph.source_domains:
        data = domain_data(prepared, d)
        u0, i0 = graph.user_offsets[d], graph.item_offsets[d]
        text_vecs = None
        if emb is not None and mask is not None and mask[i0:i0 + data.n_items].any():
            text_vecs = np.where(mask[i0:i0 + data.n_items, None], emb[i0:i0 + data.n_items], 0).astype(np.float32)
        domains[d] = make_domain_bundle(
            data, raw_user_ids(prepared, d), item_vectors=items[i0:i0 + data.n_items].numpy(),
            user_vectors=users[u0:u0 + data.n_users].numpy(), item_text_vectors=text_vecs,
            text_projection=projection if text_vecs is not None else None)
    meta = {"model": MODEL_NAME, "stage": "pretrain", "data_version": data_version,
            "metrics": {d: {k: v for k, v in r[MODEL_NAME].items() if k in ("valid", "test", "cold")}
                        for d, r in metrics.items()}}
    if emb_meta:
        meta.update(encoder=emb_meta["encoder"], encoder_max_seq_length=emb_meta.get("max_seq_length"))
    return export_bundle(path, domains, meta)


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
    ev = section(params, "evaluate", EvaluateParams)
    set_threads()
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
        train(prepared, graph, text, cfg, ev, progress=False, env=env)
        return 0
    from m6rec import tracking

    data_version = tracking.data_version(paths=[cfg.in_dir])
    with tracking.start_run("pretrain", {"pretrain": asdict(cfg), "evaluate": asdict(ev)},
                            tags={"world_size": str(env.world_size)} if env.distributed else None,
                            data_paths=[cfg.in_dir, cfg.graph_dir, cfg.embeddings_dir],
                            settings=section(params, "tracking", TrackingParams)):
        model, metrics, info = run(prepared, graph, text, cfg, ev, env=env)
        for row in info["curve"]:
            tracking.log_epoch({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics(metrics)
        export_pretrain_bundle(cfg.bundle, model, graph, prepared, emb, mask, emb_meta, metrics, data_version)
        tracking.log_artifact(Path(cfg.bundle) / "bundle.json")
    out = save_checkpoint(Path(cfg.out_dir) / CHECKPOINT, model, args=model.config(),
                          params={"pretrain": asdict(cfg), "evaluate": asdict(ev)},
                          meta=checkpoint_meta(graph, emb_meta, info))
    plot = [{"epoch": r["epoch"], "valid_metric": r["valid_metric"], "loss": r["loss"]}
            for r in info["curve"] if "valid_metric" in r]
    for path, payload in ((cfg.metrics, metrics), (cfg.plot, plot)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    for d, r in metrics.items():
        res = r[MODEL_NAME]
        log.info("%s test ndcg@20 %.4f recall@20 %.4f%s", d, res["test"]["ndcg@20"], res["test"]["recall@20"],
                 f", cold ndcg@20 {res['cold']['ndcg@20']:.4f}" if "cold" in res else "")
    log.info("pretrain done in %.1fs (best epoch %d) -> %s, %s", info["fit_s"], info["best_epoch"], out, cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
