"""Ranking and rating metrics shared by every model stage, the serving code and the benchmarks.

Ranking is *full*: every candidate item is scored, items seen in training (and optional ``exclude`` items) are set
to ``-inf``, and the top-k is taken with :func:`torch.topk`. No negatives are sampled. Work is vectorised over
batches of users; masks are built from the CSR ``indptr``/``indices`` arrays, with no Python loop per user.

Definitions, for one evaluated user ``u`` with relevant set ``R_u`` (test items that are candidates and not masked)
and top-k list ``L_u`` (unmasked items only), then averaged over evaluated users:

* ``recall@k    = |L_u ∩ R_u| / |R_u|``: the LightGCN / RecBole / PyG definition. It is **not** divided by
  ``min(|R_u|, k)``, so a user with more than ``k`` relevant items cannot reach 1.
* ``precision@k = |L_u ∩ R_u| / k``.
* ``hit@k       = 1 if L_u ∩ R_u is not empty else 0``.
* ``ndcg@k      = DCG / IDCG`` with binary relevance, ``DCG = sum_{r=1..k} rel_r / log2(r + 1)`` and IDCG the DCG of
  ``min(|R_u|, k)`` relevant items at the top.
* ``coverage@k``: fraction of candidate items found in at least one evaluated user's top-k list.
* ``mrr``: ``1 / rank`` of the best-ranked relevant item in the *full* ranking (not cut at k), where
  ``rank = 1 + #(unmasked candidates scoring strictly higher than it)``. Ties are therefore resolved in favour of the
  relevant item, whereas top-k lists break ties arbitrarily (``torch.topk`` order).

These coincide with ``torch_geometric.metrics.LinkPred{Recall,Precision,HitRatio,NDCG,Coverage}`` at ``k`` and with
``LinkPredMRR`` at ``k = n_items`` (checked in ``tests/unit/test_metrics.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], torch.Tensor]

_NEG_INF = float("-inf")


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary ``n_users x n_items`` CSR matrix (float32 ones) from (user, item) index pairs.

    Duplicate pairs collapse to a single 1; column indices are sorted within each row.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.ndim != 1 or items.ndim != 1:
        raise ValueError(f"users and items must be 1-D, got shapes {users.shape} and {items.shape}")
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in length: {users.shape[0]} vs {items.shape[0]}")
    if n_users < 0 or n_items < 0:
        raise ValueError(f"n_users and n_items must be >= 0, got {n_users} and {n_items}")
    for name, arr, n in (("users", users, n_users), ("items", items, n_items)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name} out of range [0, {n}): min {arr.min()}, max {arr.max()}")
    data = np.ones(users.shape[0], dtype=np.float32)
    mat = sp.coo_matrix(
        (data, (users.astype(np.int64), items.astype(np.int64))), shape=(n_users, n_items)
    ).tocsr()
    mat.sum_duplicates()
    mat.data[:] = 1.0
    mat.sort_indices()
    return mat


def rating_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Root mean squared error and mean absolute error of rating predictions: ``{"rmse": ..., "mae": ...}``."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in shape: {pred.shape} vs {true.shape}")
    if pred.size == 0:
        raise ValueError("pred and true are empty: no ratings to score")
    for name, arr in (("pred", pred), ("true", true)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf value(s)")
    err = pred - true
    return {"rmse": float(np.sqrt(np.mean(err * err))), "mae": float(np.mean(np.abs(err)))}


def _rows_cols(mat: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) index arrays of a CSR matrix's stored entries, in CSR order."""
    rows = np.repeat(np.arange(mat.shape[0], dtype=np.int64), np.diff(mat.indptr))
    return rows, mat.indices.astype(np.int64, copy=False)


