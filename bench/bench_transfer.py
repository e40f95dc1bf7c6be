"""Leave-one-domain-out open-domain transfer of the universal sequence recommender (issue #11).

For each held-out domain X (``--domains``): pretrain :class:`m6rec.models.seqrec.UniversalSeqRec` on the other text
domains only (``--epochs``, early stopping on their validation split), then on X's test split (full ranking,
training + validation items masked, :mod:`m6rec.evaluation.protocol`):

- ``seqrec_zero_shot``: no training on X at all (X's items are their sentence vectors; X's popularity input is its
  observed training histories);
- ``textsim`` (and ``textsim_decay<d>``): cosine of the mean history sentence vector, untrained
  (:mod:`m6rec.models.textsim`); ``mostpop``: X's training counts; ``random``;
- few-shot (``--fractions`` of X's training users, seeded and nested; X's other users still appear as inputs at
  test time): ``efficient`` (adaptor + popularity gate), ``full`` (every weight, plus X's item id embeddings) and
  ``scratch`` (the same architecture trained on the fraction alone).

Writes ``--out`` (default metrics/transfer.json; held-out domains of earlier runs are kept) and prints a table.

    M6REC_THREADS=1 PYTHONPATH=src nice -n 10 python bench/bench_transfer.py --domains amazon-office ml-100k \
        --epochs 4 --fractions 0.01 0.1 1.0
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.data.splits import ordered_domains
from m6rec.evaluation.protocol import evaluate
from m6rec.models.popularity import MostPopular
from m6rec.models.seqrec import UniversalSeqRec
from m6rec.models.textsim import TextSimilarity, domain_text_vectors
from m6rec.text.embeddings import load_embeddings
from m6rec.training.seqrec import SeqRecTrainParams, calibrate_mix, finetune, fraction_users, pretrain

log = logging.getLogger("bench_transfer")

TEXT_DOMAINS = ("ml-latest-small", "ml-100k", "amazon-office", "amazon-scientific", "lastfm-hetrec2011")
# Zero-shot ablations: which score terms are on (see UniversalSeqRec.set_mix).
ABLATIONS = {"no_pop": dict(pop=0.0), "no_seq": dict(seq=0.0), "no_text": dict(text=0.0),
             "text_only": dict(seq=0.0, pop=0.0)}
KEEP = ("ndcg@10", "ndcg@20", "recall@10", "recall@20")


class RandomScores:
    """Uniform random scores (seeded per batch of users)."""

    name, history_len = "random", 0

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items, self.seed = n_items, seed

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + int(users[0]) if len(users) else self.seed)
        return torch.rand(len(users), self.n_items, generator=g)


def test_metrics(model, data: DomainData, protocol: ProtocolParams) -> dict[str, float]:
    res = evaluate(model, data, "test", protocol)
    return {k: round(float(res[k]), 5) for k in KEEP}


def run_heldout(target: str, datas: dict[str, DomainData], text: dict[str, np.ndarray], args,
                protocol: ProtocolParams) -> dict:
    sources = [d for d in datas if d != target]
    data = datas[target]
    out: dict = {"sources": sources, "models": {}, "fewshot": {}, "seconds": {}}
    t0 = time.perf_counter()
    out["models"]["random"] = test_metrics(RandomScores(data.n_items, args.seed), data, protocol)
    pop = MostPopular().fit(data.train)
    pop.domain = target
    out["models"]["mostpop"] = test_metrics(pop, data, protocol)
    for decay in args.decays:
        name = "textsim" if decay == 1.0 else f"textsim_decay{decay:g}"
        out["models"][name] = test_metrics(TextSimilarity({target: text[target]}, args.textsim_len, decay), data,
                                           protocol)
    out["seconds"]["baselines"] = round(time.perf_counter() - t0, 1)
    log.info("%s baselines: %s", target, {k: v["ndcg@10"] for k, v in out["models"].items()})

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = UniversalSeqRec(dim=args.dim, layers=args.layers, heads=args.heads, max_len=args.max_len)
    pcfg = SeqRecTrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             valid_users=args.valid_users, seed=args.seed)
    hist = pretrain(model, {d: datas[d] for d in sources}, text, protocol, pcfg)
    out["seconds"]["pretrain"] = round(time.perf_counter() - t0, 1)
    out["pretrain"] = {"epochs": hist.epochs, "best_epoch": hist.best_epoch, "losses": [round(x, 4) for x in
                       hist.losses], "valid": [(e, round(m, 5)) for e, m in hist.metrics],
                       "beta": round(float(model.beta), 3), "scale": round(float(model.scale), 3)}
    model.attach_domain(target, text[target], np.asarray(data.train.sum(axis=0)).ravel())
    out["models"]["seqrec_zero_shot"] = test_metrics(model, data, protocol)
    for name, mix in ABLATIONS.items():
        model.set_mix(**mix)
        out["models"][f"seqrec_zero_shot_{name}"] = test_metrics(model, data, protocol)
    out["calibrated_mix"] = calibrate_mix(model, data, seed=args.seed, ordered=args.ordered[target])
    out["models"]["seqrec_zero_shot_calibrated"] = test_metrics(model, data, protocol)
    model.set_mix()
    model.text_tau = None
    log.info("%s zero-shot ndcg@10 %.4f (pretrain %.0fs)", target, out["models"]["seqrec_zero_shot"]["ndcg@10"],
             out["seconds"]["pretrain"])

    fcfg = SeqRecTrainParams(epochs=args.ft_epochs, batch_size=args.batch_size, lr=args.lr,
                             valid_users=args.valid_users, seed=args.seed)
    for frac in args.fractions:
        users = fraction_users(data.n_users, frac, args.seed)
        row = {"n_users": int(len(users)), "zero_shot": out["models"]["seqrec_zero_shot"]}
        for mode in args.modes:
            t0 = time.perf_counter()
            tuned, h = finetune(model, data, text[target], mode, users, protocol, fcfg, model_args=model.config())
            row[mode] = test_metrics(tuned, data, protocol)
            row[f"{mode}_epochs"] = 0 if h is None else h.best_epoch
            out["seconds"][f"{mode}@{frac:g}"] = round(time.perf_counter() - t0, 1)
            log.info("%s %s@%g ndcg@10 %.4f", target, mode, frac, row[mode]["ndcg@10"])
        out["fewshot"][f"{frac:g}"] = row
    out["targets"] = check_targets(out)
    return out


def check_targets(res: dict) -> dict:
    """The issue's acceptance figures on NDCG@10."""
    m = {k: v["ndcg@10"] for k, v in res["models"].items()}
    best_base = max(m["mostpop"], m.get("textsim", 0.0))
    out = {"zero_shot_vs_best_baseline": round(m["seqrec_zero_shot"] / max(best_base, 1e-9), 3),
           "zero_shot_target_1.2x": m["seqrec_zero_shot"] >= 1.2 * best_base,
           "calibrated_vs_best_baseline": round(m["seqrec_zero_shot_calibrated"] / max(best_base, 1e-9), 3),
           "calibrated_target_1.2x": m["seqrec_zero_shot_calibrated"] >= 1.2 * best_base}
    few = res["fewshot"]
    if "0.1" in few and "scratch" in few["0.1"]:
        best_ft = max(few["0.1"][k]["ndcg@10"] for k in ("efficient", "full", "zero_shot") if k in few["0.1"])
        out["fewshot10_vs_scratch"] = round(best_ft / max(few["0.1"]["scratch"]["ndcg@10"], 1e-9), 3)
        out["fewshot10_target_1.2x"] = best_ft >= 1.2 * few["0.1"]["scratch"]["ndcg@10"]
    if few and all("efficient" in r for r in few.values()):
        out["efficient_above_mostpop_every_fraction"] = all(r["efficient"]["ndcg@10"] > m["mostpop"]
                                                            for r in few.values())
    return out


