"""The canonical schema every dataset is turned into (written by the `prepare` stage as parquet).

Files in a prepared folder (default `data/prepared/`, published to `data/validated/` once the checks pass):

``interactions.parquet`` — one row per (domain, user, item) interaction
    domain    str      dataset name, e.g. "ml-latest-small"
    user      int64    domain-local user index, 0..n_users-1 (see users.parquet)
    item      int64    domain-local item index, 0..n_items-1 (see items.parquet)
    value     float64  explicit: the rating; implicit_count: the count (>= 1); implied: 1.0
    ts        int64    unix seconds where ts_kind == "unix", else the 0-based position in the user's sequence
    ts_kind   str      "unix" | "order"
    feedback  str      "explicit" | "implicit_count" | "implied"
    split     str      "train" | "valid" | "test" | "cold"  ("cold": interaction with a held-out cold-start item)

``items.parquet`` — the item catalogue of every domain (items without interactions included)
    domain    str
    item      int64    domain-local index
    raw_item  str      the id in the source files (movieId, ASIN, artist id, ...)
    title     str      short display name ("" where the source has none)
    text      str      every text field joined into one string, for the sentence encoder ("" where none)
    fields    str      JSON object with the raw text fields as read from the source
    cold      bool     True for held-out cold-start items (all their interactions have split == "cold")

``users.parquet`` — the user id map
    domain    str
    user      int64    domain-local index
    raw_user  str      the id in the source files

``meta.json`` — per-domain counts, feedback kind, rating range, split parameters and the source sha256 list.

Global ids (for multi-domain models) are ``offset[domain] + local``, with offsets in domain order of meta.json.

String columns are listed as "object" below; pandas 3 reads them back from parquet as its "str" dtype, and the checks
accept either.
"""

from __future__ import annotations

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
META = "meta.json"

SPLITS = ("train", "valid", "test", "cold")
FEEDBACK_KINDS = ("explicit", "implicit_count", "implied")
TS_KINDS = ("unix", "order")

INTERACTION_COLUMNS = {
    "domain": "object",
    "user": "int64",
    "item": "int64",
    "value": "float64",
    "ts": "int64",
    "ts_kind": "object",
    "feedback": "object",
    "split": "object",
}
ITEM_COLUMNS = {
    "domain": "object",
    "item": "int64",
    "raw_item": "object",
    "title": "object",
    "text": "object",
    "fields": "object",
    "cold": "bool",
}
USER_COLUMNS = {
    "domain": "object",
    "user": "int64",
    "raw_user": "object",
}
