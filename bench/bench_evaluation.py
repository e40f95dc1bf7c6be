"""Time `ranking_metrics` on the full Gowalla LightGCN split with random 64-d embeddings.

    nice -n 10 .venv/bin/python bench/bench_evaluation.py [--data-dir DIR] [--dim 64] [--batch-users 2048]

Prints load time, evaluation time, peak RSS and the metrics (random embeddings, so quality is near chance).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.evaluation.metrics import csr_from_pairs, ranking_metrics
from m6rec.log import setup_logging

logger = logging.getLogger("bench_evaluation")

DEFAULT_DATA_DIR = Path("/work/shared/data/lightgcn-gowalla")


def read_user_item_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) pairs from a LightGCN-format file: one line per user, `user item item ...`."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with gzip.open(path, "rt") as fh:
        for line_no, line in enumerate(fh, 1):
            ids = np.array(line.split(), dtype=np.int64)
            if ids.size == 0:
                continue
            if ids.size == 1:
                logger.debug("%s:%d: user %d has no items", path, line_no, ids[0])
                continue
            users.append(np.full(ids.size - 1, ids[0], dtype=np.int64))
            items.append(ids[1:])
    if not users:
        raise ValueError(f"{path}: no user-item pairs found")
    return np.concatenate(users), np.concatenate(items)


def load_gowalla(data_dir: Path) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binary train and test matrices of the LightGCN Gowalla split."""
    tr_u, tr_i = read_user_item_lines(data_dir / "train.txt.gz")
    te_u, te_i = read_user_item_lines(data_dir / "test.txt.gz")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    return csr_from_pairs(tr_u, tr_i, n_users, n_items), csr_from_pairs(te_u, te_i, n_users, n_items)


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with train/test.txt.gz")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--batch-users", type=int, default=2048, help="users per score_fn call")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20], help="cut-offs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random embeddings")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args()
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train, test = load_gowalla(args.data_dir)
    t_load = time.perf_counter() - t0
    n_users, n_items = train.shape
    logger.info("loaded %d users x %d items, train nnz %d, test nnz %d in %.2f s", n_users, n_items, train.nnz,
                test.nnz, t_load)

    gen = torch.Generator().manual_seed(args.seed)
    user_emb = torch.randn(n_users, args.dim, generator=gen)
    item_emb = torch.randn(n_items, args.dim, generator=gen)

    def score_fn(users: np.ndarray) -> torch.Tensor:
        return user_emb[torch.from_numpy(users)] @ item_emb.T

    rss_before = peak_rss_mib()
    t0 = time.perf_counter()
    out = ranking_metrics(score_fn, train, test, ks=args.ks, batch_users=args.batch_users)
    t_eval = time.perf_counter() - t0

    logger.info("metrics: %s", {k: round(v, 5) for k, v in out.items()})
    print(f"users x items        {n_users} x {n_items}")
    print(f"train / test nnz     {train.nnz} / {test.nnz}")
    print(f"torch threads        {torch.get_num_threads()}")
    print(f"batch_users          {args.batch_users}")
    print(f"load seconds         {t_load:.2f}")
    print(f"evaluate seconds     {t_eval:.2f}")
    print(f"peak RSS MiB         {peak_rss_mib():.0f} (before evaluate: {rss_before:.0f})")
    for key, value in out.items():
        print(f"{key:<20} {value:.5f}")


if __name__ == "__main__":
    main()
