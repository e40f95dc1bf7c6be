"""Great Expectations (1.x) suites for the canonical tables, built in code from `schema` and meta.json.

What is checked (every check is a GX expectation, so every failure shows in the results and the Data Docs):

* ``interactions`` / ``items`` / ``users`` (whole tables): the columns and their types, no nulls, the allowed sets
  (domain, split, ts_kind, feedback), unique keys, non-empty; items' text is a string and ``fields`` is JSON.
* ``<table>.<domain>`` (one batch per domain: that domain's rows): ids inside the domain's id maps
  (``0 <= user < n_users``, ``0 <= item < n_items``), the feedback kind of meta.json and the value range of that
  kind (explicit: the rating scale from params; implicit_count: >= 1; implied: == 1).
* ``relations`` (derived, one row per interaction): ``(domain, user)`` exists in users, ``(domain, item)`` exists in
  items, a ``(domain, user, item)`` pair sits in one split only, and split "cold" exactly for cold items.
* ``sizes`` (derived, one row per domain of meta.json): minimum users, items and training interactions, and the
  table counts agree with meta.json.
* ``timestamps`` (the interactions with ``ts_kind == "unix"``): not before the configured epoch, not after the run's
  clock plus a tolerance (a daily export with future times has a broken clock or time zone).
* ``drift`` (derived against the last validated data): see :mod:`m6rec.data.drift`.

One text per item id is checked by `prepare` (m6rec.data.prepare.check_one_text_per_item), the one place that still
sees the duplicates.

Per-domain batches are slices made once in pandas: a GX row condition would re-filter the whole table for every
metric, which costs more than the checks themselves on the full data. Running the suites and reporting their
results is :mod:`m6rec.data.checkpoint`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from m6rec.config import ConfigError
from m6rec.data import schema

log = logging.getLogger(__name__)

TABLES = ("interactions", "items", "users")
TABLE_COLUMNS = {"interactions": schema.INTERACTION_COLUMNS, "items": schema.ITEM_COLUMNS,
                 "users": schema.USER_COLUMNS}
TABLE_KEYS = {"interactions": ["domain", "user", "item"], "items": ["domain", "item"], "users": ["domain", "user"]}


class ValidationInputError(ValueError):
    """The prepared folder cannot be validated at all (missing file, unreadable meta.json)."""


@dataclass(frozen=True)
class Thresholds:
    """The data-dependent limits of the suites (from params.yaml `validate`)."""

    rating_scales: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # domain -> (min, max[, step])
    min_users: int = 1
    min_items: int = 1
    min_train_interactions: int = 1
    ts_min: int | None = None  # earliest allowed unix time (the configured epoch); None = not checked
    ts_max: int | None = None  # latest allowed unix time (the run's clock + tolerance); None = not checked

    def __post_init__(self) -> None:
        for domain, scale in self.rating_scales.items():
            ok = isinstance(scale, (list, tuple)) and len(scale) in (2, 3) and all(
                isinstance(v, (int, float)) for v in scale)
            if not ok or scale[0] >= scale[1] or (len(scale) == 3 and scale[2] <= 0):
                raise ConfigError(f"validate.rating_scales['{domain}'] must be [min, max] or [min, max, step] "
                                  f"with min < max and step > 0, got {scale!r}")


# ---------------------------------------------------------------------------------------------- batches (pandas)

def check_meta(meta: dict, source: str = schema.META) -> None:
    """Raise ValidationInputError unless meta has what the suites are built from (domains and their counts)."""
    domains = meta.get("domains") if isinstance(meta, dict) else None
    per_domain = meta.get("per_domain") if isinstance(meta, dict) else None
    if not isinstance(domains, list) or not domains or not isinstance(per_domain, dict):
        raise ValidationInputError(f"{source}: needs a non-empty 'domains' list and a 'per_domain' mapping")
    for d in domains:
        entry = per_domain.get(d)
        missing = [k for k in ("n_users", "n_items", "n_interactions", "feedback") if not isinstance(entry, dict)
                   or k not in entry]
        if missing:
            raise ValidationInputError(f"{source}: per_domain['{d}'] lacks {missing}")


def derive_relations(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """One row per interaction with the facts its cross-table checks need.

    Columns: domain, user, item, split, user_known ((domain, user) is in users), item_known ((domain, item) is in
    items), item_cold (that item is marked cold), in_cold_split (split == "cold"), n_splits (how many splits hold
    this (domain, user, item)).
    """
    rel = interactions[["domain", "user", "item", "split"]].reset_index(drop=True)
    user_keys = users[["domain", "user"]].drop_duplicates()
    rel = rel.merge(user_keys, on=["domain", "user"], how="left", indicator="_user")
    item_keys = items[["domain", "item", "cold"]].drop_duplicates(["domain", "item"])
    rel = rel.merge(item_keys, on=["domain", "item"], how="left", indicator="_item")
    rel["user_known"] = rel["_user"].eq("both")
    rel["item_known"] = rel["_item"].eq("both")
    rel["item_cold"] = rel["cold"].eq(True)  # unknown items count as warm; item_known reports them
    rel["in_cold_split"] = rel["split"].eq("cold")
    rel["n_splits"] = rel.groupby(["domain", "user", "item"], dropna=False)["split"].transform("nunique")
    return rel[["domain", "user", "item", "split", "user_known", "item_known", "item_cold", "in_cold_split",
                "n_splits"]]


def derive_sizes(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """One row per domain of meta.json: the row counts of each table beside the counts meta.json claims."""
    domains = list(meta["domains"])

    def count(frame: pd.DataFrame) -> np.ndarray:
        return frame["domain"].value_counts().reindex(domains, fill_value=0).to_numpy(dtype=np.int64)

    per = meta["per_domain"]
    return pd.DataFrame({
        "domain": domains,
        "n_users": count(users), "n_items": count(items), "n_interactions": count(interactions),
        "n_train": count(interactions[interactions["split"] == "train"]),
        "meta_n_users": [int(per[d]["n_users"]) for d in domains],
        "meta_n_items": [int(per[d]["n_items"]) for d in domains],
        "meta_n_interactions": [int(per[d]["n_interactions"]) for d in domains],
    })


def build_batches(tables: Mapping[str, pd.DataFrame], meta: dict) -> dict[str, pd.DataFrame]:
    """The frames to validate: the three tables, their per-domain slices (`<table>.<domain>`) and the derived
    `relations` and `sizes` frames.

    The derived frames are left out (with a warning) when a table lacks a column they need or has key columns of
    types that cannot be joined; the schema suite of that table reports the problem, so the run still fails.
    """
    batches = {name: tables[name] for name in TABLES}
    for name in TABLES:
        if "domain" in tables[name].columns:
            for d in meta["domains"]:
                batches[f"{name}.{d}"] = tables[name][tables[name]["domain"] == d]
    need = {"interactions": {"domain", "user", "item", "split"}, "items": {"domain", "item", "cold"},
            "users": {"domain", "user"}}
    lacking = {t: sorted(need[t] - set(tables[t].columns)) for t in TABLES if need[t] - set(tables[t].columns)}
    if lacking:
        log.warning("cross-table checks skipped: tables lack columns %s", lacking)
        return batches
    if {"ts", "ts_kind"} <= set(tables["interactions"].columns):
        inter = tables["interactions"]
        # Only real clock times: "order" timestamps are positions in a user's sequence
        batches["timestamps"] = inter.loc[inter["ts_kind"] == "unix", [c for c in ("domain", "user", "item", "ts")
                                                                       if c in inter.columns]]
    try:
        batches["relations"] = derive_relations(tables["interactions"], tables["items"], tables["users"])
        batches["sizes"] = derive_sizes(tables["interactions"], tables["items"], tables["users"], meta)
    except (TypeError, ValueError) as exc:  # e.g. merging an object `user` column with an int64 one
        log.warning("cross-table checks skipped: the key columns cannot be joined (%s)", exc)
        batches.pop("relations", None)
    return batches


# ------------------------------------------------------------------------------------------------ suites (GX)

def _suite(name: str, table: str, domain: str | None, expectations: list) -> gx.ExpectationSuite:
    # Built unattached (no context needed); `run_checks` adds it to the run's context.
    return gx.ExpectationSuite(name=name, expectations=expectations, meta={"table": table, "domain": domain})


def _gx_type(dtype: str) -> str:
    # Strings are `object` (pandas < 3) or `str` (pandas >= 3); "str" accepts both.
    return "str" if dtype in ("object", "str") else dtype


def table_suite(table: str, domains: list[str]) -> gx.ExpectationSuite:
    """Schema, nulls, allowed sets, unique keys and non-emptiness of one whole table."""
    columns = TABLE_COLUMNS[table]
    exps: list = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(columns)),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=TABLE_KEYS[table]),
        gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=domains),
    ]
    for col, dtype in columns.items():
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col))
        exps.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_=_gx_type(dtype)))
    id_col = TABLE_KEYS[table][-1]
    exps.append(gxe.ExpectColumnValuesToBeBetween(column=id_col, min_value=0))
    if table == "interactions":
        exps += [
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(schema.SPLITS)),
            gxe.ExpectColumnValuesToBeInSet(column="ts_kind", value_set=list(schema.TS_KINDS)),
            gxe.ExpectColumnValuesToBeInSet(column="feedback", value_set=list(schema.FEEDBACK_KINDS)),
        ]
    elif table == "items":
        exps += [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["domain", "raw_item"]),
            gxe.ExpectColumnValuesToBeJsonParseable(column="fields"),
        ]
    else:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["domain", "raw_user"]))
    return _suite(table, table, None, exps)


def value_expectations(domain: str, feedback: str, thresholds: Thresholds) -> list:
    """The allowed `value` of one domain's interactions, by feedback kind."""
    if feedback == "explicit":
        if domain not in thresholds.rating_scales:
            raise ConfigError(f"validate.rating_scales has no entry for the explicit-feedback domain '{domain}'; "
                              f"add e.g. `{domain}: [1, 5]`")
        scale = thresholds.rating_scales[domain]
        exps = [gxe.ExpectColumnValuesToBeBetween(column="value", min_value=float(scale[0]),
                                                  max_value=float(scale[1]))]
        if len(scale) == 3:
            n = int(math.floor((scale[1] - scale[0]) / scale[2] + 1e-9))
            grid = sorted({round(scale[0] + i * scale[2], 9) for i in range(n + 1)})
            exps.append(gxe.ExpectColumnValuesToBeInSet(column="value", value_set=grid))
        return exps
    if feedback == "implicit_count":
        return [gxe.ExpectColumnValuesToBeBetween(column="value", min_value=1.0)]
    if feedback == "implied":
        return [gxe.ExpectColumnValuesToBeInSet(column="value", value_set=[1.0])]
    return []  # unknown kinds fail the table suite's feedback set already


