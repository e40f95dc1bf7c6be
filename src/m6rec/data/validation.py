"""The data gate (the `validate` stage's work): Great Expectations checks on a prepared folder, and publication of
the validated copy only when every expectation passes.

The prepared folder is first copied to a hidden sibling of the output folder; that copy is what gets validated, and
on success it is renamed into place, so the published bytes are exactly the validated ones. On failure the copy is
deleted and the output folder keeps the last good data. Either way the Data Docs and a ``summary.json`` land in the
report folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from m6rec.config import ValidateParams
from m6rec.data import schema
from m6rec.data.checkpoint import Outcome, run_checks
from m6rec.data.expectations import Thresholds, ValidationInputError, build_batches, build_suites, check_meta

DOCS_SUBDIR = "data_docs"
SUMMARY_FILE = "summary.json"


def thresholds(cfg: ValidateParams) -> Thresholds:
    return Thresholds(rating_scales={k: tuple(v) for k, v in (cfg.rating_scales or {}).items()},
                      min_users=cfg.min_users, min_items=cfg.min_items,
                      min_train_interactions=cfg.min_train_interactions)


def load_tables(folder: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """Read the three tables and meta.json of a prepared folder; clear errors for missing or unreadable files."""
    files = {"interactions": schema.INTERACTIONS, "items": schema.ITEMS, "users": schema.USERS}
    missing = [n for n in [*files.values(), schema.META] if not (folder / n).is_file()]
    if missing:
        raise ValidationInputError(f"{folder} is not a prepared data folder: missing {missing} "
                                   f"(run `dvc repro prepare` or `python -m m6rec.stages.prepare`)")
    tables = {}
    for name, fname in files.items():
        try:
            tables[name] = pd.read_parquet(folder / fname)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ValidationInputError(f"{folder / fname}: cannot be read as parquet ({exc})") from exc
    try:
        meta = json.loads((folder / schema.META).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationInputError(f"{folder / schema.META}: not valid JSON ({exc})") from exc
    check_meta(meta, str(folder / schema.META))
    return tables, meta


def validate_folder(folder: Path, cfg: ValidateParams, report_dir: Path, label: str | None = None,
                    data_docs: bool = True) -> Outcome:
    """Validate a prepared folder; writes the Data Docs and summary.json into report_dir (replacing old ones).

    `label` names the data in summary.json (the folder the user knows, not the staging copy).
    """
    docs_dir, summary_path = report_dir / DOCS_SUBDIR, report_dir / SUMMARY_FILE
    # Only what this stage writes is removed: report_dir may be shared with other reports.
    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    summary_path.unlink(missing_ok=True)
    tables, meta = load_tables(folder)
    suites = build_suites(meta, thresholds(cfg))
    batches = build_batches(tables, meta)
    report_dir.mkdir(parents=True, exist_ok=True)
    outcome = run_checks(batches, suites, docs_dir, cfg.max_examples, data_docs=data_docs)
    summary = {"in_dir": label or str(folder), **outcome.summary}
    summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return outcome


def publish(staged: Path, out_dir: Path) -> None:
    """Move a staged sibling folder into out_dir; the old out_dir is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
        os.rename(out_dir, old / out_dir.name)
    try:
        os.rename(staged, out_dir)
    except OSError:
        if old is not None:  # put the last good data back
            os.rename(old / out_dir.name, out_dir)
        raise
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old)


def validate_and_publish(cfg: ValidateParams, in_dir: Path, out_dir: Path, report_dir: Path) -> Outcome:
    """Copy in_dir next to out_dir, validate the copy, and publish it only if every expectation passes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not in_dir.is_dir():
        raise ValidationInputError(f"prepared folder {in_dir} does not exist (run the `prepare` stage)")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staged = staging / out_dir.name
    try:
        shutil.copytree(in_dir, staged)
        outcome = validate_folder(staged, cfg, report_dir, label=str(in_dir))
        if outcome.success:
            publish(staged, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome
