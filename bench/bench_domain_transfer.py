"""Leave-one-domain-out transfer of the text-aware LightGCN pretraining.

For each held-out domain X: pretrain on the other source domains only (X contributes no edge and no gradient), then
score X's users without any training on X. A user's vector is the mean of the text-derived vectors of their
training items, an item's vector its text-derived vector (the learned projection of its sentence embedding, which
is what an item never seen in training gets). Reported on X's test split (training + validation items masked) and on
X's cold-start items, against:

- ``transfer_graph``: the same held-out model, but X's training interactions are added to the graph at inference
  time and the (parameter-free) LightGCN propagation is run over it, X's users starting from zero and X's items from
  their text vectors: an inductive use of LightGCN that needs no training on X either;
- ``in_domain``: the LightGCN pretrained with X included (the pipeline's model), scored as usual;
- ``in_domain_text``: that same model scored the transfer way (history mean of text vectors), to separate the
  scoring rule from the missing training;
- ``raw_text``: the same history-mean rule on the raw sentence vectors (no training at all);
- ``popularity``: training-interaction counts of X.

    nice -n 10 .venv/bin/python bench/bench_domain_transfer.py --holdout ml-100k amazon-office --epochs 30
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.config import GraphParams, ProtocolParams, load_params, section
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.evaluation.protocol import evaluate_domains, evaluate_split
from m6rec.graph.build import BipartiteGraph, build_graph
from m6rec.log import setup_logging
from m6rec.model_params import PretrainParams
from m6rec.runtime import set_threads
from m6rec.text.embeddings import load_embeddings
from m6rec.training.pretrain import text_inputs, train

log = logging.getLogger("bench_domain_transfer")
SPLITS = ("test", "cold")
SHOW = ("ndcg@20", "recall@20")


def history_mean(train: sp.csr_matrix, item_vecs: torch.Tensor) -> torch.Tensor:
    """Row-normalised ``train @ item_vecs``: each user's mean training-item vector (zeros for empty histories)."""
    counts = np.asarray(train.sum(axis=1)).ravel()
    norm = sp.diags(1.0 / np.maximum(counts, 1)) @ train
    return torch.from_numpy(np.asarray(norm @ item_vecs.numpy(), dtype=np.float32))


def vector_scorer(user_vecs: torch.Tensor, item_vecs: torch.Tensor, user_offset: int, item_offset: int,
                  n_items: int):
    """Scores of a domain's local users against that domain's items, from global vector tables."""
    items = item_vecs[item_offset: item_offset + n_items]

    def score(users: np.ndarray) -> torch.Tensor:
        return user_vecs[torch.from_numpy(user_offset + np.asarray(users, dtype=np.int64))] @ items.t()

    return score


def evaluate_vectors(data: DomainData, user_vecs: torch.Tensor, item_vecs: torch.Tensor, ev: ProtocolParams) -> dict:
    score = vector_scorer(user_vecs, item_vecs, 0, 0, data.n_items)
    return {s: evaluate_split(score, data, s, ev.ks, ev.batch_users) for s in SPLITS}


def popularity(data: DomainData, ev: ProtocolParams) -> dict:
    pop = torch.from_numpy(np.asarray(data.train.sum(axis=0), dtype=np.float32).ravel())
    return {s: evaluate_split(lambda u: pop.expand(len(u), -1).clone(), data, s, ev.ks, ev.batch_users)
            for s in SPLITS}


def transfer_scores(model, data: DomainData, text: torch.Tensor, has_text: np.ndarray, ev: ProtocolParams) -> dict:
    """Text-only scoring of one domain: items = projected text, users = mean over their training items."""
    with torch.no_grad():
        items = model.text_item_vectors(text.float())
    items[~torch.from_numpy(has_text)] = 0.0
    return evaluate_vectors(data, history_mean(data.train, items), items, ev)


