"""Stage `prepare`: raw datasets -> canonical parquet tables with id maps, splits and cold-start items."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from m6rec.config import DataParams, section
from m6rec.data import schema
from m6rec.data.parsers import parse
from m6rec.data.prepare import SplitParams, canonicalise, combine
from m6rec.data.sources import load_registry
from m6rec.stages.cli import stage_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareParams:
    out_dir: str = "data/prepared"  # canonical tables are written here (checked by `validate` before use)
    domains: tuple[str, ...] = ()  # datasets to prepare, in this order (defines global id offsets)
    test_frac: float = 0.2  # last fraction of each user's interactions -> test
    valid_frac: float = 0.1  # the fraction before the test part -> validation
    min_user_interactions: int = 5  # users with fewer interactions keep them all in train
    cold_item_frac: float = 0.05  # fraction of items (with text) held out as cold-start items
    max_users: int = 0  # 0 = all users; otherwise a seeded sample per domain (tiny runs)
    seed: int = 42  # seed for cold items, random splits and user sampling


def run(raw_dir: Path, out_dir: Path, registry_path: Path, cfg: PrepareParams) -> dict:
    """Parse, canonicalise and write every domain; returns meta. Writes atomically (temp folder, then rename)."""
    registry = load_registry(registry_path)
    unknown = sorted(set(cfg.domains) - set(registry))
    if unknown:
        raise SystemExit(f"params.yaml prepare.domains names unknown datasets {unknown}")
    split_params = SplitParams(cfg.test_frac, cfg.valid_frac, cfg.min_user_interactions, cfg.cold_item_frac,
                               cfg.max_users, cfg.seed)
    tables = []
    for name in cfg.domains:
        folder = raw_dir / name
        if not folder.is_dir():
            raise SystemExit(f"raw data for '{name}' not found in {folder}: run `python -m m6rec.stages.download`")
        inter, items = parse(registry[name].parser, folder)
        tables.append(canonicalise(registry[name], inter, items, split_params))
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


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    data_cfg = section(params, "data", DataParams)
    cfg = section(params, "prepare", PrepareParams)
    meta = run(Path(data_cfg.raw_dir), Path(cfg.out_dir), Path(data_cfg.registry), cfg)
    log.info("prepared %d domains -> %s", len(meta["domains"]), cfg.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
