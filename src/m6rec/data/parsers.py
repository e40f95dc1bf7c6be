"""One small parser per source format: raw files -> (interactions, items) frames in source ids.

Every parser returns
  interactions: raw_user (str), raw_item (str), value (float), ts (int64), ts_kind ("unix" | "order"),
                and for fixed-split sources a column `fixed_split` ("train" | "test");
  items:        raw_item (str), title (str), text (str), fields (dict of the raw text fields).
Ids stay as strings here; `m6rec.data.prepare` maps them to contiguous indices.
"""

from __future__ import annotations

import gzip
import html
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

Parsed = tuple[pd.DataFrame, pd.DataFrame]


class ParseError(ValueError):
    """A raw file does not have the format its parser expects."""


def _join_text(*parts: str) -> str:
    """Join non-empty text fields into one string for the encoder ("A. B. C")."""
    cleaned = [p.strip().rstrip(".") for p in parts if isinstance(p, str) and p.strip()]
    return ". ".join(cleaned)


def _items_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["raw_item", "title", "text", "fields"])
    frame["raw_item"] = frame["raw_item"].astype(str)
    return frame


def _check_not_wide_text(path: Path, encoding: str) -> None:
    """Latin-1 decodes any byte, so a UTF-16 file would parse into garbage silently; its NUL bytes give it away."""
    if not path.is_file() or path.suffix in (".gz", ".bz2", ".xz", ".zip", ".zst"):
        return  # a missing file keeps pandas' own error; compressed files are decoded by pandas
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    if b"\x00" in head:
        raise ParseError(f"{path}: contains NUL bytes, so it is not {encoding} text (UTF-16/32 or binary?)")


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    _check_not_wide_text(path, kwargs.get("encoding", "utf-8"))
    try:
        frame = pd.read_csv(path, **kwargs)
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise ParseError(f"{path}: cannot be parsed ({exc})") from exc
    if frame.empty:
        raise ParseError(f"{path}: has no data rows (empty file?)")
    return frame


def movielens_latest(folder: Path) -> Parsed:
    """ml-latest-small: ratings.csv, movies.csv, tags.csv (UTF-8, CRLF)."""
    ratings = _read_csv(folder / "ratings.csv", encoding="utf-8",
                        dtype={"userId": str, "movieId": str, "rating": float, "timestamp": np.int64})
    movies = _read_csv(folder / "movies.csv", encoding="utf-8", dtype=str, keep_default_na=False)
    tags = _read_csv(folder / "tags.csv", encoding="utf-8", dtype={"movieId": str, "tag": str})
    # The most frequent tags per movie, in frequency order, become part of its text.
    tags["tag"] = tags["tag"].astype(str).str.strip().str.lower()
    tag_counts = tags.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    tag_counts = tag_counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    top_tags = tag_counts.groupby("movieId")["tag"].apply(lambda s: list(s.head(10))).to_dict()
    rows = []
    for movie_id, title, genres in movies[["movieId", "title", "genres"]].itertuples(index=False):
        genre_list = [] if genres == "(no genres listed)" else genres.split("|")
        mtags = top_tags.get(movie_id, [])
        text = _join_text(title, "Genres: " + ", ".join(genre_list) if genre_list else "",
                          "Tags: " + ", ".join(mtags) if mtags else "")
        rows.append({"raw_item": movie_id, "title": title, "text": text,
                     "fields": {"title": title, "genres": genre_list, "tags": mtags}})
    inter = pd.DataFrame({
        "raw_user": ratings["userId"], "raw_item": ratings["movieId"], "value": ratings["rating"],
        "ts": ratings["timestamp"].astype(np.int64), "ts_kind": "unix",
    })
    return inter, _items_frame(rows)