def domain_suites(table: str, meta: dict, thresholds: Thresholds) -> list[gx.ExpectationSuite]:
    """Per-domain suites on one table (each validates the batch `<table>.<domain>`: that domain's rows)."""
    suites = []
    for d in meta["domains"]:
        info = meta["per_domain"][d]
        n_users, n_items = int(info["n_users"]), int(info["n_items"])
        users_ok = gxe.ExpectColumnValuesToBeBetween(column="user", min_value=0, max_value=n_users - 1)
        items_ok = gxe.ExpectColumnValuesToBeBetween(column="item", min_value=0, max_value=n_items - 1)
        if table == "interactions":
            exps = [users_ok, items_ok,
                    gxe.ExpectColumnValuesToBeInSet(column="feedback", value_set=[info["feedback"]]),
                    gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=0),
                    *value_expectations(d, info["feedback"], thresholds)]
        elif table == "items":
            exps = [items_ok]
        else:
            exps = [users_ok]
        suites.append(_suite(f"{table}.{d}", table, d, exps))
    return suites


def relations_suite() -> gx.ExpectationSuite:
    """Ids resolve in their maps and splits are disjoint (checked on the derived `relations` frame)."""
    t = {"table": "interactions"}
    return _suite("relations", "interactions", None, [
        gxe.ExpectColumnValuesToBeInSet(column="user_known", value_set=[True], meta=t,
                                        notes="every interaction's (domain, user) exists in users.parquet"),
        gxe.ExpectColumnValuesToBeInSet(column="item_known", value_set=[True], meta=t,
                                        notes="every interaction's (domain, item) exists in items.parquet"),
        gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1, meta=t,
                                          notes="a (domain, user, item) pair lies in one split only"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="item_cold", column_B="in_cold_split", meta=t,
                                            notes="split 'cold' exactly for the items marked cold (so cold items "
                                                  "have no train/valid/test interaction)"),
    ])


