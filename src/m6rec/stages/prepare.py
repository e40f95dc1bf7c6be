"""Stage `prepare`: raw datasets -> canonical parquet tables with id maps, splits and cold-start items
(:func:`m6rec.data.prepare.prepare_datasets`)."""

from __future__ import annotations

import logging
from pathlib import Path

from m6rec.config import DataParams, PrepareParams, section
from m6rec.data.parsers import ParseError
from m6rec.data.prepare import PrepareError, prepare_datasets
from m6rec.data.raw_check import RawDataError
from m6rec.stage_io import stage_params

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    data_cfg = section(params, "data", DataParams)
    cfg = section(params, "prepare", PrepareParams)
    try:
        meta = prepare_datasets(Path(data_cfg.raw_dir), Path(cfg.out_dir), Path(data_cfg.registry), cfg)
    except (RawDataError, PrepareError, ParseError) as exc:
        log.error("prepare failed: %s\n%s left unchanged", exc, cfg.out_dir)
        return 1
    log.info("prepared %d domains -> %s", len(meta["domains"]), cfg.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
