"""Stage `register`: log candidate bundles as versions of MLflow model `m6rec`; promote the best to `@champion`.

Gate (all must hold for a promotion):

1. the data checks passed: ``<validate.report_dir>/summary.json`` has ``"success": true`` (missing = not passed);
2. the best candidate beats the current champion by more than ``margin`` on the declared metric (e.g.
   ``valid.ndcg@20``) averaged over the declared domains, both figures **on the same validation data**; a missing
   champion counts as beaten.

Figures: a candidate's comes from its bundle's own ``meta["metrics"]`` (the metrics files' schema, ``{domain: {model:
{split: {metric: v}}}}``, model = ``meta["model"]``; older bundles' ``{domain: {split: ...}}`` is read too, see
:func:`m6rec.serving.bundle.meta_metrics`) when its bundle's ``meta["data_version"]`` is the current version of
``data_dir`` and the meta records metrics, else the bundle is evaluated on the current data. A candidate's
``metrics`` file is accepted for compatibility and reported, not read: the bundle carries the same figures.

The champion's comes from its version tags (``register.metric``, ``register.metric_value``, ``register.domains``,
``register.data_version``) when metric, domains and data version match, else its bundle is downloaded from the
registry and evaluated on the current data through the shared protocol (:class:`m6rec.promotion.BundleModel`: the
bundle's own scores, users and items matched to the current data by raw id, ids the bundle lacks score 0). A domain
a bundle does not serve counts as 0. Figures and decision: :mod:`m6rec.promotion`.

Before any evaluation the store is checked (:func:`m6rec.decision_log.check_registry`: reachable, and present with
the model wherever ``decision_log`` records a champion there, unless ``init_registry``), so a dead server or a lost
registry fails in seconds and promotes nothing. Each version is tagged ``bundle.sha256``
(:func:`m6rec.serving.bundle_io.content_hash`), which the service checks before serving it.

Writes ``report`` (reports/promotion.json: decision, both figures, versions), logs it to the MLflow run, and
appends the decision to ``decision_log`` (reports/promotions.jsonl, which DVC never removes).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from m6rec import decision_log, tracking
from m6rec.config import ConfigError, ProtocolParams, RegisterParams, TrackingParams, section
from m6rec.data.dataset import Prepared, load_prepared
from m6rec.promotion import Candidate, Figure, bundle_figure, candidate_report, checks_passed, decide, recorded_figure
from m6rec.serving.bundle_io import HASH_TAG, content_hash, load_bundle, read_meta
from m6rec.stage_io import stage_params, tracking_settings, write_text

log = logging.getLogger(__name__)

TAG_METRIC, TAG_VALUE, TAG_DOMAINS, TAG_DATA = ("register.metric", "register.metric_value", "register.domains",
                                               "register.data_version")
TAG_HASH = HASH_TAG  # content hash of the registered bundle files; the service refuses a mismatch


def _champion_figure(champion: tracking.ModelVersionInfo, prepared_dir: Path, metric: str, domains: list[str],
                     data_ver: str, protocol: ProtocolParams, prepared_cache: dict, settings: TrackingParams
                     ) -> Figure:
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
        return bundle_figure(bundle, _prepared(prepared_dir, prepared_cache), metric, domains, protocol)


def _prepared(folder: Path, cache: dict) -> Prepared:
    if "p" not in cache:
        cache["p"] = load_prepared(folder)
    return cache["p"]


def run(cfg: RegisterParams, summary_path: Path, *, settings: TrackingParams,
        protocol: ProtocolParams = ProtocolParams()) -> dict[str, Any]:
    """Register every candidate, apply the gate, move ``@champion`` if it passes; returns the report."""
    if not cfg.candidates:
        raise ConfigError("register.candidates is empty: nothing to register")
    store = decision_log.check_registry(cfg, settings)  # seconds, before minutes of evaluation
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
        fig = recorded_figure(meta, cfg.metric, domains) if meta.get("data_version") == data_ver else None
        if fig is None:
            why = (f"was built on data {meta.get('data_version')}, current is {data_ver}"
                   if meta.get("data_version") != data_ver else "records no metrics")
            log.info("candidate %s %s: evaluating its bundle", c["bundle"], why)
            fig = bundle_figure(load_bundle(c["bundle"]), _prepared(data_dir, prepared_cache), cfg.metric, domains,
                                protocol)
        candidates.append(Candidate(str(c["bundle"]), c.get("metrics"), model, fig))
        log.info("candidate %s (%s): %s = %.6f (%s)", model, c["bundle"], cfg.metric, fig.value, fig.source)

    with tracking.start_run("register", {"register": asdict(cfg)}, data_paths=[cfg.data_dir], settings=settings):
        for cand in candidates:
            cand.model_uri = tracking.log_model(cand.bundle_dir, cand.model, tags={"bundle": cand.bundle_dir})
            version = tracking.register_model(cand.model_uri, cfg.model_name, tags={
                TAG_METRIC: cfg.metric, TAG_VALUE: repr(cand.figure.value), TAG_DOMAINS: ",".join(domains),
                TAG_DATA: data_ver, "register.per_domain": json.dumps(cand.figure.per_domain),
                "model": cand.model, "bundle": cand.bundle_dir, TAG_HASH: content_hash(cand.bundle_dir),
            }, settings=settings)
            cand.version = version.version
        best = max(candidates, key=lambda x: x.figure.value)
        champion = tracking.get_alias(cfg.model_name, tracking.CHAMPION, settings=settings)
        champ_fig = None
        if champion is not None:
            champ_fig = _champion_figure(champion, data_dir, cfg.metric, domains, data_ver, protocol,
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
            "candidate": candidate_report(best),
            "champion_before": None if champion is None else {
                "version": champion.version, "model": champion.tags.get("model"), "value": champ_fig.value,
                "per_domain": champ_fig.per_domain, "source": champ_fig.source},
            "champion_after": best.version if decision.promote else (champion.version if champion else None),
            "candidates": [candidate_report(c) for c in candidates],
        }
        report_path = write_text(cfg.report, json.dumps(report, indent=2) + "\n")
        decision_log.append(cfg.decision_log, {
            "store": store, "model_name": cfg.model_name, "decision": report["decision"],
            "reason": report["reason"], "candidate": {k: report["candidate"][k] for k in ("model", "version", "value")},
            "champion_before": champion.version if champion else None, "champion_after": report["champion_after"],
            "metric": cfg.metric, "data_version": data_ver})
        tracking.log_metrics({"candidate": best.figure.value, "promoted": float(decision.promote),
                              **({"champion": champ_fig.value} if champ_fig else {})})
        tracking.set_tags({"decision": report["decision"], "champion_version": report["champion_after"] or ""})
        tracking.log_artifact(report_path)
    log.info("%s (candidate %s v%s; champion now v%s)", decision.reason, best.model, best.version,
             report["champion_after"])
    return report


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "register", RegisterParams)
    protocol = section(params, "protocol", ProtocolParams) if "protocol" in params else ProtocolParams()
    report_dir = Path((params.get("validate") or {}).get("report_dir") or "reports/validation")
    settings = tracking_settings(params)
    try:
        run(cfg, report_dir / "summary.json", settings=settings, protocol=protocol)
    except (decision_log.RegistryError, tracking.StoreError) as exc:
        decision_log.append(cfg.decision_log, {"store": tracking.tracking_uri(settings), "model_name": cfg.model_name,
                                               "decision": "refused", "reason": str(exc), "champion_after": None})
        log.error("register refused, nothing promoted: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
