"""Stage `evaluate`: one comparison of every model of every stage, per domain.

Reads the metrics files of the model stages ({domain: {model: {"valid": {...}, "test": {...}, ...}}}), writes
`metrics/summary.json` (per domain: the best model on test and each model's test figures, next to MostPopular),
a plot table (test metric by domain and model) and a Markdown report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from m6rec.config import EvaluateParams, section
from m6rec.stage_io import stage_params, write_json, write_text

log = logging.getLogger(__name__)


def collect(metrics_files: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{stage: {domain: {model: ...}}} -> {domain: {"stage/model": test metrics}} (ranking models only)."""
    table: dict[str, dict[str, dict]] = {}
    for stage, payload in metrics_files.items():
        for domain, models in payload.items():
            if not isinstance(models, dict):
                continue
            for model, res in models.items():
                test = res.get("test") if isinstance(res, dict) else None
                if isinstance(test, dict) and test:
                    table.setdefault(domain, {})[f"{stage}/{model}"] = test
    return table


def summarise(table: dict[str, dict[str, dict]], metric: str, reference: str) -> dict[str, dict]:
    """Best model per domain on `metric`, and how each model compares with the reference model."""
    out = {}
    for domain, models in table.items():
        ranked = sorted(((m, t[metric]) for m, t in models.items() if metric in t), key=lambda x: -x[1])
        if not ranked:
            continue
        ref = next((v for m, v in ranked if m.rsplit("/", 1)[-1] == reference), None)
        out[domain] = {
            "best_model": ranked[0][0],
            f"best_test_{metric}": ranked[0][1],
            f"{reference}_test_{metric}": ref,
            "models": {m: v for m, v in ranked},
        }
    return out


def report_markdown(summary: dict[str, dict], metric: str, reference: str) -> str:
    lines = [f"# Model comparison (test {metric}, full ranking)", ""]
    for domain, s in summary.items():
        lines += [f"## {domain}", "", f"| model | test {metric} | vs {reference} |", "|---|---:|---:|"]
        ref = s[f"{reference}_test_{metric}"]
        for model, value in s["models"].items():
            ratio = f"{value / ref:.2f}x" if ref else "-"
            lines.append(f"| {model} | {value:.4f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "evaluate", EvaluateParams)
    files = {}
    for path in cfg.inputs:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"evaluate: metrics file {p} not found (is its stage in dvc.yaml and run?)")
        files[p.stem] = json.loads(p.read_text(encoding="utf-8"))
    table = collect(files)
    summary = summarise(table, cfg.metric, cfg.reference)
    rows = [{"model": f"{d}/{m}", "domain": d, f"test_{cfg.metric}": v}
            for d, s in summary.items() for m, v in s["models"].items()]
    write_json(cfg.summary, summary)
    write_json(cfg.plot, rows)
    write_text(cfg.report, report_markdown(summary, cfg.metric, cfg.reference))
    for domain, s in summary.items():
        log.info("%s: best %s (%s %.4f; %s %s)", domain, s["best_model"], cfg.metric, s[f"best_test_{cfg.metric}"],
                 cfg.reference, s[f"{cfg.reference}_test_{cfg.metric}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
