"""Train/validation/test splits and the cold-start item hold-out.

Protocol (per domain):
1. Cold-start items: a seeded random `cold_item_frac` of the items that have interactions is held out; every
   interaction with them gets split "cold", so no model ever trains on them (domains with item text only).
2. Remaining interactions, per user:
   - "chronological": sorted by (ts, source order); the last `test_frac` go to test and the `valid_frac` before
     them to validation (each at least one interaction once the user has `min_user_interactions`; users with fewer
     keep everything in train). Nothing a user did later is ever trained on to predict something earlier.
   - "random": the same fractions, drawn at random per user (seeded), for data with no time or order (Last.fm).
   - "leave_one_out": chronological as above, but exactly the last interaction goes to test and the one before it
     to validation (users with at least `min_user_interactions`; the fractions are not used). This is the protocol
     of the sequential-recommendation literature (SASRec, UniSRec), so figures compare with their tables.
   - "fixed": the source's own train/test split is kept; validation is a seeded random `valid_frac` of each
     user's training interactions (Gowalla benchmark).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


SPLIT_METHODS = ("chronological", "leave_one_out", "random", "fixed")
ORDERED_SPLITS = ("chronological", "leave_one_out")  # methods whose test is later than training (checked for leaks)


class SplitError(ValueError):
    """The split parameters or the resulting split are invalid."""


def choose_cold_items(items_with_interactions: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Seeded random subset of item indices to hold out entirely (sorted)."""
    if not 0.0 <= frac < 1.0:
        raise SplitError(f"cold_item_frac must be in [0, 1), got {frac}")
    uniq = np.unique(items_with_interactions)
    n_cold = int(round(frac * len(uniq)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(uniq, size=n_cold, replace=False)) if n_cold else np.empty(0, dtype=np.int64)


def _tail_counts(n: np.ndarray, test_frac: float, valid_frac: float, min_inter: int) -> tuple[np.ndarray, np.ndarray]:
    eligible = n >= min_inter
    n_test = np.where(eligible, np.maximum(1, np.round(n * test_frac)), 0).astype(np.int64)
    n_valid = np.where(eligible & (valid_frac > 0), np.maximum(1, np.round(n * valid_frac)), 0).astype(np.int64)
    return n_test, n_valid


def per_user_split(
    users: np.ndarray,
    ts: np.ndarray,
    method: str,
    test_frac: float,
    valid_frac: float,
    min_user_interactions: int,
    seed: int,
) -> np.ndarray:
    """Split label ("train" / "valid" / "test") for each interaction, by user."""
    if not (0 < test_frac < 1 and 0 <= valid_frac < 1 and test_frac + valid_frac < 1):
        raise SplitError(f"bad fractions: test_frac={test_frac}, valid_frac={valid_frac}")
    if min_user_interactions < 3:
        raise SplitError("min_user_interactions must be >= 3 so every split user keeps a training interaction")
    n_rows = len(users)
    if method in ("chronological", "leave_one_out"):
        key = ts
    elif method == "random":
        key = np.random.default_rng(seed).random(n_rows)
    else:
        raise SplitError(f"unknown split method '{method}'")
    # Sort by user, then key, then source position (stable): the last rows of each user are the latest.
    order = np.lexsort((np.arange(n_rows), key, users))
    su = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(su)) + 1]
    counts = np.diff(np.r_[starts, n_rows])
    rank = np.arange(n_rows) - np.repeat(starts, counts)
    from_end = np.repeat(counts, counts) - 1 - rank
    if method == "leave_one_out":
        eligible = counts >= min_user_interactions
        n_test = eligible.astype(np.int64)
        n_valid = (eligible & (valid_frac > 0)).astype(np.int64)
    else:
        n_test, n_valid = _tail_counts(counts, test_frac, valid_frac, min_user_interactions)
    nt, nv = np.repeat(n_test, counts), np.repeat(n_valid, counts)
    labels_sorted = np.where(from_end < nt, "test", np.where(from_end < nt + nv, "valid", "train"))
    labels = np.empty(n_rows, dtype=object)
    labels[order] = labels_sorted
    return labels


def fixed_split_with_valid(users: np.ndarray, fixed: np.ndarray, valid_frac: float, seed: int) -> np.ndarray:
    """Keep the source's train/test; draw validation from each user's training rows (seeded)."""
    labels = fixed.astype(object).copy()
    bad = set(np.unique(fixed)) - {"train", "test"}
    if bad:
        raise SplitError(f"fixed split labels must be train/test, found {sorted(bad)}")
    if valid_frac <= 0:
        return labels
    train_idx = np.flatnonzero(fixed == "train")
    sub = per_user_split(users[train_idx], np.zeros(len(train_idx), dtype=np.int64), "random",
                         test_frac=valid_frac, valid_frac=0.0, min_user_interactions=3, seed=seed)
    labels[train_idx[sub == "test"]] = "valid"
    return labels


def leakage_report(frame: pd.DataFrame) -> dict[str, int]:
    """Counts of leakage problems in a canonical interactions frame of one domain (all should be 0).

    - pairs_across_splits: (user, item) pairs that appear in train and in valid/test/cold
    - cold_items_in_train: held-out cold items that have a train/valid/test interaction
    - eval_users_without_train: users with valid/test interactions but no training interaction
    - time_order_violations: users (ts_kind unix/order, chronological split) whose latest train interaction is later
      than their earliest test interaction
    """
    train = frame[frame["split"] == "train"]
    other = frame[frame["split"] != "train"]
    train_pairs = pd.MultiIndex.from_arrays([train["user"], train["item"]])
    other_pairs = pd.MultiIndex.from_arrays([other["user"], other["item"]])
    cold_items = set(frame.loc[frame["split"] == "cold", "item"])
    warm = frame[frame["split"] != "cold"]
    eval_users = set(frame.loc[frame["split"].isin(["valid", "test"]), "user"])
    report = {
        "pairs_across_splits": int(other_pairs.isin(train_pairs).sum()),
        "cold_items_in_train": int(warm["item"].isin(cold_items).sum()),
        "eval_users_without_train": len(eval_users - set(train["user"])),
    }
    last_train = train.groupby("user")["ts"].max()
    first_test = frame[frame["split"] == "test"].groupby("user")["ts"].min()
    both = last_train.index.intersection(first_test.index)
    report["time_order_violations"] = int((last_train[both] > first_test[both]).sum())
    return report


def ordered_domains(meta: dict, domains) -> dict[str, bool]:
    """Whether each domain's per-user interaction order means something (a chronological or leave-one-out split,
    :data:`ORDERED_SPLITS`) or not (a random split of an unordered log), from the prepared data's ``meta``."""
    return {d: meta["per_domain"][d].get("split_method", "chronological") in ORDERED_SPLITS for d in domains}
