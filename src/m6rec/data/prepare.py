"""Parsed source frames -> the canonical schema (see m6rec.data.schema), one domain at a time."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.config import PrepareParams
from m6rec.data import schema
from m6rec.data.sources import DatasetSpec
from m6rec.data.splits import (ORDERED_SPLITS, choose_cold_items, fixed_split_with_valid, leakage_report,
                              per_user_split)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitParams:
    test_frac: float = 0.2
    valid_frac: float = 0.1
    min_user_interactions: int = 5
    cold_item_frac: float = 0.05
    max_users: int = 0  # 0 = every user; otherwise a seeded sample (small runs and tests)
    seed: int = 42


@dataclass(frozen=True)
class DomainTables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict


class PrepareError(ValueError):
    """The parsed data cannot be turned into the canonical schema (names the dataset and the problem)."""


def check_one_text_per_item(name: str, items: pd.DataFrame, max_examples: int = 3) -> None:
    """Raise PrepareError when an item id is listed more than once with different titles or texts.

    This runs here, on the parsed item file, because canonicalise keeps one row per id: after it, the `validate`
    suites could no longer see which text was dropped. Exact repeats (same id, same text) are harmless and are
    merged silently, as before.
    """
    dup = items[items.duplicated("raw_item", keep=False)]
    if dup.empty:
        return
    texts = dup.assign(_t=dup["title"].fillna("").astype(str) + "\x00" + dup["text"].fillna("").astype(str))
    variants = texts.groupby("raw_item", sort=False)["_t"].nunique()
    bad = variants[variants > 1].index.tolist()
    if not bad:
        return
    first = texts[texts["raw_item"] == bad[0]]["_t"].drop_duplicates().tolist()
    shown = [t.replace("\x00", " | ")[:80] for t in first[:2]]
    raise PrepareError(f"{name}: {len(bad)} item ids are listed with different texts, e.g. item {bad[0]!r}: "
                       f"{shown[0]!r} vs {shown[1]!r} (items {[str(b) for b in bad[:max_examples]]}); the item "
                       f"file must give one text per id")


def limit_texts(name: str, items: pd.DataFrame, max_chars: int) -> pd.DataFrame:
    """Cut titles, texts and raw text fields to `max_chars` characters (0 = no limit), logging how many were cut.

    A multi-megabyte description would otherwise travel through every table, the encoder cache and the bundles,
    while the encoder reads only its first few hundred tokens anyway.
    """
    if not max_chars:
        return items
    items = items.copy()
    cut = pd.Series(False, index=items.index)
    for col in ("title", "text"):
        values = items[col].fillna("").astype(str)
        long = values.str.len() > max_chars
        cut |= long
        items[col] = values.where(~long, values.str.slice(0, max_chars))

    def cut_fields(fields: object) -> object:
        if not isinstance(fields, dict):
            return fields
        return {k: v[:max_chars] if isinstance(v, str) else v for k, v in fields.items()}

    long_fields = items["fields"].map(lambda f: isinstance(f, dict) and any(
        isinstance(v, str) and len(v) > max_chars for v in f.values()))
    cut |= long_fields.astype(bool)
    items.loc[long_fields.astype(bool), "fields"] = items.loc[long_fields.astype(bool), "fields"].map(cut_fields)
    if cut.any():
        log.warning("%s: %d items had a title, text or field longer than prepare.max_text_chars=%d: cut to it",
                    name, int(cut.sum()), max_chars)
    return items


def canonicalise(spec: DatasetSpec, inter: pd.DataFrame, items: pd.DataFrame, params: SplitParams,
                 max_text_chars: int = 0) -> DomainTables:
    """Map ids, de-duplicate, hold out cold items and split; returns canonical tables for one domain.

    Raises PrepareError when an item id has two different texts; texts over `max_text_chars` are cut."""
    name = spec.name
    n_raw = len(inter)  # rows as exported, before sampling and de-duplication: the drift check compares it
    check_one_text_per_item(name, items)
    items = items.drop_duplicates("raw_item", keep="first").reset_index(drop=True)
    items = limit_texts(name, items, max_text_chars)
    unknown = ~inter["raw_item"].isin(items["raw_item"])
    if unknown.any():
        raise PrepareError(f"{name}: {int(unknown.sum())} interactions name items missing from the item file, "
                           f"e.g. {inter.loc[unknown, 'raw_item'].head(3).tolist()}")
    if inter[["raw_user", "raw_item", "value", "ts"]].isna().any().any():
        raise PrepareError(f"{name}: interactions contain missing values")
    if params.max_users:
        users_all = np.sort(inter["raw_user"].unique())
        if params.max_users < len(users_all):
            keep = np.random.default_rng(params.seed).choice(users_all, params.max_users, replace=False)
            inter = inter[inter["raw_user"].isin(set(keep))]
    # Repeated (user, item) pairs: keep the latest one, so a re-rating replaces the old rating.
    n_before = len(inter)
    inter = inter.sort_values(["raw_user", "ts"], kind="stable")
    inter = inter.drop_duplicates(["raw_user", "raw_item"], keep="last")
    if len(inter) < n_before:
        log.info("%s: dropped %d repeated (user, item) pairs", name, n_before - len(inter))

    # Id maps: users in sorted source-id order; items in the catalogue's order (items without interactions kept).
    raw_users = np.sort(inter["raw_user"].unique())
    user_index = pd.Series(np.arange(len(raw_users), dtype=np.int64), index=raw_users)
    item_index = pd.Series(np.arange(len(items), dtype=np.int64), index=items["raw_item"].to_numpy())
    users_arr = user_index[inter["raw_user"].to_numpy()].to_numpy()
    items_arr = item_index[inter["raw_item"].to_numpy()].to_numpy()
    ts = inter["ts"].to_numpy(dtype=np.int64)

    cold = np.empty(0, dtype=np.int64)
    if spec.has_text and params.cold_item_frac > 0:
        cold = choose_cold_items(items_arr, params.cold_item_frac, params.seed)
    is_cold = np.isin(items_arr, cold)
    split = np.full(len(inter), "cold", dtype=object)
    warm = ~is_cold
    if spec.split == "fixed":
        if "fixed_split" not in inter:
            raise PrepareError(f"{name}: split 'fixed' needs a parser that returns fixed_split")
        split[warm] = fixed_split_with_valid(users_arr[warm], inter["fixed_split"].to_numpy()[warm],
                                             params.valid_frac, params.seed)
    else:
        split[warm] = per_user_split(users_arr[warm], ts[warm], spec.split, params.test_frac, params.valid_frac,
                                     params.min_user_interactions, params.seed)

    interactions = pd.DataFrame({
        "domain": name, "user": users_arr, "item": items_arr,
        "value": inter["value"].to_numpy(dtype=np.float64), "ts": ts,
        "ts_kind": inter["ts_kind"].to_numpy(), "feedback": spec.feedback, "split": split,
    }).sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)
    item_frame = pd.DataFrame({
        "domain": name, "item": np.arange(len(items), dtype=np.int64),
        "raw_item": items["raw_item"].astype(str).to_numpy(),
        "title": items["title"].fillna("").astype(str).to_numpy(),
        "text": items["text"].fillna("").astype(str).to_numpy(),
        "fields": [json.dumps(f, ensure_ascii=False, sort_keys=True) for f in items["fields"]],
        "cold": np.isin(np.arange(len(items)), cold),
    })
    user_frame = pd.DataFrame({"domain": name, "user": np.arange(len(raw_users), dtype=np.int64),
                               "raw_user": raw_users.astype(str)})

    leaks = leakage_report(interactions)
    if spec.split not in ORDERED_SPLITS:
        leaks.pop("time_order_violations")
    bad = {k: v for k, v in leaks.items() if v}
    if bad:
        raise PrepareError(f"{name}: the split leaks: {bad}")
    counts = interactions["split"].value_counts().to_dict()
    meta = {
        "domain": name, "kind": spec.domain, "feedback": spec.feedback, "split_method": spec.split,
        "has_text": spec.has_text, "n_users": int(len(raw_users)), "n_items": int(len(items)),
        "n_interactions": int(len(interactions)), "n_raw_interactions": int(n_raw), "n_cold_items": int(len(cold)),
        "splits": {s: int(counts.get(s, 0)) for s in schema.SPLITS},
        "value_min": float(interactions["value"].min()), "value_max": float(interactions["value"].max()),
        "licence": spec.licence,
    }
    log.info("%s: %d users, %d items, splits %s, %d cold items", name, meta["n_users"], meta["n_items"],
             meta["splits"], meta["n_cold_items"])
    return DomainTables(interactions, item_frame, user_frame, meta)


def combine(tables: list[DomainTables], params: SplitParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Stack per-domain tables; meta keeps the domain order that defines global id offsets."""
    interactions = pd.concat([t.interactions for t in tables], ignore_index=True)
    items = pd.concat([t.items for t in tables], ignore_index=True)
    users = pd.concat([t.users for t in tables], ignore_index=True)
    meta = {"domains": [t.meta["domain"] for t in tables], "per_domain": {t.meta["domain"]: t.meta for t in tables},
            "split_params": params.__dict__}
    return interactions, items, users, meta


