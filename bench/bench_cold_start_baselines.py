"""Cold-start slice for the baselines that cannot use text: seeded random scores and MostPopular.

Cold-start items have no training interactions, so MostPopular ties them all at 0 (its order among them is
arbitrary); random is the honest floor. Compare with the `cold` entries of metrics/pretrain.json (LightGCN + text).

    python bench/bench_cold_start_baselines.py [--data data/validated]
"""

from __future__ import annotations

import argparse

import torch

from m6rec.data.dataset import domain_data, load_prepared
from m6rec.evaluation.protocol import evaluate_split
from m6rec.models.popularity import MostPopular


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/validated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepared = load_prepared(args.data)
    for domain in prepared.domains:
        data = domain_data(prepared, domain)
        if not data.cold_items.any():
            continue
        gen = torch.Generator().manual_seed(args.seed)
        rand = evaluate_split(lambda u: torch.rand(len(u), data.n_items, generator=gen), data, "cold")
        pop = evaluate_split(MostPopular().fit(data.train).score, data, "cold")
        print(f"{domain:18s} cold items {int(data.cold_items.sum()):5d}  random Recall@20 {rand['recall@20']:.4f} "
              f"NDCG@20 {rand['ndcg@20']:.4f}  mostpop Recall@20 {pop['recall@20']:.4f} NDCG@20 {pop['ndcg@20']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