def topk_items(
    scores: torch.Tensor,
    k: int,
    mask: sp.csr_matrix | None = None,
    rows: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ``(values, indices)`` per row of ``scores`` after setting masked items to ``-inf``.

    ``mask`` is an ``n_users x n_items`` CSR matrix of items to hide (e.g. the training items); row ``i`` of
    ``scores`` is masked with ``mask[rows[i]]`` (``rows`` defaults to ``0..len(scores)-1``). ``k`` is clipped to
    ``n_items``. ``scores`` is not modified. If a row has fewer than ``k`` unmasked items, its tail holds masked
    items with value ``-inf``; callers that must not show them filter on ``torch.isfinite(values)``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [n_rows, n_items], got shape {tuple(scores.shape)}")
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    n_rows, n_items = scores.shape
    k = min(int(k), n_items)
    if mask is not None:
        if mask.shape[1] != n_items:
            raise ValueError(f"mask has {mask.shape[1]} columns but scores has {n_items} items")
        if rows is None:
            if mask.shape[0] < n_rows:
                raise ValueError(f"mask has {mask.shape[0]} rows, fewer than the {n_rows} score rows")
            rows = np.arange(n_rows, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != (n_rows,):
            raise ValueError(f"rows must have shape ({n_rows},) to match scores, got {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= mask.shape[0]):
            raise ValueError(f"rows out of range [0, {mask.shape[0]}): min {rows.min()}, max {rows.max()}")
        sub = sp.csr_matrix(mask)[rows]
        r, c = _rows_cols(sub)
        scores = scores.clone() if scores.is_floating_point() else scores.float()
        scores[torch.from_numpy(r).to(scores.device), torch.from_numpy(c).to(scores.device)] = _NEG_INF
    elif rows is not None:
        raise ValueError("rows was given without a mask")
    return torch.topk(scores, k, dim=1)


def _binary(mat: sp.spmatrix, name: str, shape: tuple[int, int]) -> sp.csr_matrix:
    """``mat`` as a canonical CSR matrix of int8 ones (explicit zeros dropped), after a shape check."""
    if not sp.issparse(mat):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(mat).__name__}")
    if mat.shape != shape:
        raise ValueError(f"{name} has shape {mat.shape}, expected {shape} (n_users x n_items, as train)")
    out = sp.csr_matrix(mat, copy=True)
    out.sum_duplicates()
    out.data = (out.data != 0).astype(np.int8)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one cut-off k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
    return sorted({int(k) for k in ks})


def _select_users(users: np.ndarray | None, n_users: int) -> np.ndarray:
    if users is None:
        return np.arange(n_users, dtype=np.int64)
    users = np.asarray(users)
    if users.dtype == np.bool_:
        if users.shape != (n_users,):
            raise ValueError(f"users as a bool mask must have shape ({n_users},), got {users.shape}")
        return np.flatnonzero(users).astype(np.int64)
    if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
        raise ValueError(
            f"users must be a 1-D integer array (or bool mask), got dtype {users.dtype} shape {users.shape}"
        )
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"users out of range [0, {n_users}): min {users.min()}, max {users.max()}")
    return np.unique(users.astype(np.int64))


def _call_score_fn(score_fn: ScoreFn, batch: np.ndarray, n_items: int) -> torch.Tensor:
    """Scores of one user batch as a float tensor that this module may modify in place."""
    scores = score_fn(batch)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores.copy())  # never write into the caller's array
    elif not isinstance(scores, torch.Tensor):
        raise ValueError(f"score_fn must return a torch.Tensor, got {type(scores).__name__}")
    elif scores._base is not None or scores.requires_grad:
        # A view (e.g. expand()) or a parameter: copy rather than write into the caller's storage.
        scores = scores.detach().clone(memory_format=torch.contiguous_format)
    if tuple(scores.shape) != (len(batch), n_items):
        raise ValueError(
            f"score_fn returned shape {tuple(scores.shape)} for {len(batch)} users; "
            f"expected ({len(batch)}, {n_items}) = (len(users), n_items)"
        )
    if not scores.is_floating_point():
        scores = scores.float()
    return scores


