"""One small parser per source format: raw files -> (interactions, items) frames in source ids.

Every parser returns
  interactions: raw_user (str), raw_item (str), value (float), ts (int64), ts_kind ("unix" | "order"),
                and for fixed-split sources a column `fixed_split` ("train" | "test");
  items:        raw_item (str), title (str), text (str), fields (dict of the raw text fields).
Ids stay as strings here; `m6rec.data.prepare` maps them to contiguous indices.

Two generic formats take their file and column names from the registry entry (:func:`parse_dataset`), so a new
dataset in either needs no code:
  csv:   a CSV/TSV interactions file with `columns: {user, item, rating?, timestamp?}` and an optional item file
         with `item_columns: {item?, title?, text?}` (text: one column or a list, joined into the item's text);
  inter: RecBole atomic files, `<name>.inter` with typed headers (`user_id:token item_id:token rating:float
         timestamp:float`) and an optional `<name>.item` (`item_id:token` plus text fields).
No rating column: every interaction counts 1. No timestamp: the file's row order per user (ts_kind "order").
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


def _separator(file: str, sep: str | None) -> str:
    if sep:
        return sep
    return "\t" if Path(file).suffix.lower() in (".tsv", ".tab", ".inter", ".item") else ","


def _need(frame: pd.DataFrame, column: str, role: str, path: Path) -> pd.Series:
    if column not in frame.columns:
        raise ParseError(f"{path}: no column {column!r} (the registry's {role}); columns: {list(frame.columns)}")
    return frame[column]


def _timestamps(values: pd.Series, path: Path, column: str, kind: str) -> np.ndarray:
    """Numbers as they are (unix seconds or an order); otherwise dates/times parsed to unix seconds (UTC)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return np.floor(numeric.to_numpy(dtype=np.float64)).astype(np.int64)
    if kind == "order":
        bad = values[numeric.isna()].head(3).tolist()
        raise ParseError(f"{path}: column {column!r} (ts_kind order) holds non-numbers, e.g. {bad}")
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        bad = values[parsed.isna()].head(3).tolist()
        raise ParseError(f"{path}: column {column!r} (the registry's columns.timestamp) holds values that are "
                         f"neither numbers nor dates, e.g. {bad}")
    # (not astype("int64"): the unit of the datetime dtype varies with pandas versions and inputs)
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.int64)


def _interactions(frame: pd.DataFrame, columns: dict, path: Path, ts_kind: str) -> pd.DataFrame:
    """Canonical interaction columns from a frame of strings, by the registry's column mapping."""
    users = _need(frame, columns["user"], "columns.user", path).astype(str).str.strip()
    items = _need(frame, columns["item"], "columns.item", path).astype(str).str.strip()
    for role, col in (("user", users), ("item", items)):
        if (col == "").any() or col.isin(["nan", "None"]).any():
            raise ParseError(f"{path}: column {columns[role]!r} (columns.{role}) has empty values")
    if columns.get("rating"):
        raw = _need(frame, columns["rating"], "columns.rating", path)
        value = pd.to_numeric(raw, errors="coerce")
        if value.isna().any():
            raise ParseError(f"{path}: column {columns['rating']!r} (columns.rating) holds non-numbers, e.g. "
                             f"{raw[value.isna()].head(3).tolist()}")
    else:
        value = pd.Series(1.0, index=frame.index)
    if columns.get("timestamp"):
        ts = _timestamps(_need(frame, columns["timestamp"], "columns.timestamp", path), path, columns["timestamp"],
                         ts_kind)
    else:  # no time: the file's order within each user
        ts, ts_kind = users.groupby(users, sort=False).cumcount().to_numpy(dtype=np.int64), "order"
    return pd.DataFrame({"raw_user": users.to_numpy(), "raw_item": items.to_numpy(),
                         "value": value.to_numpy(dtype=np.float64), "ts": ts, "ts_kind": ts_kind})


