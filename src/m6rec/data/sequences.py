"""Per-user interaction sequences in time order, and the fixed-length history windows models read.

A history is the ``max_len`` most recent items before a point, right-aligned (the most recent item in the last
column) and padded with -1 on the left. Used by the history models' training examples and evaluation
(``m6rec.stages.multitask``), by serving bundles (each user's history) and by the register stage when it
re-evaluates a history model on new data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from m6rec.data.dataset import DomainData


@dataclass(frozen=True)
class Sequences:
    """Every user's interactions in time order, CSR-style: user ``u`` owns ``items[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float64 [nnz]: rating / count / 1


def user_sequences(data: DomainData, splits: tuple[str, ...] = ("train",)) -> Sequences:
    """The `splits` interactions of every user, sorted by time (split order breaks ties)."""
    frames = [data.frames[s].assign(_split=k) for k, s in enumerate(splits)]
    frame = pd.concat(frames, ignore_index=True).sort_values(["user", "ts", "_split"], kind="stable")
    counts = np.bincount(frame["user"].to_numpy(dtype=np.int64), minlength=data.n_users)
    return Sequences(indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     items=frame["item"].to_numpy(dtype=np.int64),
                     values=frame["value"].to_numpy(dtype=np.float64))


def history_window(seq: Sequences, ends: np.ndarray, starts: np.ndarray, max_len: int) -> np.ndarray:
    """Items ``[ends - max_len, ends)`` of each row, clipped at ``starts``, right-aligned, -1 padded ``[n, L]``."""
    idx = ends[:, None] + np.arange(-max_len, 0, dtype=np.int64)[None, :]
    valid = idx >= starts[:, None]
    out = np.where(valid, seq.items[np.clip(idx, 0, max(len(seq.items) - 1, 0))] if len(seq.items) else -1, -1)
    return out.astype(np.int64)


def window_mean(seq: Sequences, ends: np.ndarray, starts: np.ndarray, max_len: int) -> np.ndarray:
    """Mean value of the same windows as :func:`history_window` (NaN for an empty window)."""
    cum = np.concatenate([[0.0], np.cumsum(seq.values)])
    first = np.maximum(starts, ends - max_len)
    n = ends - first
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cum[ends] - cum[first]) / np.maximum(n, 1), np.nan)


def last_items(seq: Sequences, max_len: int, users: np.ndarray | None = None) -> np.ndarray:
    """The last `max_len` items of each user (default: every user) ``[n, L]``, -1 padded on the left."""
    users = np.arange(len(seq.indptr) - 1) if users is None else np.asarray(users, dtype=np.int64)
    return history_window(seq, seq.indptr[users + 1], seq.indptr[users], max_len)


def split_histories(data: DomainData, max_len: int) -> dict[str, np.ndarray]:
    """Model input per evaluation split: valid sees the training items, test and cold train + valid."""
    train = last_items(user_sequences(data, ("train",)), max_len)
    known = last_items(user_sequences(data, ("train", "valid")), max_len)
    return {"valid": train, "test": known, "cold": known}
