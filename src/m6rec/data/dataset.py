"""Load prepared (canonical) tables and build the per-domain matrices that models and evaluation use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.data import schema


@dataclass(frozen=True)
class Prepared:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict

    @property
    def domains(self) -> list[str]:
        return list(self.meta["domains"])


@dataclass(frozen=True)
class DomainData:
    """One domain's data in matrix form. Matrices are binary csr of shape (n_users, n_items)."""

    name: str
    feedback: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    cold: sp.csr_matrix  # interactions with held-out cold-start items
    cold_items: np.ndarray  # bool mask [n_items]
    frames: dict[str, pd.DataFrame]  # split -> rows (user, item, value, ts), sorted by user then ts
    items: pd.DataFrame  # item, raw_item, title, text, cold

    @property
    def explicit(self) -> bool:
        return self.feedback == "explicit"


def load_prepared(folder: str | Path) -> Prepared:
    folder = Path(folder)
    missing = [n for n in (schema.INTERACTIONS, schema.ITEMS, schema.USERS, schema.META) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a prepared data folder: missing {missing} "
                                f"(run `dvc repro prepare` or `python -m m6rec.stages.prepare`)")
    meta = json.loads((folder / schema.META).read_text(encoding="utf-8"))
    return Prepared(
        interactions=pd.read_parquet(folder / schema.INTERACTIONS),
        items=pd.read_parquet(folder / schema.ITEMS),
        users=pd.read_parquet(folder / schema.USERS),
        meta=meta,
    )


def _csr(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    data = np.ones(len(frame), dtype=np.float32)
    mat = sp.csr_matrix((data, (frame["user"].to_numpy(), frame["item"].to_numpy())), shape=(n_users, n_items))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    mat.sort_indices()
    return mat


def domain_data(prepared: Prepared, domain: str) -> DomainData:
    if domain not in prepared.meta["per_domain"]:
        raise KeyError(f"domain '{domain}' is not in the prepared data; available: {prepared.domains}")
    meta = prepared.meta["per_domain"][domain]
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    inter = prepared.interactions[prepared.interactions["domain"] == domain]
    frames = {
        s: inter.loc[inter["split"] == s, ["user", "item", "value", "ts"]].reset_index(drop=True)
        for s in schema.SPLITS
    }
    items = prepared.items[prepared.items["domain"] == domain].sort_values("item").reset_index(drop=True)
    return DomainData(
        name=domain, feedback=meta["feedback"], n_users=n_users, n_items=n_items,
        train=_csr(frames["train"], n_users, n_items), valid=_csr(frames["valid"], n_users, n_items),
        test=_csr(frames["test"], n_users, n_items), cold=_csr(frames["cold"], n_users, n_items),
        cold_items=items["cold"].to_numpy(dtype=bool), frames=frames,
        items=items[["item", "raw_item", "title", "text", "cold"]],
    )


def global_offsets(meta: dict, kind: str) -> dict[str, int]:
    """Offsets that turn domain-local user or item indices into global ones (domain order of meta)."""
    key = {"user": "n_users", "item": "n_items"}[kind]
    offsets, total = {}, 0
    for d in meta["domains"]:
        offsets[d] = total
        total += int(meta["per_domain"][d][key])
    return offsets
