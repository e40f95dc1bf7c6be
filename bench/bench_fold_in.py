"""Ridge fold-in of user vectors (`m6rec.models.mf.ridge_fold_in`, served by BPR-MF and LightGCN at test time and
export): the shipped sparse-product form against the form it replaced, on one real domain.

Reference: every interaction's outer product ``q_i q_iᵀ`` materialised (interactions x d² float64) and added into
the batch's Gram matrices with ``index_add_``. Shipped: the outer products of the items a batch touches, summed per
user by one sparse product whose rows list ``base`` first and then the user's items in their stored order (the same
additions in the same order). The script checks that both give bitwise the same user vectors, times each form's
calls back to back, and runs each alone in a fresh process for its peak RSS.

    PYTHONPATH=src python bench/bench_fold_in.py --data data/validated --domain lastfm-hetrec2011 --dim 64

Writes ``bench/results/fold_in.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
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


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: its own address space's high-water mark; getrusage's
    ru_maxrss keeps the parent's figure across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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
    ap.add_argument("--only", choices=["reference", "shipped"], default=None,
                    help="time one form alone and print its figures (the bench runs each so for peak RSS)")
    ap.add_argument("--out", default="bench/results/fold_in.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = domain_data(load_prepared(args.data), args.domain)
    rows = (data.train + data.valid).tocsr()
    items = torch.from_numpy(np.random.default_rng(0).standard_normal((data.n_items, args.dim)).astype(np.float32))
    log.info("%s: %d users, %d items, %d interactions (train + valid), d=%d", args.domain, rows.shape[0],
             data.n_items, rows.nnz, args.dim)
    forms = {"reference": reference_fold_in, "shipped": ridge_fold_in}
    if args.only:
        # one form per process, so that its peak RSS is its own
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            forms[args.only](rows, items, args.reg, args.w0)
            seconds.append(time.perf_counter() - start)
        log.info("%s: %s s, peak RSS %.0f MiB", args.only, [round(x, 2) for x in seconds], peak_rss_mib())
        print(json.dumps({"form": args.only, "seconds": [round(x, 3) for x in seconds],
                          "peak_rss_mib": peak_rss_mib()}))
        return 0
    # each form's calls back to back (a stage calls fold-in once per domain and split), then the bytes compared
    times: dict[str, list[float]] = {}
    outs = {}
    for name, fn in forms.items():
        times[name] = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outs[name] = fn(rows, items, args.reg, args.w0)
            times[name].append(time.perf_counter() - start)
        log.info("%s: %s s", name, [round(x, 2) for x in times[name]])
    if not torch.equal(outs["reference"], outs["shipped"]):
        raise SystemExit(f"the shipped fold-in differs from the reference (max |diff| "
                         f"{(outs['reference'] - outs['shipped']).abs().max().item():.3g})")
    ref_s, new_s = times["reference"], times["shipped"]
    result = {"domain": args.domain, "users": int(rows.shape[0]), "items": int(data.n_items),
              "interactions": int(rows.nnz), "dim": args.dim, "threads": args.threads, "repeats": args.repeats,
              "reference_s": [round(x, 3) for x in ref_s], "shipped_s": [round(x, 3) for x in new_s],
              "speedup": round(float(np.median(ref_s) / np.median(new_s)), 2), "bitwise_identical": True}
    for name in forms:  # peak memory of each form alone, in a fresh process
        res = subprocess.run([sys.executable, __file__, "--data", args.data, "--domain", args.domain, "--dim",
                              str(args.dim), "--reg", str(args.reg), "--w0", str(args.w0), "--repeats", "2",
                              "--threads", str(args.threads), "--only", name],
                             capture_output=True, text=True, check=True)
        result[f"{name}_alone"] = json.loads(res.stdout.strip().splitlines()[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("median %.2f s -> %.2f s (x%.2f), user vectors bitwise identical; peak RSS alone %.0f -> %.0f MiB; "
             "wrote %s", np.median(ref_s), np.median(new_s), result["speedup"],
             result["reference_alone"]["peak_rss_mib"], result["shipped_alone"]["peak_rss_mib"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
