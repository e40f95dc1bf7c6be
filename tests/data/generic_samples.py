"""Test helper: user-style datasets written from the real mirror, in the two generic formats (no m6rec code used).

- a CSV pair from ml-latest-small (80 sampled users): ``ratings.csv`` with renamed columns and dates instead of unix
  seconds, ``movies.csv`` with id, name and genres;
- RecBole atomic files from ml-100k (60 sampled users): ``ml.inter`` and ``ml.item`` with typed headers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.data_fixtures import mirror_dir


def csv_sample(folder: Path, n_users: int = 80, seed: int = 0) -> tuple[Path, Path, pd.DataFrame]:
    """(ratings.csv, movies.csv, the source rows kept) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    src = mirror_dir() / "ml-latest-small"
    ratings = pd.read_csv(src / "ratings.csv")
    users = np.random.default_rng(seed).choice(np.sort(ratings["userId"].unique()), n_users, replace=False)
    kept = ratings[ratings["userId"].isin(users)].reset_index(drop=True)
    out = pd.DataFrame({
        "customer": "c" + kept["userId"].astype(str), "product": kept["movieId"].astype(str),
        "stars": kept["rating"],
        "when": pd.to_datetime(kept["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S"),
    })
    movies = pd.read_csv(src / "movies.csv", dtype=str)
    movies = movies.rename(columns={"movieId": "product", "title": "name"})
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    out.to_csv(ratings_path, index=False)
    movies.to_csv(movies_path, index=False)
    return ratings_path, movies_path, kept


def inter_sample(folder: Path, stem: str = "ml", n_users: int = 60, seed: int = 0) -> tuple[Path, Path, pd.DataFrame]:
    """(<stem>.inter, <stem>.item, the u.data rows kept) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    src = mirror_dir() / "ml-100k"
    data = pd.read_csv(src / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    users = np.random.default_rng(seed).choice(np.sort(data["u"].unique()), n_users, replace=False)
    kept = data[data["u"].isin(users)].reset_index(drop=True)
    inter_path, item_path = folder / f"{stem}.inter", folder / f"{stem}.item"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{float(r)}\t{float(t)}" for u, i, r, t in kept.itertuples(index=False)]
    inter_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = pd.read_csv(src / "u.item", sep="|", header=None, encoding="latin-1", dtype=str, usecols=[0, 1, 2])
    lines = ["item_id:token\ttitle:token_seq\trelease:token"]
    lines += [f"{i}\t{t}\t{d if isinstance(d, str) else ''}" for i, t, d in items.itertuples(index=False)]
    item_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return inter_path, item_path, kept