def _generic_items(frame: pd.DataFrame | None, inter: pd.DataFrame, item_columns: dict, default_text: list[str],
                   path: Path | None) -> pd.DataFrame:
    """Item rows from an item file (title and text columns by the mapping), else the ids the interactions use."""
    if frame is None:
        ids = pd.unique(inter["raw_item"])
        return _items_frame([{"raw_item": i, "title": "", "text": "", "fields": {}} for i in ids])
    id_col = item_columns.get("item", "item")
    ids = _need(frame, id_col, "item_columns.item", path).astype(str).str.strip()
    title_col = item_columns.get("title")
    if title_col:
        _need(frame, title_col, "item_columns.title", path)
    text_cols = item_columns.get("text", default_text)
    text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols or [])
    for col in text_cols:
        _need(frame, col, "item_columns.text", path)
    shown = list(dict.fromkeys(c for c in [title_col, *text_cols] if c))
    rows = []
    for i, rec in zip(ids, frame[shown].fillna("").astype(str).to_dict("records") if shown else [{}] * len(ids),
                      strict=True):
        title = rec.get(title_col, "") if title_col else ""
        text = _join_text(title, *[rec[c] for c in text_cols if c != title_col])
        rows.append({"raw_item": i, "title": title, "text": text, "fields": {c: rec[c] for c in shown}})
    return _items_frame(rows)


def csv_table(folder: Path, spec) -> Parsed:
    """A CSV/TSV interactions file (and optional item file) described by the registry entry's column mapping."""
    path = folder / spec.interactions
    frame = _read_csv(path, sep=_separator(spec.interactions, spec.sep), dtype=str, keep_default_na=False,
                      encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the first column
    inter = _interactions(frame, dict(spec.columns), path, spec.ts_kind)
    items = None
    item_path = None
    if spec.items:
        item_path = folder / spec.items
        items = _read_csv(item_path, sep=_separator(spec.items, spec.sep), dtype=str, keep_default_na=False,
                          encoding="utf-8-sig")
    item_columns = {"item": spec.columns["item"], **dict(spec.item_columns)}
    return inter, _generic_items(items, inter, item_columns, [], item_path)


def _atomic(path: Path, sep: str | None) -> pd.DataFrame:
    """A RecBole atomic file: typed header `name:type` -> columns named `name` (types token, token_seq, float)."""
    frame = _read_csv(path, sep=sep or "\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8-sig")
    names, kinds = [], {}
    for col in frame.columns:
        name, _, kind = str(col).partition(":")
        if kind not in ("token", "token_seq", "float", "float_seq"):
            raise ParseError(f"{path}: header field {col!r} is not `name:type` with type token, token_seq, float "
                             f"or float_seq (RecBole atomic file)")
        names.append(name)
        kinds[name] = kind
    frame.columns = names
    frame.attrs["kinds"] = kinds
    return frame


def recbole_atomic(folder: Path, spec) -> Parsed:
    """RecBole atomic files: `<name>.inter` (user_id, item_id, rating?, timestamp?) and an optional `<name>.item`."""
    path = folder / spec.interactions
    frame = _atomic(path, spec.sep)
    defaults = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    columns = {**defaults, **dict(spec.columns)}
    for role in ("rating", "timestamp"):
        if role not in spec.columns and columns[role] not in frame.columns:
            columns[role] = ""  # optional field absent from the header
    inter = _interactions(frame, columns, path, spec.ts_kind)
    items = item_path = None
    default_text: list[str] = []
    if spec.items:
        item_path = folder / spec.items
        items = _atomic(item_path, spec.sep)
        id_col = spec.item_columns.get("item", columns["item"])
        default_text = [c for c, k in items.attrs["kinds"].items() if k in ("token", "token_seq") and c != id_col]
    item_columns = {"item": columns["item"], **dict(spec.item_columns)}
    if items is not None and "title" not in item_columns and "title" in items.columns:
        item_columns["title"] = "title"
    return inter, _generic_items(items, inter, item_columns, default_text, item_path)


GENERIC: dict[str, Callable[[Path, object], Parsed]] = {"csv": csv_table, "inter": recbole_atomic}


def parse_dataset(spec, folder: Path) -> Parsed:
    """Parse the raw folder of registry entry `spec` (m6rec.data.sources.DatasetSpec) with its parser."""
    if spec.parser in GENERIC:
        return GENERIC[spec.parser](folder, spec)
    return parse(spec.parser, folder)


PARSERS: dict[str, Callable[[Path], Parsed]] = {
    "movielens_latest": movielens_latest,
    "movielens_100k": movielens_100k,
    "amazon_lcrec_json": amazon_lcrec_json,
    "amazon_unisrec": amazon_unisrec,
    "lastfm_hetrec": lastfm_hetrec,
    "lightgcn_split": lightgcn_split,
}


def parse(parser: str, folder: Path) -> Parsed:
    if parser in GENERIC:
        raise ParseError(f"parser '{parser}' reads its columns from the registry: use parse_dataset(spec, folder)")
    if parser not in PARSERS:
        raise ParseError(f"unknown parser '{parser}'; known: {sorted(PARSERS) + sorted(GENERIC)}")
    return PARSERS[parser](folder)
