"""What every stage shares: `python -m m6rec.stages.<name> [--params params.yaml]`, and writing its outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """`payload` as indented JSON at `path`, creating its folder."""
    return write_text(path, json.dumps(payload, indent=2))


def tracking_settings(params: dict[str, Any]):
    """The `tracking` section of the stage's own params file (its defaults where the file has none): handed to
    :func:`m6rec.tracking.start_run`, so a stage run with ``--params other.yaml`` logs where that file says."""
    from m6rec.config import TrackingParams, section

    return section(params, "tracking", TrackingParams) if "tracking" in params else TrackingParams()
