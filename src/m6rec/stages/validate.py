"""Stage `validate`: Great Expectations checks on data/prepared; publishes data/validated only when all pass.

The prepared folder is first copied to a hidden sibling of `out_dir`; that copy is what gets validated, and on
success it is renamed into place, so the published bytes are exactly the validated ones. On failure the copy is
deleted: `out_dir` (and everything downstream of it) keeps the last good data. Either way the Data Docs and a
`summary.json` land in `report_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from m6rec.config import ConfigError, section
from m6rec.data import schema
from m6rec.stages.cli import stage_params
from m6rec.data.checkpoint import Outcome, failure_messages, run_checks
from m6rec.data.expectations import Thresholds, ValidationInputError, build_batches, build_suites, check_meta

log = logging.getLogger(__name__)

DOCS_SUBDIR = "data_docs"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class ValidateParams:
    in_dir: str = "data/prepared"  # prepared tables to check (written by `prepare`)
    out_dir: str = "data/validated"  # published copy of in_dir, replaced only when every check passes
    report_dir: str = "reports/validation"  # Data Docs (data_docs/index.html) and summary.json
    metrics_file: str = "metrics/validation.json"  # counts of expectations evaluated/passed (written on success)
    rating_scales: dict = field(default_factory=dict)  # explicit-feedback domain -> [min, max] or [min, max, step]
    min_users: int = 20  # every domain needs at least this many users
    min_items: int = 20  # ... items
    min_train_interactions: int = 100  # ... training interactions
    max_examples: int = 5  # bad values/rows shown per failed expectation

    def thresholds(self) -> Thresholds:
        return Thresholds(rating_scales={k: tuple(v) for k, v in (self.rating_scales or {}).items()},
                          min_users=self.min_users, min_items=self.min_items,
                          min_train_interactions=self.min_train_interactions)


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
    suites = build_suites(meta, cfg.thresholds())
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


def run(cfg: ValidateParams, in_dir: Path, out_dir: Path, report_dir: Path) -> Outcome:
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


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GX logs every expectation at INFO
    cfg = section(params, "validate", ValidateParams)
    in_dir, out_dir, report_dir = Path(cfg.in_dir), Path(cfg.out_dir), Path(cfg.report_dir)
    try:
        outcome = run(cfg, in_dir, out_dir, report_dir)
    except (ValidationInputError, ConfigError) as exc:
        log.error("validation could not run: %s; %s left unchanged", exc, out_dir)
        return 1
    s = outcome.summary
    if not outcome.success:
        for line in failure_messages(s):
            log.error("validation failed: %s", line)
        log.error("%d of %d expectations failed (%d of %d suites); %s left unchanged. Data Docs: %s",
                  s["expectations_failed"], s["expectations_evaluated"], s["suites_evaluated"] - s["suites_passed"],
                  s["suites_evaluated"], out_dir, outcome.docs_index.resolve())
        return 1
    metrics = {k: s[k] for k in ("expectations_evaluated", "expectations_passed", "expectations_failed",
                                 "suites_evaluated", "suites_passed")}
    metrics_path = Path(cfg.metrics_file)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("all %d expectations passed in %d suites; published %s -> %s; Data Docs: %s",
             s["expectations_evaluated"], s["suites_evaluated"], in_dir, out_dir, outcome.docs_index.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
