"""Stage `register`: log candidate bundles as versions of MLflow model `m6rec`; promote the best to `@champion`.

Gate (all must hold for a promotion):

1. the data checks passed: ``<validate.report_dir>/summary.json`` has ``"success": true`` (missing = not passed);
2. the best candidate beats the current champion by more than ``margin`` on the declared metric (e.g.
   ``valid.ndcg@20``) averaged over the declared domains, both figures **on the same validation data**; a missing
   champion counts as beaten.

Figures: a candidate's comes from its metrics file (``{domain: {model: {split: {metric: v}}}}``, model = the bundle's
``meta["model"]``; a candidate without a metrics file: the bundle's own ``meta["metrics"]``, ``{domain: {split:
{metric: v}}}``) when its bundle's ``meta["data_version"]`` is the current version of ``data_dir``, else the
bundle is evaluated on the current data. The champion's comes from its version tags (``register.metric``,
``register.metric_value``, ``register.domains``, ``register.data_version``) when metric, domains and data version
match, else its bundle is downloaded from the registry and evaluated on the current data. Evaluation uses
``m6rec.evaluation.protocol.evaluate_split`` with the bundle's dot-product scores, users and items matched to the
current data by raw id (ids the bundle lacks score 0). A domain a bundle does not serve counts as 0.

Writes ``report`` (reports/promotion.json: decision, both figures, versions) and logs it to the MLflow run.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m6rec import tracking
from m6rec.config import ConfigError, TrackingParams, section
from m6rec.data.dataset import Prepared, domain_data, load_prepared
from m6rec.data.sequences import split_histories
from m6rec.evaluation.protocol import evaluate_split
from m6rec.serving.bundle import Bundle, load_bundle, raw_user_ids, read_meta
from m6rec.serving.scoring import DomainScorer
from m6rec.stages.cli import stage_params

log = logging.getLogger(__name__)

_METRIC = re.compile(r"^(valid|test|cold)\.(recall|ndcg|hit|precision|coverage)@(\d+)$|^(valid|test|cold)\.(mrr)$")
TAG_METRIC, TAG_VALUE, TAG_DOMAINS, TAG_DATA = ("register.metric", "register.metric_value", "register.domains",
                                               "register.data_version")


@dataclass(frozen=True)
class RegisterParams:
    candidates: tuple = ()  # list of {bundle: folder, metrics: metrics/<stage>.json (optional)}: models to register
    metric: str = "valid.ndcg@20"  # split.metric compared between candidate and champion
    domains: tuple[str, ...] = ()  # domains averaged; [] = every domain of any candidate bundle
    margin: float = 0.0  # the best candidate must beat the champion by more than this (absolute)
    model_name: str = tracking.REGISTERED_MODEL  # registered model name in MLflow
    data_dir: str = "data/validated"  # the data the figures must refer to (re-evaluation reads it)
    report: str = "reports/promotion.json"  # decision record (also logged to MLflow)
    batch_users: int = 512  # users scored per batch when a bundle is re-evaluated

    def __post_init__(self) -> None:
        parse_metric(self.metric)
        if self.margin < 0:
            raise ConfigError(f"register.margin must be >= 0, got {self.margin}")
        for i, c in enumerate(self.candidates):
            if not isinstance(c, Mapping) or not c.get("bundle") or set(c) - {"bundle", "metrics"}:
                raise ConfigError(f"register.candidates[{i}] must be a mapping with 'bundle' and optionally "
                                  f"'metrics', got {c!r}")


@dataclass
class Figure:
    """A model's figure on the declared metric: the mean and the per-domain values, and where it came from."""

    value: float
    per_domain: dict[str, float | None]
    source: str  # "metrics-file", "bundle-meta", "tags" or "re-evaluated"


@dataclass
class Candidate:
    bundle_dir: str
    metrics_file: str | None
    model: str
    figure: Figure
    version: str | None = None
    model_uri: str | None = None


@dataclass
class Decision:
    promote: bool
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)


