"""The data gate (the `validate` stage's work): Great Expectations checks on a prepared folder, and publication of
the validated copy only when every expectation passes.

The prepared folder is first copied to a hidden sibling of the output folder; that copy is what gets validated, and
on success it is renamed into place, so the published bytes are exactly the validated ones. On failure the copy is
deleted and the output folder keeps the last good data. Either way the Data Docs, a ``summary.json`` and a
``drift.json`` land in the report folder.

``summary.json`` (a DVC out) covers the checks that are a function of the data alone; the drift checks compare with
the last validated data, which a stage cannot list as a dependency (it is its own persisted output, absent on a
fresh clone), so their report goes to ``drift.json`` beside the Data Docs, and a forced rerun of the same data
leaves ``dvc.lock`` as it was. Success in both files is the run's overall verdict (drift included).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from m6rec.config import ValidateParams
from m6rec.data import schema
from m6rec.data.checkpoint import Outcome, run_checks
from m6rec.data.drift import DriftLimits, derive_drift, drift_suite
from m6rec.data.expectations import Thresholds, ValidationInputError, build_batches, build_suites, check_meta

log = logging.getLogger(__name__)

DOCS_SUBDIR = "data_docs"
SUMMARY_FILE = "summary.json"
DRIFT_FILE = "drift.json"


def split_drift(summary: dict) -> tuple[dict, dict]:
    """``(data, drift)``: the summary of the data's own suites (totals recounted without the drift suite) and the
    drift report with its suite's results (None when nothing was compared)."""
    suites = {k: v for k, v in summary["suites"].items() if k != "drift"}
    evaluated = sum(s["evaluated"] for s in suites.values())
    passed = sum(s["passed"] for s in suites.values())
    data = {**{k: v for k, v in summary.items() if k != "drift"}, "suites": suites,
            "expectations_evaluated": evaluated, "expectations_passed": passed,
            "expectations_failed": evaluated - passed, "suites_evaluated": len(suites),
            "suites_passed": sum(bool(s["success"]) for s in suites.values()), "drift_report": DRIFT_FILE}
    drift = {"success": summary["success"], **summary.get("drift", {}), "suite": summary["suites"].get("drift")}
    return data, drift


def thresholds(cfg: ValidateParams, now: float | None = None) -> Thresholds:
    """The suites' limits from params; `now` (unix seconds, default: the clock) anchors "not in the future"."""
    epoch = datetime.combine(date.fromisoformat(cfg.ts_epoch), datetime.min.time(), tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return Thresholds(rating_scales={k: tuple(v) for k, v in (cfg.rating_scales or {}).items()},
                      min_users=cfg.min_users, min_items=cfg.min_items,
                      min_train_interactions=cfg.min_train_interactions,
                      ts_min=int(epoch.timestamp()), ts_max=int(now + cfg.max_future_s))


def drift_limits(cfg: ValidateParams) -> DriftLimits:
    lo, hi = cfg.drift_count_ratio
    return DriftLimits(count_ratio=(float(lo), float(hi)), max_new_user_share=cfg.drift_max_new_user_share,
                       max_new_item_share=cfg.drift_max_new_item_share,
                       max_rating_mean_shift=cfg.drift_max_rating_mean_shift)


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


def load_baseline(folder: Path | None) -> tuple[dict[str, pd.DataFrame], dict] | None:
    """The last validated data to measure drift against; None when there is none yet (the first run)."""
    if folder is None or not (folder / schema.META).is_file():
        return None
    try:
        return load_tables(folder)
    except ValidationInputError as exc:
        # A damaged baseline must not silently switch the drift checks off
        raise ValidationInputError(f"last validated data {folder} cannot be read for the drift checks: {exc}; "
                                   f"restore it (`dvc checkout`) or remove it to start a new baseline") from exc


def validate_folder(folder: Path, cfg: ValidateParams, report_dir: Path, label: str | None = None,
                    data_docs: bool = True, baseline: Path | None = None, now: float | None = None) -> Outcome:
    """Validate a prepared folder; writes the Data Docs, summary.json and drift.json into report_dir (replacing old
    ones). The returned outcome's summary holds every suite, drift included.

    `label` names the data in summary.json (the folder the user knows, not the staging copy); `baseline` is the last
    validated folder, the drift checks' reference (None or absent: first run); `now` anchors the future check.
    """
    docs_dir, summary_path, drift_path = report_dir / DOCS_SUBDIR, report_dir / SUMMARY_FILE, report_dir / DRIFT_FILE
    # Only what this stage writes is removed: report_dir may be shared with other reports.
    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    summary_path.unlink(missing_ok=True)
    drift_path.unlink(missing_ok=True)
    tables, meta = load_tables(folder)
    suites = build_suites(meta, thresholds(cfg, now))
    batches = build_batches(tables, meta)
    drift, drift_report = derive_drift(tables, meta, load_baseline(baseline), str(baseline))
    if drift is not None:
        batches["drift"], suites["drift"] = drift, [drift_suite(drift_limits(cfg))]
    log.info("drift: %s%s", drift_report["status"],
             "".join(f"; {d}: {why}" for d, why in drift_report["skipped"].items()))
    report_dir.mkdir(parents=True, exist_ok=True)
    outcome = run_checks(batches, suites, docs_dir, cfg.max_examples, data_docs=data_docs)
    outcome.summary["drift"] = drift_report
    data_summary, drift_summary = split_drift({"in_dir": label or str(folder), **outcome.summary})
    summary_path.write_text(json.dumps(data_summary, indent=2), encoding="utf-8")
    drift_path.write_text(json.dumps(drift_summary, indent=2), encoding="utf-8")
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


def validate_and_publish(cfg: ValidateParams, in_dir: Path, out_dir: Path, report_dir: Path,
                         now: float | None = None) -> Outcome:
    """Copy in_dir next to out_dir, validate the copy (drift against out_dir, the last validated data), and publish
    it only if every expectation passes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not in_dir.is_dir():
        raise ValidationInputError(f"prepared folder {in_dir} does not exist (run the `prepare` stage)")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staged = staging / out_dir.name
    try:
        shutil.copytree(in_dir, staged)
        outcome = validate_folder(staged, cfg, report_dir, label=str(in_dir), baseline=out_dir, now=now)
        if outcome.success:
            publish(staged, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome
