"""Ridge fold-in of user vectors (`m6rec.models.mf.ridge_fold_in`, served by BPR-MF and LightGCN at test time and
export): the shipped sparse-product form against the form it replaced, on one real domain.

Reference: every interaction's outer product ``q_i q_iᵀ`` materialised (interactions x d² float64) and added into
the batch's Gram matrices with ``index_add_``. Shipped: the outer products of the items a batch touches, summed per
user by one sparse product whose rows list ``base`` first and then the user's items in their stored order (the same
additions in the same order). The script checks that both give bitwise the same user vectors and times each.

    PYTHONPATH=src python bench/bench_fold_in.py --data data/validated --domain lastfm-hetrec2011 --dim 64

Writes ``bench/results/fold_in.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.data.dataset import domain_data, load_prepared
from m6rec.models.mf import binary_rows, ridge_fold_in

log = logging.getLogger("bench_fold_in")


def reference_fold_in(rows: sp.spmatrix, items: torch.Tensor, reg: float, w0: float,
                      batch: int = 1024) -> torch.Tensor:
    """The form before bench_fold_in: one d x d outer product per interaction, index_add_ into the batch."""
    rows = binary_rows(rows)
    q = items.detach().to(torch.float64)
    d = q.shape[1]
    base = w0 * (q.T @ q) + reg * torch.eye(d, dtype=torch.float64)
    out = []
    for s in range(0, rows.shape[0], batch):
        coo = rows[s:s + batch].tocoo()
        n = coo.shape[0]
        r = torch.from_numpy(coo.row.astype(np.int64))
        x = q[torch.from_numpy(coo.col.astype(np.int64))]
        gram = base.expand(n, d, d).clone().index_add_(0, r, x.unsqueeze(2) * x.unsqueeze(1))
        rhs = torch.zeros(n, d, dtype=torch.float64).index_add_(0, r, x)
        out.append(torch.linalg.solve(gram, rhs))
    return torch.cat(out).to(items.dtype)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/validated")
    ap.add_argument("--domain", default="lastfm-hetrec2011")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reg", type=float, default=10.0)
    ap.add_argument("--w0", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the pipeline's deterministic mode: 1)")
    ap.add_argument("--out", default="bench/results/fold_in.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = domain_data(load_prepared(args.data), args.domain)
    rows = (data.train + data.valid).tocsr()
    items = torch.from_numpy(np.random.default_rng(0).standard_normal((data.n_items, args.dim)).astype(np.float32))
    log.info("%s: %d users, %d items, %d interactions (train + valid), d=%d", args.domain, rows.shape[0],
             data.n_items, rows.nnz, args.dim)
    ref_s, new_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref = reference_fold_in(rows, items, args.reg, args.w0)
        ref_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        new = ridge_fold_in(rows, items, args.reg, args.w0)
        new_s.append(time.perf_counter() - start)
        log.info("reference %.2f s, shipped %.2f s", ref_s[-1], new_s[-1])
        if not torch.equal(ref, new):
            raise SystemExit(f"the shipped fold-in differs from the reference (max |diff| "
                             f"{(ref - new).abs().max().item():.3g})")
    result = {"domain": args.domain, "users": int(rows.shape[0]), "items": int(data.n_items),
              "interactions": int(rows.nnz), "dim": args.dim, "threads": args.threads, "repeats": args.repeats,
              "reference_s": [round(x, 3) for x in ref_s], "shipped_s": [round(x, 3) for x in new_s],
              "speedup": round(float(np.median(ref_s) / np.median(new_s)), 2), "bitwise_identical": True,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("median %.2f s -> %.2f s (x%.2f), user vectors bitwise identical; wrote %s", np.median(ref_s),
             np.median(new_s), result["speedup"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
