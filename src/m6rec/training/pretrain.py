"""Pretraining the open-domain LightGCN with text-aware items over the multi-domain graph (the `pretrain` stage's
work): BPR with negatives from the positive's own domain (never cold-start items), early stopping on the mean
validation metric over the source domains, optionally data-parallel under torchrun (every rank propagates the full
graph and takes its shard of each batch; DDP averages the gradients; rank 0 validates and broadcasts the metric so
that every rank stops at the same epoch)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import Prepared, domain_data
from m6rec.evaluation.protocol import evaluate_domains
from m6rec.graph.build import BipartiteGraph
from m6rec.graph.sampling import DomainNegativeSampler
from m6rec.model_params import PretrainParams
from m6rec.models.lightgcn import TextLightGCN
from m6rec.training.distributed import DistEnv, broadcast_float, ddp_loss
from m6rec.training.loop import fit

log = logging.getLogger(__name__)

MODEL_NAME = "lightgcn"
CHECKPOINT = "model.pt"


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
    return model.set_graph(graph.adj).set_domains(domain_layout(graph))


def domain_layout(graph: BipartiteGraph) -> dict[str, tuple[int, int, int, int]]:
    """``{domain: (user_offset, n_users, item_offset, n_items)}`` of the graph's source domains."""
    return {d: (graph.user_offsets[d], graph.n_users_per_domain[k], graph.item_offsets[d],
                graph.n_items_per_domain[k])
            for k, d in enumerate(graph.domains) if d in graph.source_domains}


def train(prepared: Prepared, graph: BipartiteGraph, text: tuple[torch.Tensor, torch.Tensor] | None,
          cfg: PretrainParams, protocol: ProtocolParams, progress: bool = True, env: DistEnv | None = None
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
        model.eval()
        res = evaluate_domains(model, datas, ("valid",), protocol)
        per_domain = {d: r["valid"][protocol.select_metric] for d, r in res.items()}
        log.info("valid %s: %s", protocol.select_metric, ", ".join(f"{d} {v:.4f}" for d, v in per_domain.items()))
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
        cfg: PretrainParams, protocol: ProtocolParams, progress: bool = True, env: DistEnv | None = None
        ) -> tuple[TextLightGCN, dict, dict]:
    """Train, then evaluate every source domain on valid, test and cold; returns (model, metrics, info)."""
    model, info = train(prepared, graph, text, cfg, protocol, progress, env)
    datas = {d: domain_data(prepared, d) for d in graph.source_domains}
    model.eval()
    results = evaluate_domains(model, datas, ("valid", "test", "cold"), protocol)
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
