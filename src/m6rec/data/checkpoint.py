"""Running the expectation suites of :mod:`m6rec.data.expectations`: one GX Checkpoint per batch, a Data Docs
site, and a JSON-ready summary with one readable line per failed expectation.

The GX objects live in an ephemeral context made for one run (making it costs milliseconds; importing GX is the
slow part). One Checkpoint per batch runs its suites and updates a Data Docs site in a folder of the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from m6rec.data.expectations import TABLE_KEYS

# Columns GX reports beside each unexpected value, so a failure points at the row (and its domain).
INDEX_COLUMNS = {**TABLE_KEYS, "relations": ["domain", "user", "item", "split"], "sizes": ["domain"],
                 "timestamps": ["domain", "user", "item"], "drift": ["domain"]}
DOCS_SITE = "m6rec"


@dataclass(frozen=True)
class Outcome:
    """Result of one validation run: overall success, the JSON-ready summary and the Data Docs index."""

    success: bool
    summary: dict
    docs_index: Path


# ------------------------------------------------------------------------------------------------- running

def make_context(docs_dir: Path) -> Any:
    """An in-memory GX context whose only Data Docs site writes to `docs_dir`."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={DOCS_SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_checks(batches: Mapping[str, pd.DataFrame], suites: Mapping[str, list[gx.ExpectationSuite]],
               docs_dir: Path, max_examples: int = 5, data_docs: bool = True) -> Outcome:
    """Run one Checkpoint per batch (all its suites) and summarise every result.

    With `data_docs`, each Checkpoint's UpdateDataDocsAction renders its results into `docs_dir` (rendering costs
    about as much as validating; tests that only need the results turn it off).
    """
    docs_dir = Path(docs_dir)
    context = make_context(docs_dir)
    source = context.data_sources.add_pandas("m6rec")
    results = []
    for batch_name, frame in batches.items():
        if batch_name not in suites:
            continue
        batch_def = source.add_dataframe_asset(batch_name).add_batch_definition_whole_dataframe("whole")
        definitions = []
        for suite in suites[batch_name]:
            suite = context.suites.add(suite)
            definitions.append(context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=batch_def, suite=suite)))
        base = batch_name.split(".", 1)[0]  # "<table>.<domain>" slices report like their table
        index_cols = [c for c in INDEX_COLUMNS.get(base, []) if c in frame.columns]
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate-{batch_name}", validation_definitions=definitions,
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if data_docs else [],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": max_examples,
                           "unexpected_index_column_names": index_cols},
        ))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        results.extend(result.run_results.values())
    not_run = sorted(name for name in suites if name not in batches)
    summary = summarize(results, suites, max_examples, not_run)
    index = docs_dir / "index.html"
    summary["data_docs"] = str(index)
    return Outcome(success=summary["success"], summary=summary, docs_index=index)


# ------------------------------------------------------------------------------------------------ reporting

def _plain(value: Any) -> Any:
    """JSON-ready copy of a GX result value (numpy scalars, tuples, conditions, NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _failure(res: Any, suite_meta: dict, max_examples: int) -> dict:
    cfg = res.expectation_config
    result = res.result or {}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "row_condition", "condition_parser")}
    examples = result.get("partial_unexpected_index_list") or result.get("partial_unexpected_list") or []
    if not examples and "observed_value" in result:
        examples = [{"observed_value": result["observed_value"]}]
    examples = _plain(list(examples)[:max_examples])
    domain = suite_meta.get("domain")
    if domain is None:
        seen = sorted({e["domain"] for e in examples if isinstance(e, dict) and isinstance(e.get("domain"), str)})
        domain = ", ".join(seen) or "all"
    return {
        "expectation": cfg.type, "table": (cfg.meta or {}).get("table", suite_meta.get("table")),
        "domain": domain, "kwargs": _plain(kwargs), "unexpected_count": _plain(result.get("unexpected_count")),
        "element_count": _plain(result.get("element_count")), "examples": examples,
        "error": _exception_message(res.exception_info),
    }


def _exception_message(info: Any) -> str | None:
    """The message of an exception GX caught while evaluating an expectation (e.g. a missing column), if any.

    GX stores either one record or one record per failed metric."""
    if not isinstance(info, dict):
        return None
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = sorted({str(r.get("exception_message")) for r in records if r.get("raised_exception")})
    return "; ".join(messages) or None


def summarize(results: list, suites: Mapping[str, list[gx.ExpectationSuite]], max_examples: int = 5,
              not_run: list[str] | None = None) -> dict:
    """Per suite: success, counts and the failed expectations (with example bad rows), plus the totals.

    Suites in `not_run` (their batch could not be built) make the run fail too.
    """
    suite_meta = {s.name: dict(s.meta or {}) for ss in suites.values() for s in ss}
    out: dict[str, dict] = {}
    for r in results:
        meta = suite_meta.get(r.suite_name, {})
        failed = [_failure(e, meta, max_examples) for e in r.results if not e.success]
        out[r.suite_name] = {
            "success": bool(r.success), "table": meta.get("table"), "domain": meta.get("domain"),
            "evaluated": int(r.statistics["evaluated_expectations"]),
            "passed": int(r.statistics["successful_expectations"]), "failed": failed,
        }
    evaluated = sum(s["evaluated"] for s in out.values())
    passed = sum(s["passed"] for s in out.values())
    return {
        "success": bool(out) and all(s["success"] for s in out.values()) and not not_run,
        "suites_not_run": list(not_run or []),
        "expectations_evaluated": evaluated, "expectations_passed": passed,
        "expectations_failed": evaluated - passed,
        "suites_evaluated": len(out), "suites_passed": sum(s["success"] for s in out.values()),
        "suites": out,
    }


def failure_messages(summary: dict) -> list[str]:
    """One line per failed expectation: domain, table, expectation and example bad values."""
    lines = [f"domain all | suite {name} | not run: its batch could not be built (see the warnings above)"
             for name in summary.get("suites_not_run", [])]
    for suite_name, s in summary["suites"].items():
        for f in s["failed"]:
            args = ", ".join(f"{k}={v}" for k, v in f["kwargs"].items())
            what = (f"raised {f['error']}" if f["error"] else
                    f"{f['unexpected_count']} of {f['element_count']} unexpected" if f["unexpected_count"] is not None
                    else "failed")
            examples = f"; e.g. {f['examples']}" if f["examples"] else ""
            lines.append(f"domain {f['domain']} | table {f['table']} | suite {suite_name} | "
                         f"{f['expectation']}({args}): {what}{examples}")
    return lines