def parse_metric(metric: str) -> tuple[str, str, tuple[int, ...]]:
    """``"valid.ndcg@20"`` -> ``("valid", "ndcg@20", (20,))``; ``"valid.mrr"`` -> ``("valid", "mrr", (10,))``."""
    m = _METRIC.match(metric)
    if not m:
        raise ConfigError(f"register.metric {metric!r} must look like valid.ndcg@20 or test.mrr "
                          f"(split valid|test|cold; recall, ndcg, hit, precision, coverage @k, or mrr)")
    if m.group(1):
        return m.group(1), f"{m.group(2)}@{m.group(3)}", (int(m.group(3)),)
    return m.group(4), "mrr", (10,)


def mean_figure(per_domain: Mapping[str, float | None]) -> float:
    """Mean over the declared domains; a domain without a figure counts as 0."""
    if not per_domain:
        raise ValueError("no domains to average over")
    return float(np.mean([0.0 if v is None else float(v) for v in per_domain.values()]))


def metrics_file_figure(metrics: Mapping[str, Any], model: str | None, metric: str, domains: Sequence[str],
                        served: Sequence[str]) -> Figure:
    """The figure recorded in a metrics file (``{domain: {model: {split: {metric: v}}}}``), or with ``model`` None
    in a bundle's own metrics (``{domain: {split: {metric: v}}}``).

    Domains the bundle does not serve count as 0; a served domain missing from the file is an error (the stage
    that made the candidate must report what it exports).
    """
    split, name, _ = parse_metric(metric)
    per: dict[str, float | None] = {}
    for d in domains:
        if d not in served:
            per[d] = None
            continue
        try:
            per[d] = float((metrics[d] if model is None else metrics[d][model])[split][name])
        except (KeyError, TypeError) as exc:
            where = "the bundle's meta metrics have" if model is None else "metrics file has"
            raise KeyError(f"{where} no {d}.{'' if model is None else model + '.'}{split}.{name}") from exc
    return Figure(mean_figure(per), per, "metrics-file" if model is not None else "bundle-meta")


def align_ids(src_ids: Sequence[str], dst_ids: Sequence[str]) -> np.ndarray:
    """Position in ``src_ids`` of each of ``dst_ids`` (-1 where absent)."""
    pos = {s: i for i, s in enumerate(src_ids)}
    return np.array([pos.get(str(d), -1) for d in dst_ids], dtype=np.int64)


def bundle_figure(bundle: Bundle, prepared: Prepared, metric: str, domains: Sequence[str],
                  batch_users: int = 512) -> Figure:
    """Evaluate a bundle's own scores (:class:`m6rec.serving.scoring.DomainScorer`) on ``prepared`` with the shared
    protocol (split from ``metric``); users and items matched by raw id, the ones the bundle lacks score 0.

    A history scorer reads each user's history from ``prepared`` as the protocol defines it for the split (valid:
    the training items; test and cold: train + valid), not the one stored in the bundle, which may include the very
    items being evaluated; items the bundle does not know drop out of the history.
    """
    split, name, ks = parse_metric(metric)
    per: dict[str, float | None] = {}
    for d in domains:
        if d not in bundle.domains or d not in prepared.meta["per_domain"]:
            per[d] = None
            continue
        b = bundle.domains[d]
        data = domain_data(prepared, d)
        user_pos = torch.from_numpy(align_ids(b.raw_user, raw_user_ids(prepared, d)))
        item_pos = torch.from_numpy(align_ids(b.raw_item, data.items["raw_item"].astype(str).tolist()))
        miss_u, miss_i = int((user_pos < 0).sum()), int((item_pos < 0).sum())
        if miss_u or miss_i:
            log.warning("%s: bundle lacks %d of %d users and %d of %d items of the current data (scored 0)",
                        d, miss_u, len(user_pos), miss_i, len(item_pos))
        scorer = DomainScorer(b)
        history = None
        if scorer.kind == "history":  # current data's histories, in the bundle's item indices (-1: unknown)
            hist = split_histories(data, scorer.max_len)[split]
            history = torch.from_numpy(np.where(hist >= 0, item_pos.numpy()[np.clip(hist, 0, None)], -1))

        def score(batch: np.ndarray, scorer: DomainScorer = scorer, user_pos: torch.Tensor = user_pos,
                  item_pos: torch.Tensor = item_pos, history: torch.Tensor | None = history) -> torch.Tensor:
            batch = torch.as_tensor(batch, dtype=torch.int64)
            if history is not None:
                scores = scorer.histories(history[batch])
                return scores[:, item_pos.clamp_min(0)].masked_fill(item_pos.unsqueeze(0) < 0, 0.0)
            rows = user_pos[batch]
            out = torch.zeros(len(rows), len(item_pos))
            known = rows >= 0
            if known.any():
                scores = scorer.users(rows[known])[:, item_pos.clamp_min(0)]
                out[known] = scores.masked_fill(item_pos.unsqueeze(0) < 0, 0.0)
            return out

        per[d] = float(evaluate_split(score, data, split, ks=ks, batch_users=batch_users).get(name, 0.0))
    return Figure(mean_figure(per), per, "re-evaluated")


def checks_passed(summary_path: Path) -> tuple[bool, str]:
    """Whether the validate stage's summary says every check passed (missing or unreadable = not passed)."""
    if not summary_path.is_file():
        return False, f"no data-check summary at {summary_path}"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return False, f"unreadable data-check summary {summary_path}: {exc}"
    ok = summary.get("success") is True
    return ok, f"data checks {'passed' if ok else 'failed'} ({summary_path})"


def decide(candidate: float, champion: float | None, margin: float, data_ok: bool, data_note: str) -> Decision:
    """The promotion gate (pure)."""
    if not data_ok:
        return Decision(False, f"not promoted: {data_note}")
    if champion is None:
        return Decision(True, "promoted: no champion yet")
    if candidate > champion + margin:
        return Decision(True, f"promoted: {candidate:.6f} > champion {champion:.6f} + margin {margin}")
    return Decision(False, f"not promoted: {candidate:.6f} <= champion {champion:.6f} + margin {margin}")


def _champion_figure(champion: tracking.ModelVersionInfo, prepared_dir: Path, metric: str, domains: list[str],
                     data_ver: str, batch_users: int, prepared_cache: dict, settings: TrackingParams) -> Figure:
    tags = champion.tags
    if (tags.get(TAG_METRIC) == metric and tags.get(TAG_DOMAINS) == ",".join(domains)
            and tags.get(TAG_DATA) == data_ver and tags.get(TAG_VALUE) is not None):
        per = json.loads(tags.get("register.per_domain", "{}"))
        return Figure(float(tags[TAG_VALUE]), per, "tags")
    log.info("champion v%s was measured on other data/metric/domains: re-evaluating it on %s", champion.version,
             prepared_dir)
    with tempfile.TemporaryDirectory(prefix="m6rec-champion-") as tmp:
        local = tracking.download_model(champion.uri, tmp, settings=settings)
        bundle = load_bundle(local)
        return bundle_figure(bundle, _prepared(prepared_dir, prepared_cache), metric, domains, batch_users)


def _prepared(folder: Path, cache: dict) -> Prepared:
    if "p" not in cache:
        cache["p"] = load_prepared(folder)
    return cache["p"]


def run(cfg: RegisterParams, summary_path: Path, *, settings: TrackingParams) -> dict[str, Any]:
    """Register every candidate, apply the gate, move ``@champion`` if it passes; returns the report."""
    if not cfg.candidates:
        raise ConfigError("register.candidates is empty: nothing to register")
    data_dir = Path(cfg.data_dir)
    data_ver = tracking.data_version(paths=[cfg.data_dir])
    data_ok, data_note = checks_passed(summary_path)
    metas = []
    for i, c in enumerate(cfg.candidates):
        bundle_dir = Path(c["bundle"])
        if not bundle_dir.is_dir():
            raise FileNotFoundError(f"register.candidates[{i}].bundle: {bundle_dir} does not exist")
        metas.append(read_meta(bundle_dir))
    domains = list(cfg.domains) or sorted({d for m in metas for d in m["domains"]})
    prepared_cache: dict = {}

    candidates: list[Candidate] = []
    for c, meta in zip(cfg.candidates, metas, strict=True):
        model = str(meta.get("model") or Path(c["bundle"]).name)
        if meta.get("data_version") == data_ver:
            if c.get("metrics"):
                metrics, key = json.loads(Path(c["metrics"]).read_text(encoding="utf-8")), model
            else:
                metrics, key = meta.get("metrics") or {}, None
            fig = metrics_file_figure(metrics, key, cfg.metric, domains, list(meta["domains"]))
        else:
            log.info("candidate %s was built on data %s, current is %s: evaluating its bundle", c["bundle"],
                     meta.get("data_version"), data_ver)
            fig = bundle_figure(load_bundle(c["bundle"]), _prepared(data_dir, prepared_cache), cfg.metric, domains,
                                cfg.batch_users)
        candidates.append(Candidate(str(c["bundle"]), c.get("metrics"), model, fig))
        log.info("candidate %s (%s): %s = %.6f (%s)", model, c["bundle"], cfg.metric, fig.value, fig.source)

    with tracking.start_run("register", {"register": asdict(cfg)}, data_paths=[cfg.data_dir], settings=settings):
        for cand in candidates:
            cand.model_uri = tracking.log_model(cand.bundle_dir, cand.model, tags={"bundle": cand.bundle_dir})
            version = tracking.register_model(cand.model_uri, cfg.model_name, tags={
                TAG_METRIC: cfg.metric, TAG_VALUE: repr(cand.figure.value), TAG_DOMAINS: ",".join(domains),
                TAG_DATA: data_ver, "register.per_domain": json.dumps(cand.figure.per_domain),
                "model": cand.model, "bundle": cand.bundle_dir,
            }, settings=settings)
            cand.version = version.version
        best = max(candidates, key=lambda x: x.figure.value)
        champion = tracking.get_alias(cfg.model_name, tracking.CHAMPION, settings=settings)
        champ_fig = None
        if champion is not None:
            champ_fig = _champion_figure(champion, data_dir, cfg.metric, domains, data_ver, cfg.batch_users,
                                         prepared_cache, settings)
        decision = decide(best.figure.value, champ_fig.value if champ_fig else None, cfg.margin, data_ok, data_note)
        if decision.promote:
            tracking.set_alias(best.version, cfg.model_name, tracking.CHAMPION, settings=settings)
        report = {
            "decision": "promoted" if decision.promote else "kept",
            "promoted": decision.promote,
            "reason": decision.reason,
            "metric": cfg.metric, "domains": domains, "margin": cfg.margin,
            "data_dir": cfg.data_dir, "data_version": data_ver,
            "data_checks_passed": data_ok, "data_checks": data_note,
            "model_name": cfg.model_name,
            "candidate": _cand_report(best),
            "champion_before": None if champion is None else {
                "version": champion.version, "model": champion.tags.get("model"), "value": champ_fig.value,
                "per_domain": champ_fig.per_domain, "source": champ_fig.source},
            "champion_after": best.version if decision.promote else (champion.version if champion else None),
            "candidates": [_cand_report(c) for c in candidates],
        }
        report_path = Path(cfg.report)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tracking.log_metrics({"candidate": best.figure.value, "promoted": float(decision.promote),
                              **({"champion": champ_fig.value} if champ_fig else {})})
        tracking.set_tags({"decision": report["decision"], "champion_version": report["champion_after"] or ""})
        tracking.log_artifact(report_path)
    log.info("%s (candidate %s v%s; champion now v%s)", decision.reason, best.model, best.version,
             report["champion_after"])
    return report


def _cand_report(c: Candidate) -> dict[str, Any]:
    return {"model": c.model, "version": c.version, "bundle": c.bundle_dir, "metrics_file": c.metrics_file,
            "value": c.figure.value, "per_domain": c.figure.per_domain, "source": c.figure.source,
            "model_uri": c.model_uri}


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "register", RegisterParams)
    report_dir = Path((params.get("validate") or {}).get("report_dir") or "reports/validation")
    run(cfg, report_dir / "summary.json", settings=section(params, "tracking", TrackingParams))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
