"""Stage `evaluate`: one comparison of every model of every stage, per domain.

Reads the metrics files of the model stages ({domain: {model: {"valid": {...}, "test": {...}, ...}}}), writes
`headline` (the pipeline's DVC metric: per domain, the best model on test `metric` and the reference model, each
with its `headline_metrics`), `summary` (per domain: the best model and each model's test figure), a plot table
(test metric by domain and model, drawn one facet per domain) and a Markdown report.
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


def headline(table: dict[str, dict[str, dict]], summary: dict[str, dict], reference: str,
             metrics: tuple[str, ...]) -> dict[str, dict]:
    """{domain: {"best_model": name, "best": {m: test figure}, reference: {m: test figure}}}: a few columns per
    domain in `dvc metrics show`, the figures that say whether a change helped."""
    out = {}
    for domain, s in summary.items():
        models = table[domain]
        ref = next((m for m in s["models"] if m.rsplit("/", 1)[-1] == reference), None)
        entry: dict = {"best_model": s["best_model"],
                       "best": {m: models[s["best_model"]][m] for m in metrics if m in models[s["best_model"]]}}
        if ref is not None:
            entry[reference] = {m: models[ref][m] for m in metrics if m in models[ref]}
        out[domain] = entry
    return out


def plot_rows(summary: dict[str, dict], metric: str) -> list[dict]:
    """One row per domain and model (the model without the domain: the plot facets by domain)."""
    return [{"domain": d, "model": m, f"test_{metric}": v} for d, s in summary.items() for m, v in s["models"].items()]


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
    write_json(cfg.headline, headline(table, summary, cfg.reference, cfg.headline_metrics))
    write_json(cfg.summary, summary)
    write_json(cfg.plot, plot_rows(summary, cfg.metric))
    write_text(cfg.report, report_markdown(summary, cfg.metric, cfg.reference))
    for domain, s in summary.items():
        log.info("%s: best %s (%s %.4f; %s %s)", domain, s["best_model"], cfg.metric, s[f"best_test_{cfg.metric}"],
                 cfg.reference, s[f"{cfg.reference}_test_{cfg.metric}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