def movielens_100k(folder: Path) -> Parsed:
    """ml-100k: u.data (TSV), u.item (ISO-8859-1, '|'), u.genre."""
    data = _read_csv(folder / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"],
                     dtype={"u": str, "i": str, "r": float, "t": np.int64})
    genres = _read_csv(folder / "u.genre", sep="|", header=None, names=["name", "idx"], encoding="latin-1")
    genre_names = list(genres.dropna()["name"])
    cols = ["id", "title", "release", "video", "imdb"] + genre_names
    items = _read_csv(folder / "u.item", sep="|", header=None, names=cols, encoding="latin-1", dtype=str,
                      keep_default_na=False)
    rows = []
    for rec in items.to_dict("records"):
        glist = [g for g in genre_names if rec[g] == "1" and g != "unknown"]
        text = _join_text(rec["title"], "Genres: " + ", ".join(glist) if glist else "",
                          f"Released {rec['release']}" if rec["release"] else "")
        rows.append({"raw_item": rec["id"], "title": rec["title"], "text": text,
                     "fields": {"title": rec["title"], "release_date": rec["release"], "genres": glist}})
    inter = pd.DataFrame({"raw_user": data["u"], "raw_item": data["i"], "value": data["r"],
                          "ts": data["t"], "ts_kind": "unix"})
    return inter, _items_frame(rows)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"{path}: cannot be parsed as UTF-8 JSON ({exc})") from exc


def amazon_lcrec_json(folder: Path) -> Parsed:
    """Amazon Office (LC-Rec JSON): ordered item sequences per user, item text fields."""
    inter_path = next(folder.glob("*.inter.json"), None)
    item_path = next(folder.glob("*.item.json"), None)
    if inter_path is None or item_path is None:
        raise ParseError(f"{folder}: expected *.inter.json and *.item.json")
    seqs, meta = _read_json(inter_path), _read_json(item_path)
    users, items, order = [], [], []
    for user, seq in seqs.items():
        users.extend([user] * len(seq))
        items.extend(str(i) for i in seq)
        order.extend(range(len(seq)))
    rows = []
    for item_id, rec in meta.items():
        fields = {k: html.unescape(str(rec.get(k, "") or "")) for k in ("title", "brand", "categories",
                                                                      "description")}
        desc = fields["description"][:400]  # long descriptions add little for a short-text encoder
        text = _join_text(fields["title"], fields["brand"], fields["categories"], desc)
        rows.append({"raw_item": str(item_id), "title": fields["title"], "text": text, "fields": fields})
    inter = pd.DataFrame({"raw_user": users, "raw_item": items, "value": 1.0,
                          "ts": np.asarray(order, dtype=np.int64), "ts_kind": "order"})
    return inter, _items_frame(rows)


