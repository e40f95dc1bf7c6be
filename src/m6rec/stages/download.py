"""Stage `download`: get every raw dataset into data/raw/<name>/ (official source, else the local mirror).

Not a DVC stage: its output, data/raw, is tracked by `data.dvc` (`dvc add data/raw`). Run it before `dvc repro`:
    python -m m6rec.stages.download [--offline] [--mirror DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m6rec.config import ConfigError, DataParams, load_section
from m6rec.data.download import download
from m6rec.data.sources import OFFLINE_ENV
from m6rec.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--offline", action="store_true", help=f"skip official sources (or set ${OFFLINE_ENV}=1)")
    parser.add_argument("--mirror", type=Path, default=None, help="local mirror folder (default $M6REC_DATA_MIRROR "
                        "or ../shared/data)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        failures = download(load_section("data", DataParams, args.params), args.mirror, args.offline)
    except ConfigError as exc:
        raise SystemExit(f"{args.params}: {exc}") from exc
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