def graph_transfer_scores(model, full_graph: BipartiteGraph, text: tuple[torch.Tensor, torch.Tensor], x: str,
                          data: DomainData, ev: ProtocolParams) -> dict:
    """Propagate the held-out model over a graph that contains X's training edges (X users start at zero)."""
    n_u, n_i = model.n_users, model.n_items  # the held-out model's id space is a prefix of the full graph's
    if full_graph.n_users < n_u or full_graph.n_items < n_i:
        raise ValueError("the full graph must cover the held-out model's id space")
    u_off, i_off = full_graph.user_offsets[x], full_graph.item_offsets[x]
    with torch.no_grad():
        users = torch.zeros(full_graph.n_users, model.embedding_dim)
        users[:n_u] = model.user_emb.weight
        users[u_off: u_off + data.n_users] = 0.0
        items = torch.zeros(full_graph.n_items, model.embedding_dim)
        items[:n_i] = model.item_emb.weight
        items[i_off: i_off + data.n_items] = 0.0
        text_feats, text_items = text
        items = items.index_add(0, text_items, model.text_vectors(text_feats))
        out = model.propagate(torch.cat([users, items]), adj=full_graph.adj)
    user_vecs, item_vecs = out[: full_graph.n_users], out[full_graph.n_users:]
    score = vector_scorer(user_vecs, item_vecs, u_off, i_off, data.n_items)
    return {s: evaluate_split(score, data, s, ev.ks, ev.batch_users) for s in SPLITS}


def brief(res: dict) -> dict:
    return {s: {k: round(res[s][k], 4) for k in SHOW} for s in SPLITS if res.get(s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--in-dir", default="", help="default: pretrain.in_dir (falls back to data/prepared)")
    parser.add_argument("--holdout", nargs="*", default=None, help="domains to hold out (default: every source)")
    parser.add_argument("--epochs", type=int, default=0, help="override pretrain.epochs")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    setup_logging()
    set_threads(1)
    params = load_params(args.params)
    cfg = section(params, "pretrain", PretrainParams)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    ev = section(params, "protocol", ProtocolParams)
    sources = list(section(params, "graph", GraphParams).domains)
    in_dir = Path(args.in_dir or cfg.in_dir)
    if not (in_dir / "meta.json").is_file():
        in_dir = Path("data/prepared")
    prepared = load_prepared(in_dir)
    emb, mask, _ = load_embeddings(cfg.embeddings_dir)
    holdout = args.holdout if args.holdout is not None else sources
    item_off = {d: o for d, o in zip(prepared.domains, np.cumsum([0] + [prepared.meta["per_domain"][d]["n_items"]
                                                                        for d in prepared.domains])[:-1])}

    def domain_text(d: str, n: int) -> tuple[torch.Tensor, np.ndarray]:
        return torch.from_numpy(emb[item_off[d]: item_off[d] + n].astype(np.float32)), mask[item_off[d]:
                                                                                           item_off[d] + n]

    t0 = time.perf_counter()
    full_graph = build_graph(prepared, sources)
    full_text = text_inputs(emb, mask, full_graph.n_items)
    full_model, full_info = train(prepared, full_graph, full_text, cfg, ev, progress=False)
    log.info("in-domain model: %d epochs, %.0fs", full_info["epochs"], full_info["fit_s"])
    results = {}
    for x in holdout:
        data = domain_data(prepared, x)
        text, has_text = domain_text(x, data.n_items)
        rest = [d for d in sources if d != x]
        graph = build_graph(prepared, rest)
        model, info = train(prepared, graph, text_inputs(emb, mask, graph.n_items), cfg, ev, progress=False)
        in_domain = evaluate_domains(full_model.eval(), {x: data}, SPLITS, ev)[x]
        results[x] = {
            "transfer": brief(transfer_scores(model, data, text, has_text, ev)),
            "transfer_graph": brief(graph_transfer_scores(model, full_graph, full_text, x, data, ev)),
            "in_domain": brief(in_domain),
            "in_domain_text": brief(transfer_scores(full_model, data, text, has_text, ev)),
            "raw_text": brief(evaluate_vectors(data, history_mean(data.train, text), text, ev)),
            "popularity": brief(popularity(data, ev)),
            "transfer_fit_s": round(info["fit_s"], 1),
        }
        print(x, json.dumps(results[x]), flush=True)
    out = {"epochs": cfg.epochs, "sources": sources, "seconds": round(time.perf_counter() - t0, 1),
           "results": results}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