def amazon_unisrec(folder: Path) -> Parsed:
    """Amazon Scientific (UniSRec atomic files): the test file holds each user's whole sequence."""
    prefix = next(folder.glob("*.test.inter"), None)
    if prefix is None:
        raise ParseError(f"{folder}: expected *.test.inter")
    stem = prefix.name[: -len(".test.inter")]
    item2index = _read_csv(folder / f"{stem}.item2index", sep="\t", header=None, names=["asin", "idx"],
                           dtype=str)
    user2index = _read_csv(folder / f"{stem}.user2index", sep="\t", header=None, names=["rid", "idx"], dtype=str)
    text = _read_csv(folder / f"{stem}.text", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    if list(text.columns) != ["item_id:token", "text:token_seq"]:
        raise ParseError(f"{folder / (stem + '.text')}: unexpected header {list(text.columns)}")
    test = _read_csv(prefix, sep="\t", dtype=str, keep_default_na=False)
    idx_to_asin = dict(zip(item2index["idx"], item2index["asin"]))
    idx_to_user = dict(zip(user2index["idx"], user2index["rid"]))
    users, items, order = [], [], []
    for uidx, hist, target in test.itertuples(index=False):
        seq = hist.split() + [target]
        if uidx not in idx_to_user:
            raise ParseError(f"{prefix}: user index {uidx} is not in user2index")
        users.extend([idx_to_user[uidx]] * len(seq))
        try:
            items.extend(idx_to_asin[i] for i in seq)
        except KeyError as exc:
            raise ParseError(f"{prefix}: item index {exc} is not in item2index") from exc
        order.extend(range(len(seq)))
    text_by_asin = dict(zip(text["item_id:token"], text["text:token_seq"]))
    rows = []
    for asin in item2index["asin"]:
        full = html.unescape(text_by_asin.get(asin, "")).strip()
        title = full.split(". ")[0] if full else ""
        rows.append({"raw_item": asin, "title": title, "text": full.rstrip(". ").strip(), "fields": {"text": full}})
    inter = pd.DataFrame({"raw_user": users, "raw_item": items, "value": 1.0,
                          "ts": np.asarray(order, dtype=np.int64), "ts_kind": "order"})
    return inter, _items_frame(rows)


def lastfm_hetrec(folder: Path) -> Parsed:
    """Last.fm HetRec 2011: listening counts (CRLF TSV) and artist names; no time or order."""
    ua = _read_csv(folder / "user_artists.dat", sep="\t", dtype={"userID": str, "artistID": str,
                                                                 "weight": float})
    if list(ua.columns) != ["userID", "artistID", "weight"]:
        raise ParseError(f"{folder / 'user_artists.dat'}: unexpected header {list(ua.columns)}")
    artists = _read_csv(folder / "artists.dat", sep="\t", dtype=str, keep_default_na=False, quoting=3,
                        encoding="utf-8")
    rows = [{"raw_item": a, "title": n, "text": _join_text(n, "Music artist"), "fields": {"name": n, "url": u}}
            for a, n, u in artists[["id", "name", "url"]].itertuples(index=False)]
    order = ua.groupby("userID").cumcount().to_numpy(dtype=np.int64)
    inter = pd.DataFrame({"raw_user": ua["userID"], "raw_item": ua["artistID"], "value": ua["weight"],
                          "ts": order, "ts_kind": "order"})
    return inter, _items_frame(rows)


def _read_adjacency(path: Path) -> tuple[list[str], list[str], list[int]]:
    users, items, order = [], [], []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if not parts:
                    continue
                users.extend([parts[0]] * (len(parts) - 1))
                items.extend(parts[1:])
                order.extend(range(len(parts) - 1))
    except (OSError, UnicodeDecodeError) as exc:
        raise ParseError(f"{path}: cannot be read ({exc})") from exc
    if not users:
        raise ParseError(f"{path}: has no `user item ...` lines (empty file?)")
    return users, items, order


def lightgcn_split(folder: Path) -> Parsed:
    """LightGCN/NGCF benchmark split: `user item item ...` lines for train and test."""
    frames = []
    for split in ("train", "test"):
        path = folder / f"{split}.txt.gz"
        if not path.exists():
            path = folder / f"{split}.txt"
        users, items, order = _read_adjacency(path)
        frames.append(pd.DataFrame({"raw_user": users, "raw_item": items, "value": 1.0,
                                    "ts": np.asarray(order, dtype=np.int64), "ts_kind": "order",
                                    "fixed_split": split}))
    inter = pd.concat(frames, ignore_index=True)
    item_list = _read_csv(folder / "item_list.txt", sep=" ", dtype=str)
    rows = [{"raw_item": remap, "title": "", "text": "", "fields": {"org_id": org}}
            for org, remap in item_list[["org_id", "remap_id"]].itertuples(index=False)]
    return inter, _items_frame(rows)


PARSERS: dict[str, Callable[[Path], Parsed]] = {
    "movielens_latest": movielens_latest,
    "movielens_100k": movielens_100k,
    "amazon_lcrec_json": amazon_lcrec_json,
    "amazon_unisrec": amazon_unisrec,
    "lastfm_hetrec": lastfm_hetrec,
    "lightgcn_split": lightgcn_split,
}


def parse(parser: str, folder: Path) -> Parsed:
    if parser not in PARSERS:
        raise ParseError(f"unknown parser '{parser}'; known: {sorted(PARSERS)}")
    return PARSERS[parser](folder)
