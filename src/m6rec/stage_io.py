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


# Durations are host- and load-dependent: in a DVC out they make every `dvc metrics diff` noise and `dvc.lock`
# change on every rerun. write_json moves them to a timings file beside the out (not a DVC out, git-ignored).
TIMING_KEYS = frozenset({"fit_s", "eval_s", "total_s", "build_s", "epoch_s", "encode_s", "seconds"})
TIMINGS_DIR = Path("reports") / "timings"


def is_timing(key: str) -> bool:
    """A duration field: a known name or any ``*_s`` / ``*_per_s`` key."""
    return key in TIMING_KEYS or key.endswith("_s")


def split_timings(payload: Any) -> tuple[Any, Any]:
    """(payload without timing fields, the timing fields in the same nesting); None where a branch has none."""
    if isinstance(payload, dict):
        kept, timings = {}, {}
        for key, value in payload.items():
            if isinstance(key, str) and is_timing(key) and not isinstance(value, (dict, list)):
                timings[key] = value
                continue
            kept[key], sub = split_timings(value)
            if sub is not None:
                timings[key] = sub
        return kept, (timings or None)
    if isinstance(payload, list):
        pairs = [split_timings(v) for v in payload]
        subs = [t for _, t in pairs]
        return [k for k, _ in pairs], (subs if any(t is not None for t in subs) else None)
    return payload, None


def timings_path(path: str | Path) -> Path:
    """Where the timings of the out at `path` go: ``<root>/reports/timings/<name>`` for a file in a ``metrics/``
    or ``plots/`` folder (``plots/x.json`` -> ``x.plot.json``), else ``<stem>.timings.json`` beside it."""
    path = Path(path)
    if path.parent.name == "metrics":
        return path.parent.parent / TIMINGS_DIR / path.name
    if path.parent.name == "plots":
        return path.parent.parent / TIMINGS_DIR / f"{path.stem}.plot{path.suffix}"
    return path.with_name(f"{path.stem}.timings{path.suffix}")


def write_json(path: str | Path, payload: Any) -> Path:
    """`payload` as indented JSON at `path`, creating its folder; its timing fields (:func:`is_timing`) go to
    :func:`timings_path` instead, so the file at `path` is the same for the same inputs."""
    kept, timings = split_timings(payload)
    if timings is not None:
        write_text(timings_path(path), json.dumps(timings, indent=2) + "\n")
    return write_text(path, json.dumps(kept, indent=2) + "\n")


# A model stage's metrics file holds every figure (each @k, the cold-start slices): thousands of columns in
# `dvc metrics show`. So it is a plain out that `evaluate` and the tests read, and the DVC metric of the stage is
# its headline file: per split (valid/test) only these figures (rmse and auc where a model predicts ratings or
# clicks), and the result's own scalars (best_epoch, fraction, ...).
HEADLINE_METRICS = ("ndcg@10", "ndcg@20", "recall@20", "rmse", "auc")
HEADLINE_SPLITS = ("valid", "test")


def headline_path(path: str | Path) -> Path:
    """The headline file of the metrics file `path`: ``<stem>.headline.json`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.headline{path.suffix}")


def headline(payload: Any) -> Any:
    """`payload` with each split dict (``valid``/``test``) cut to :data:`HEADLINE_METRICS` and any other nested
    dict of a result (``cold``) dropped; a result is a dict holding a split."""
    if not isinstance(payload, dict):
        return payload
    if any(isinstance(payload.get(s), dict) for s in HEADLINE_SPLITS):
        out = {}
        for key, value in payload.items():
            if key in HEADLINE_SPLITS and isinstance(value, dict):
                out[key] = {k: v for k, v in value.items() if k in HEADLINE_METRICS}
            elif not isinstance(value, (dict, list)):
                out[key] = value
        return out
    return {key: headline(value) for key, value in payload.items()}


def write_metrics(path: str | Path, payload: Any) -> Path:
    """A model stage's metrics: the whole payload at `path`, its :func:`headline` at :func:`headline_path` (the
    DVC metric), timing fields of both in their timings files (:func:`write_json`). Returns `path`."""
    kept, _ = split_timings(payload)
    write_text(headline_path(path), json.dumps(headline(kept), indent=2) + "\n")
    return write_json(path, payload)


def tracking_settings(params: dict[str, Any]):
    """The `tracking` section of the stage's own params file (its defaults where the file has none): handed to
    :func:`m6rec.tracking.start_run`, so a stage run with ``--params other.yaml`` logs where that file says."""
    from m6rec.config import TrackingParams, section

    return section(params, "tracking", TrackingParams) if "tracking" in params else TrackingParams()