def sizes_suite(thresholds: Thresholds) -> gx.ExpectationSuite:
    """Minimum sizes per domain and agreement of the tables with meta.json (on the derived `sizes` frame)."""
    return _suite("sizes", "meta", None, [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"table": "meta.json"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_users", min_value=thresholds.min_users, meta={"table": "users"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_items", min_value=thresholds.min_items, meta={"table": "items"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_interactions", min_value=1, meta={"table": "interactions"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_train", min_value=thresholds.min_train_interactions,
                                          meta={"table": "interactions"}),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_users", column_B="meta_n_users", meta={"table": "users"}),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_items", column_B="meta_n_items", meta={"table": "items"}),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_interactions", column_B="meta_n_interactions",
                                            meta={"table": "interactions"}),
    ])


def timestamps_suite(thresholds: Thresholds) -> gx.ExpectationSuite:
    """Unix-time interactions lie between the configured epoch and the run's clock (plus a tolerance)."""
    t = {"table": "interactions"}
    exps = []
    if thresholds.ts_min is not None:
        exps.append(gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=thresholds.ts_min, meta=t,
                                                      notes="not before validate.ts_epoch"))
    if thresholds.ts_max is not None:
        exps.append(gxe.ExpectColumnValuesToBeBetween(column="ts", max_value=thresholds.ts_max, meta=t,
                                                      notes="not in the future (run clock + validate.max_future_s)"))
    return _suite("timestamps", "interactions", None, exps)


def build_suites(meta: dict, thresholds: Thresholds) -> dict[str, list[gx.ExpectationSuite]]:
    """Batch name -> the suites that validate it (suite names are the batch names)."""
    check_meta(meta)
    domains = list(meta["domains"])
    suites: dict[str, list[gx.ExpectationSuite]] = {}
    for t in TABLES:
        suites[t] = [table_suite(t, domains)]
        suites.update({s.name: [s] for s in domain_suites(t, meta, thresholds)})
    suites["relations"] = [relations_suite()]
    suites["sizes"] = [sizes_suite(thresholds)]
    if thresholds.ts_min is not None or thresholds.ts_max is not None:
        suites["timestamps"] = [timestamps_suite(thresholds)]
    return suites
