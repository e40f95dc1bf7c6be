"""Stage `validate`: Great Expectations checks on data/prepared; publishes data/validated only when all pass.

:func:`m6rec.data.validation.validate_and_publish` checks a copy of `in_dir` (drift measured against `out_dir`, the
last validated data; none on the first run) and publishes it to `out_dir` only on a pass: on failure `out_dir` (and
everything downstream of it) keeps the last good data. Either way the Data Docs,
a `summary.json` (the data's own checks) and a `drift.json` (the comparison with the last validated data, not a DVC
out) land in `report_dir`; a pass also writes the data checks' counts to `metrics_file`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from m6rec.config import ConfigError, ValidateParams, section
from m6rec.data.checkpoint import failure_messages
from m6rec.data.expectations import ValidationInputError
from m6rec.data.validation import split_drift, validate_and_publish
from m6rec.stage_io import stage_params, write_json

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GX logs every expectation at INFO
    cfg = section(params, "validate", ValidateParams)
    in_dir, out_dir, report_dir = Path(cfg.in_dir), Path(cfg.out_dir), Path(cfg.report_dir)
    try:
        outcome = validate_and_publish(cfg, in_dir, out_dir, report_dir)
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
    data_summary, _ = split_drift(s)  # the metrics are the data's own checks: drift depends on the last run
    metrics = {k: data_summary[k] for k in ("expectations_evaluated", "expectations_passed", "expectations_failed",
                                 "suites_evaluated", "suites_passed")}
    write_json(cfg.metrics_file, metrics)
    log.info("all %d expectations passed in %d suites; published %s -> %s; Data Docs: %s",
             s["expectations_evaluated"], s["suites_evaluated"], in_dir, out_dir, outcome.docs_index.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
