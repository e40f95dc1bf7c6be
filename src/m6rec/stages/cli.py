"""The command line every stage shares: `python -m m6rec.stages.<name> [--params params.yaml]`."""

from __future__ import annotations

import argparse
from typing import Any

from m6rec.config import load_params
from m6rec.log import setup_logging


def stage_params(argv: list[str] | None, doc: str | None) -> dict[str, Any]:
    """Parse `--params`, set up logging, and return the whole params file (each stage takes its own section)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    return load_params(args.params)
