"""Stage `download`: get every raw dataset into data/raw/<name>/ (official source, else the local mirror).

Not a DVC stage: its output, data/raw, is tracked by `data.dvc` (`dvc add data/raw`). Run it before `dvc repro`:
    python -m m6rec.stages.download [--offline] [--mirror DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from m6rec.config import load_section
from m6rec.data.sources import OFFLINE_ENV, DataSourceError, default_mirror, fetch_dataset, load_registry
from m6rec.log import setup_logging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataParams:
    registry: str = "config/datasets.yaml"  # dataset registry (sources, sha256, parsers)
    raw_dir: str = "data/raw"  # where raw datasets are stored (tracked by data.dvc)
    datasets: tuple[str, ...] = ()  # datasets to get; empty = every registered one
    timeout_s: float = 30.0  # per-request timeout for official sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--offline", action="store_true", help=f"skip official sources (or set ${OFFLINE_ENV}=1)")
    parser.add_argument("--mirror", type=Path, default=None, help="local mirror folder (default $M6REC_DATA_MIRROR "
                        "or ../shared/data)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_section("data", DataParams, args.params)
    registry = load_registry(cfg.registry)
    names = list(cfg.datasets) or list(registry)
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise SystemExit(f"params.yaml data.datasets names unknown datasets {unknown}; registered: {sorted(registry)}")
    offline = args.offline or os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    mirror = args.mirror or default_mirror()
    failures = []
    for name in names:
        try:
            fetch_dataset(registry[name], Path(cfg.raw_dir), mirror, offline=offline, timeout=cfg.timeout_s)
        except DataSourceError as exc:
            log.error("%s", exc)
            failures.append(name)
    if failures:
        log.error("could not obtain: %s", ", ".join(failures))
        return 1
    log.info("raw data ready in %s (%d datasets)", cfg.raw_dir, len(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
