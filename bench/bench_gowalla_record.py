"""The Gowalla record: BSPM (training-free) on the LightGCN Gowalla split, Recall@20 / NDCG@20 over time.

Full ranking over all 40,981 items with each user's training items masked, trained on the whole fixed training
split (bench_baselines_gowalla.load_gowalla), the protocol of the NGCF/LightGCN/BSPM papers. The curve records
quality at each point the method reaches: GF-CF (blurring only, the sharpening time T_s = 0) first, then BSPM with
the paper's Gowalla setting (ideal low-pass rank 448, beta 0.2, one RK4 sharpening step to T_s = 2.5). It then
times two epochs of our LightGCN next to RecBole's LightGCN epoch (quoted: 208 s per epoch, measured earlier on this
machine with RecBole 1.2 on the same split; not rerun here).

    python bench/bench_gowalla_record.py [--minutes 60] [--threads 2] [--mirror ../shared/data]

Published on this split (Recall@20 / NDCG@20): LightGCN .1830/.1554, SimpleX .1872/.1557, UltraGCN .1862/.1580,
GF-CF .1849/.1518, BSPM .1920/.1597. Writes bench/results/gowalla_record.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_baselines_gowalla import load_gowalla  # noqa: E402

from m6rec.evaluation.metrics import ranking_metrics  # noqa: E402
from m6rec.log import setup_logging  # noqa: E402
from m6rec.models.bspm import BSPM  # noqa: E402
from m6rec.runtime import set_threads  # noqa: E402

log = logging.getLogger("bench_gowalla_record")
TARGET = {"recall@20": 0.1920, "ndcg@20": 0.1597}  # BSPM, Choi et al. SIGIR 2023, Table 3
RECBOLE_LIGHTGCN_S_PER_EPOCH = 208.0  # quoted: RecBole 1.2 LightGCN on this split, measured earlier on this machine


def evaluate(model: BSPM, data, t_sharpen: float) -> dict[str, float]:
    model.t_sharpen = t_sharpen
    with torch.no_grad():
        return ranking_metrics(lambda u: model.full_scores(None, u), data.train, data.test, ks=(20,),
                               batch_users=2048, progress=True)


def lightgcn_seconds_per_epoch(data, epochs: int) -> list[float]:
    from m6rec.graph.build import graph_from_edges
    from m6rec.graph.sampling import DomainNegativeSampler
    from m6rec.models.lightgcn import TextLightGCN
    from m6rec.training.loop import train_epoch

    torch.manual_seed(42)
    coo = data.train.tocoo()
    graph = graph_from_edges(["gowalla"], [data.n_users], [data.n_items], coo.row, coo.col,
                             np.zeros(coo.nnz, dtype=np.int64))
    model = TextLightGCN(data.n_users, data.n_items, embedding_dim=64, num_layers=3, propagation="symmetric",
                         reg=1e-4).set_graph(graph.adj)
    sampler = DomainNegativeSampler(graph.edge_user.numpy(), graph.edge_item.numpy(), graph.edge_domain.numpy(),
                                    [np.arange(data.n_items)], seed=42)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    times = []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        train_epoch(model, sampler.epoch(32768), optimizer, desc=f"lightgcn epoch {epoch}", progress=False)
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall budget; later curve points are skipped")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=448, help="ideal low-pass rank (paper: 448 on Gowalla)")
    parser.add_argument("--beta", type=float, default=0.2, help="weight of the ideal low-pass term")
    parser.add_argument("--t-sharpen", type=float, default=2.5, help="sharpening time T_s")
    parser.add_argument("--steps", type=int, default=1, help="RK4 sharpening steps K_s")
    parser.add_argument("--lightgcn-epochs", type=int, default=2, help="LightGCN epochs timed (0 = skip)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gowalla_record.json")
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    budget = args.minutes * 60.0
    start = time.perf_counter()
    data = load_gowalla(args.mirror)
    model = BSPM(k=args.k, beta=args.beta, t_sharpen=args.t_sharpen, sharpen_steps=args.steps, solver="rk4")
    model.fit(data.train)
    fit_s = time.perf_counter() - start
    log.info("BSPM fitted (normalised graph, rank-%d SVD) in %.1f s", args.k, fit_s)
    curve = [{"point": "fit (SVD)", "seconds": round(fit_s, 1)}]
    for label, t_s in (("blurring only (T_s=0, GF-CF form)", 0.0), (f"BSPM (RK4, T_s={args.t_sharpen})", args.t_sharpen)):
        if time.perf_counter() - start > budget:
            log.warning("budget of %.0f min spent: skipping %s", args.minutes, label)
            break
        m = evaluate(model, data, t_s)
        row = {"point": label, "t_sharpen": t_s, "seconds": round(time.perf_counter() - start, 1),
               "recall@20": round(m["recall@20"], 4), "ndcg@20": round(m["ndcg@20"], 4)}
        curve.append(row)
        log.info("%s: Recall@20 %.4f NDCG@20 %.4f at %.0f s", label, m["recall@20"], m["ndcg@20"], row["seconds"])
    best = max((r for r in curve if "ndcg@20" in r), key=lambda r: r["ndcg@20"])
    total_s = time.perf_counter() - start
    lgcn = lightgcn_seconds_per_epoch(data, args.lightgcn_epochs) if args.lightgcn_epochs else []
    result = {
        "method": "bspm", "params": {"k": args.k, "beta": args.beta, "t_sharpen": args.t_sharpen,
                                     "sharpen_steps": args.steps, "solver": "rk4"},
        "recall@20": best["recall@20"], "ndcg@20": best["ndcg@20"], "wall_s": round(total_s, 1),
        "target": TARGET, "reached": best["recall@20"] >= TARGET["recall@20"] and best["ndcg@20"] >= TARGET["ndcg@20"],
        "curve": curve, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "lightgcn_s_per_epoch": [round(t, 1) for t in lgcn],
        "recbole_lightgcn_s_per_epoch": RECBOLE_LIGHTGCN_S_PER_EPOCH,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg()[0],
                    "python": platform.python_version(),
                    "torch": torch.__version__},
        "command": "python bench/bench_gowalla_record.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'point':38s} {'seconds':>8s} {'Recall@20':>10s} {'NDCG@20':>8s}")
    for r in curve:
        print(f"{r['point']:38s} {r['seconds']:8.1f} {r.get('recall@20', float('nan')):10.4f} "
              f"{r.get('ndcg@20', float('nan')):8.4f}")
    print(f"{'target (BSPM, published)':38s} {'':8s} {TARGET['recall@20']:10.4f} {TARGET['ndcg@20']:8.4f}")
    if lgcn:
        print(f"\nLightGCN seconds per epoch: ours {np.mean(lgcn):.1f} s (measured, {len(lgcn)} epochs, "
              f"{args.threads} threads) vs RecBole {RECBOLE_LIGHTGCN_S_PER_EPOCH:.0f} s (quoted)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