def prepare_datasets(raw_dir: Path, out_dir: Path, registry_path: Path, cfg: PrepareParams) -> dict:
    """Parse, canonicalise and write every domain of `cfg` from `raw_dir` to `out_dir`; returns meta. Writes
    atomically (temp folder, then rename), so a failure leaves the last prepared data as it was."""
    from m6rec.data.parsers import parse_dataset
    from m6rec.data.raw_check import verify_raw
    from m6rec.data.sources import load_registry

    registry = load_registry(registry_path)
    unknown = sorted(set(cfg.domains) - set(registry))
    if unknown:
        raise PrepareError(f"params.yaml `domains` names datasets {unknown} that {registry_path} does not register; "
                           f"registered: {sorted(registry)} (add one with `m6rec add-domain`)")
    if cfg.verify_raw:
        # The check the Airflow DAG runs first, so that plain `dvc repro` refuses modified raw data too.
        unchecked = verify_raw([registry[n] for n in cfg.domains], raw_dir, str(registry_path))
        for name in unchecked:
            log.info("%s: the registry lists no sha256: the raw files are gated by the validate expectations", name)
    split_params = SplitParams(cfg.test_frac, cfg.valid_frac, cfg.min_user_interactions, cfg.cold_item_frac,
                               cfg.max_users, cfg.seed)
    tables = []
    for name in cfg.domains:
        folder = raw_dir / name
        if not folder.is_dir():
            raise PrepareError(f"raw data for '{name}' not found in {folder}: run `python -m m6rec.stages.download`")
        inter, items = parse_dataset(registry[name], folder)
        tables.append(canonicalise(registry[name], inter, items, split_params, cfg.max_text_chars))
    interactions, items, users, meta = combine(tables, split_params)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir.parent))
    try:
        interactions.to_parquet(tmp / schema.INTERACTIONS, index=False)
        items.to_parquet(tmp / schema.ITEMS, index=False)
        users.to_parquet(tmp / schema.USERS, index=False)
        (tmp / schema.META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta
