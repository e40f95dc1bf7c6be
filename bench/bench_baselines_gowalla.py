"""Baselines on the Gowalla LightGCN benchmark split: Recall@20, NDCG@20, fit seconds and peak memory per model.

Trains on the whole fixed training split (train + the validation part carved from it) and tests on the fixed test
split, full ranking over all 40,981 items — the protocol of the NGCF/LightGCN papers. Each model runs in its own
process so that its peak memory is its own.

    python bench/bench_baselines_gowalla.py [--models mostpop itemknn puresvd gfcf bprmf] [--mirror ../shared/data]

Published on this split (Recall@20 / NDCG@20): MF-BPR .1627/.1378 (tuned), EASE .1765/.1467, GF-CF .1849/.1518,
LightGCN .1830/.1554.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_gowalla(mirror: Path):
    """DomainData for Gowalla with validation folded back into training (the benchmark trains on all of train)."""
    from m6rec.data.dataset import Prepared, domain_data
    from m6rec.data.parsers import parse
    from m6rec.data.prepare import SplitParams, canonicalise
    from m6rec.data.sources import load_registry

    spec = load_registry(REPO / "config" / "datasets.yaml")["lightgcn-gowalla"]
    inter, items = parse(spec.parser, mirror / spec.name)
    t = canonicalise(spec, inter, items, SplitParams(valid_frac=0.0))
    prepared = Prepared(t.interactions, t.items, t.users, {"domains": [spec.name], "per_domain": {spec.name: t.meta}})
    data = domain_data(prepared, spec.name)
    assert data.valid.nnz == 0 and data.train.nnz == 810_128 and data.test.nnz == 217_242
    return data


def run_one(model_name: str, mirror: Path, epochs: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from m6rec.evaluation.metrics import ranking_metrics
    from m6rec.models.gfcf import GFCF
    from m6rec.models.itemknn import ItemKNN
    from m6rec.models.mf import BPRMF, PureSVD
    from m6rec.models.popularity import MostPopular
    from m6rec.training.loop import fit
    from m6rec.training.sampling import BPRSampler

    data = load_gowalla(mirror)
    t0 = time.perf_counter()
    if model_name == "mostpop":
        model = MostPopular().fit(data.train)
    elif model_name == "itemknn":
        model = ItemKNN(neighbours=200, shrink=10.0).fit(data.train)
    elif model_name == "puresvd":
        model = PureSVD(dim=256).fit(data.train)
    elif model_name == "gfcf":
        model = GFCF(k=256, alpha=0.3).fit(data.train)
    elif model_name == "bprmf":
        torch.manual_seed(0)
        model = BPRMF(data.n_users, data.n_items, dim=64, reg=1e-4)
        sampler = BPRSampler(data.train, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=0.005)
        fit(model, lambda e: sampler.epoch(8192), opt, epochs, validate=None, progress=True, name="bprmf")
        model.eval()
    else:
        raise SystemExit(f"unknown model {model_name}")
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        m = ranking_metrics(model.score, data.train, data.test, ks=(20,), batch_users=1024, progress=True)
    return {"model": model_name, "recall@20": m["recall@20"], "ndcg@20": m["ndcg@20"], "fit_s": fit_s,
            "eval_s": time.perf_counter() - t1,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mostpop", "itemknn", "puresvd", "gfcf", "bprmf"])
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--bpr-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.mirror, args.bpr_epochs, args.threads)))
        return 0
    rows = []
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--mirror", str(args.mirror),
                              "--bpr-epochs", str(args.bpr_epochs), "--threads", str(args.threads)],
                             check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['model']:8s} Recall@20 {r['recall@20']:.4f}  NDCG@20 {r['ndcg@20']:.4f}  fit {r['fit_s']:7.1f}s  "
              f"eval {r['eval_s']:5.1f}s  peak RSS {r['peak_rss_mb']:7.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