def _count_above(
    scores: torch.Tensor, threshold: torch.Tensor, need: torch.Tensor, chunk_rows: int = 128
) -> torch.Tensor:
    """Per row, the number of scores strictly greater than ``threshold[row]`` (int64); 0 where ``need`` is False.

    Works on row slices (no copies, a small boolean temporary) and skips slices where no row is needed.
    """
    out = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    for start in range(0, scores.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        if bool(need[rows].any()):
            out[rows] = (scores[rows] > threshold[rows].unsqueeze(1)).sum(dim=1, dtype=torch.int32)
    return out


def ranking_metrics(
    score_fn: ScoreFn,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    ks: Sequence[int] = (10, 20),
    batch_users: int = 2048,
    exclude: sp.csr_matrix | None = None,
    candidates: np.ndarray | None = None,
    users: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Full-ranking top-k metrics (see the module docstring for the exact definitions).

    Args:
        score_fn: maps int64 user indices ``[B]`` to float scores ``[B, n_items]`` over *all* items. It is called
            only for evaluated users, in increasing user order, ``batch_users`` at a time. Its output is masked in
            place, so return a fresh tensor (views and numpy arrays are copied first). Any device works.
        train: ``n_users x n_items``; stored nonzero entries are masked out (-inf).
        test: ``n_users x n_items``; nonzero entries are the relevant items (binary relevance).
        ks: cut-offs; each must be > 0 (a k above the number of candidates is clipped for the top-k search, but
            precision@k still divides by k).
        batch_users: users scored per call to ``score_fn``.
        exclude: extra items to mask, e.g. validation items when scoring the test split.
        candidates: bool mask ``[n_items]``; only these items are ranked, the rest are neither recommended nor
            relevant (e.g. a cold-start slice).
        users: subset of users (int indices, duplicates ignored, or a bool mask ``[n_users]``).
        progress: show a tqdm bar over user batches.

    Returns:
        ``recall@k``, ``ndcg@k``, ``hit@k``, ``precision@k``, ``coverage@k`` for each k, ``mrr`` and ``n_users``
        (float). Users with no relevant item (after the candidate restriction, ignoring masked test items) are
        skipped; means are over the rest. If no user is left every metric is 0.0 (as in PyG) and a warning is
        logged.

    Raises:
        ValueError: on mismatched shapes (train/test/exclude, candidates, score_fn output), a k <= 0, users out of
            range, or NaN scores among the unmasked candidates.
    """
    if not sp.issparse(train) or train.ndim != 2:
        raise ValueError(f"train must be a 2-D scipy.sparse matrix, got {type(train).__name__}")
    n_users, n_items = train.shape
    if not sp.issparse(test) or test.shape != train.shape:
        got = test.shape if sp.issparse(test) else type(test).__name__
        raise ValueError(f"test has shape {got} but train has shape {train.shape}; they must match")
    ks = _check_ks(ks)
    if isinstance(batch_users, bool) or not isinstance(batch_users, (int, np.integer)) or batch_users <= 0:
        raise ValueError(f"batch_users must be a positive integer, got {batch_users!r}")

    masked = _binary(train, "train", (n_users, n_items))
    if exclude is not None:
        masked = _binary(masked + _binary(exclude, "exclude", (n_users, n_items)), "train + exclude", masked.shape)
    relevant = _binary(test, "test", (n_users, n_items))

    # Restrict columns to the candidates once, so that batches work in candidate space.
    cand_idx: np.ndarray | None = None
    if candidates is not None:
        candidates = np.asarray(candidates)
        if candidates.dtype != np.bool_:
            raise ValueError(f"candidates must be a bool mask, got dtype {candidates.dtype}")
        if candidates.shape != (n_items,):
            raise ValueError(f"candidates has shape {candidates.shape}, expected ({n_items},) = (n_items,)")
        cand_idx = np.flatnonzero(candidates).astype(np.int64)
        masked = masked[:, cand_idx]
        relevant = relevant[:, cand_idx]
        masked.sort_indices()
        relevant.sort_indices()
    n_cand = n_items if cand_idx is None else len(cand_idx)

    # Test items that are also masked can never be ranked, so they are not relevant.
    relevant = _binary(relevant - relevant.multiply(masked), "relevant", relevant.shape)
    n_rel_all = np.diff(relevant.indptr)
    selected = _select_users(users, n_users)
    evaluated = selected[n_rel_all[selected] > 0]
    n_eval = len(evaluated)
    logger.debug(
        "ranking_metrics: %d of %d selected users have relevant items; %d candidate items", n_eval, len(selected),
        n_cand,
    )

    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit", "precision", "coverage")]
    if n_eval == 0 or n_cand == 0:
        logger.warning("ranking_metrics: no user with a relevant candidate item; every metric is 0.0")
        return {**dict.fromkeys(names, 0.0), "mrr": 0.0, "n_users": 0.0}

    k_max = min(max(ks), n_cand)
    sums = {name: 0.0 for name in names if not name.startswith("coverage")}
    mrr_sum = 0.0
    covered: dict[int, torch.Tensor] = {}
    cand_t: torch.Tensor | None = None

    batches = range(0, n_eval, batch_users)
    for start in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        batch = evaluated[start : start + batch_users]
        b = len(batch)
        with torch.no_grad():
            scores = _call_score_fn(score_fn, batch, n_items)
        device = scores.device
        if cand_idx is not None:
            if cand_t is None or cand_t.device != device:
                cand_t = torch.from_numpy(cand_idx).to(device)
            scores = scores.index_select(1, cand_t)

        m_rows, m_cols = _rows_cols(masked[batch])
        scores[torch.from_numpy(m_rows).to(device), torch.from_numpy(m_cols).to(device)] = _NEG_INF

        r_rows, r_cols = _rows_cols(relevant[batch])
        r_rows_t = torch.from_numpy(r_rows).to(device)
        r_cols_t = torch.from_numpy(r_cols).to(device)
        n_rel = torch.from_numpy(n_rel_all[batch]).to(device=device, dtype=torch.float64)

        values, top = torch.topk(scores, k_max, dim=1)
        # topk ranks NaN above everything, so this sees any NaN among the unmasked candidates.
        if torch.isnan(values[:, 0]).any():
            raise ValueError(f"score_fn returned NaN scores for users {batch[:5].tolist()}... (batch of {b})")
        valid = values > _NEG_INF  # masked fill-ins when a user has fewer than k rankable items

        # MRR over the full ranking: rank = 1 + #items scoring strictly above the best relevant item. If that
        # item scores at least the k-th value, every item above it is in the top-k: count there; else count
        # over the whole row.
        best = torch.full((b,), _NEG_INF, dtype=scores.dtype, device=device)
        best.scatter_reduce_(0, r_rows_t, scores[r_rows_t, r_cols_t], reduce="amax")
        above = (values > best.unsqueeze(1)).sum(dim=1)
        deep = best < values[:, -1]
        if bool(deep.any()):
            above = torch.where(deep, _count_above(scores, best, deep), above)
        mrr_sum += float((1.0 / (above.to(torch.float64) + 1.0)).sum())

        # Hit lookup: CSR order makes the (row * n_cand + col) keys of relevant items sorted.
        rel_keys = r_rows_t * n_cand + r_cols_t
        top_keys = torch.arange(b, device=device).unsqueeze(1) * n_cand + top
        pos = torch.searchsorted(rel_keys, top_keys).clamp_(max=rel_keys.numel() - 1)
        hits = (rel_keys[pos] == top_keys) & valid
        hits_f = hits.to(torch.float64)
        discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, device=device, dtype=torch.float64))
        dcg_cum = (hits_f * discount).cumsum(dim=1)
        hit_cum = hits_f.cumsum(dim=1)
        idcg_table = discount.cumsum(dim=0)

        for k in ks:
            kk = min(k, k_max)
            n_hit = hit_cum[:, kk - 1]
            idcg = idcg_table[(n_rel.clamp(max=kk) - 1).long()]
            sums[f"recall@{k}"] += float((n_hit / n_rel).sum())
            sums[f"ndcg@{k}"] += float((dcg_cum[:, kk - 1] / idcg).sum())
            sums[f"hit@{k}"] += float((n_hit > 0).sum())
            sums[f"precision@{k}"] += float(n_hit.sum()) / k
            seen = covered.setdefault(k, torch.zeros(n_cand, dtype=torch.bool, device=device))
            seen[top[:, :kk][valid[:, :kk]].to(seen.device)] = True

    out: dict[str, float] = {}
    for k in ks:
        for metric in ("recall", "ndcg", "hit", "precision"):
            out[f"{metric}@{k}"] = sums[f"{metric}@{k}"] / n_eval
        out[f"coverage@{k}"] = float(covered[k].sum()) / n_cand
    out["mrr"] = mrr_sum / n_eval
    out["n_users"] = float(n_eval)
    return out


__all__ = ["csr_from_pairs", "rating_metrics", "ranking_metrics", "topk_items", "ScoreFn"]