def print_table(results: dict) -> None:
    cols = ("random", "mostpop", "textsim", "seqrec_zero_shot", "seqrec_zero_shot_calibrated")
    print(f"\n{'held-out':20s} " + " ".join(f"{c.replace('seqrec_', ''):>16s}" for c in cols) + "   (test NDCG@10)")
    for d, r in results.items():
        print(f"{d:20s} " + " ".join(f"{r['models'].get(c, {}).get('ndcg@10', float('nan')):16.4f}" for c in cols))
    for d, r in results.items():
        if not r.get("fewshot"):
            continue
        modes = [k for k in next(iter(r["fewshot"].values())) if isinstance(r["fewshot"][next(iter(r["fewshot"]))][k],
                                                                              dict)]
        print(f"\n{d} few-shot NDCG@10 by fraction of training users")
        print(f"{'fraction':>10s} {'users':>6s} " + " ".join(f"{m:>10s}" for m in modes))
        for frac, row in r["fewshot"].items():
            print(f"{frac:>10s} {row['n_users']:6d} " + " ".join(f"{row[m]['ndcg@10']:10.4f}" for m in modes))
        print(f"targets: {r['targets']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=list(TEXT_DOMAINS), help="held-out domains")
    parser.add_argument("--sources", nargs="+", default=list(TEXT_DOMAINS), help="the domain pool")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs (upper bound)")
    parser.add_argument("--ft-epochs", type=int, default=4, help="fine-tuning epochs (upper bound)")
    parser.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--modes", nargs="*", default=["efficient", "full", "scratch"])
    parser.add_argument("--decays", nargs="*", type=float, default=[1.0, 0.98])
    parser.add_argument("--textsim-len", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--valid-users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="data/validated")
    parser.add_argument("--embeddings", default="data/embeddings")
    parser.add_argument("--out", default="metrics/transfer.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    unknown = sorted(set(args.domains) - set(args.sources))
    if unknown:
        raise SystemExit(f"held-out domains {unknown} are not in --sources {args.sources}")
    prepared = load_prepared(args.data)
    emb, _, meta = load_embeddings(args.embeddings)
    text = domain_text_vectors(emb, meta, args.sources)
    datas = {d: domain_data(prepared, d) for d in args.sources}
    args.ordered = ordered_domains(prepared.meta, args.sources)
    protocol = ProtocolParams()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    results.pop("config", None)
    for target in args.domains:
        t0 = time.perf_counter()
        results[target] = run_heldout(target, datas, text, args, protocol)
        results[target]["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        results[target]["config"] = {k: v for k, v in vars(args).items() if k not in ("domains", "out", "ordered")}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results)


if __name__ == "__main__":
    main()
