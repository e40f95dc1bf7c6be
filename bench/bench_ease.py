"""EASE's closed form on one real domain: the shipped fit (`m6rec.models.ease.EASE.fit`) against the reference
formula it replaced, step by step, on one thread (as the pipeline runs it).

Reference: ``spotrf`` on a C-ordered copy of G + λI (f2py copies it to Fortran order), ``spotri``, then
``P = tril(P) + tril(P, -1)ᵀ`` and ``B = -P / diag(P)``. Shipped: ``spotrf`` on the transposed view (the same
symmetric matrix, already in Fortran order: no copy), ``spotri``, then, on the C-ordered transpose of the result,
its upper triangle mirrored into the lower one a block of rows at a time and the columns scaled in place (no
full-size temporary, no transposing copy to C order). The script checks that both give bitwise the same B and
prints the time of each part.

    PYTHONPATH=src python bench/bench_ease.py --data data/validated --domain lastfm-hetrec2011 --repeats 2

Writes ``bench/results/ease_fit.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import threadpoolctl
from scipy.linalg import lapack

from m6rec.data.dataset import domain_data, load_prepared
from m6rec.models.ease import EASE

log = logging.getLogger("bench_ease")


def reference_fit(gram: np.ndarray, lam: float) -> tuple[np.ndarray, dict[str, float]]:
    """The formula before bench_ease: returns B and seconds per step."""
    t = {}
    start = time.perf_counter()
    g = gram.copy()
    g[np.diag_indices_from(g)] += lam
    c, info = lapack.spotrf(g, lower=1, overwrite_a=1, clean=1)
    assert info == 0
    t["cholesky"] = time.perf_counter() - start
    start = time.perf_counter()
    p, info = lapack.spotri(c, lower=1, overwrite_c=1)
    assert info == 0
    t["inverse"] = time.perf_counter() - start
    start = time.perf_counter()
    p = np.tril(p) + np.tril(p, -1).T
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    b = np.ascontiguousarray(b, dtype=np.float32)
    t["symmetrise"] = time.perf_counter() - start
    return b, t


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/validated")
    ap.add_argument("--domain", default="lastfm-hetrec2011")
    ap.add_argument("--lam", type=float, default=250.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/results/ease_fit.json")
    args = ap.parse_args()

    data = domain_data(load_prepared(args.data), args.domain)
    model = EASE(lam=args.lam)
    with threadpoolctl.threadpool_limits(1):
        gram = model.gram(data.train)
        n = int(len(model.active))
        log.info("%s: %d active items", args.domain, n)
        ref_times, new_times = [], []
        for _ in range(args.repeats):
            b_ref, t = reference_fit(gram, args.lam)
            ref_times.append(sum(t.values()))
            log.info("reference: %s", {k: round(v, 2) for k, v in t.items()})
            start = time.perf_counter()
            model.fit(data.train, args.lam)
            new_times.append(time.perf_counter() - start)
            log.info("shipped: %.2f s (reference %.2f s)", new_times[-1], ref_times[-1])
            identical = bool(np.array_equal(b_ref.view(np.int32), model.B.view(np.int32)))
            if not identical:
                raise SystemExit("the shipped EASE fit differs from the reference formula")
            b_ref = None
    result = {"domain": args.domain, "n_active": n, "lam": args.lam, "threads": 1, "repeats": args.repeats,
              "reference_s": [round(x, 3) for x in ref_times], "shipped_s": [round(x, 3) for x in new_times],
              "speedup": round(float(np.median(ref_times) / np.median(new_times)), 3), "bitwise_identical": True}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("median %.2f s -> %.2f s (x%.2f), B bitwise identical; wrote %s", np.median(ref_times),
             np.median(new_times), result["speedup"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
