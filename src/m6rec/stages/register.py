"""Stage `register`: candidate bundles -> versions of MLflow model `m6rec`; one champion per domain; `@champion`
serves each domain's own champion.

Candidates (``register.candidates``): bundle folders or globs (``models/baselines/bundles/*``), resolved by
:func:`m6rec.promotion.resolve_candidates`; a missing one is an error unless marked ``optional``. Each becomes a
registered version: the model its training run logged (``runs:/<training run id>/model``, found by the bundle's
``bundle.sha256``, :func:`m6rec.registry.log_bundle_model`), so a version leads to that run's params and curves;
a bundle no run logged is logged by this stage's run instead (and says so). A bundle already registered (same
hash) reuses its version.

Gate, per domain ``d`` of ``register.domains`` ([] = every domain of any candidate), on ``d``'s validation data:

1. the data checks passed (``<validate.report_dir>/summary.json`` has ``"success": true``; missing = not passed),
   else nothing is promoted and every alias stays as it was;
2. ``d`` has no champion (alias ``champion-<d>``): the best candidate on ``d`` is promoted;
3. else the best candidate on ``d`` replaces the champion only if better on ``d`` by more than ``margin``. A model
   worse on ``d`` never replaces ``d``'s champion, whatever it does elsewhere.

Figures: a candidate's from its bundle's ``meta["metrics"]`` when ``meta["data_version"]`` is the current version of
``data_dir``, else the bundle's domain is re-evaluated through the shared protocol. A champion's from its version's
tags (``register.metric``, ``register.data_version``, ``register.figures``) when they match, else its bundle is
downloaded and re-evaluated (:class:`m6rec.promotion.BundleModel`).

Served model: alias ``champion`` points to a *composed* version whose bundle holds, per domain, the domain bundle of
that domain's champion (copied through :mod:`m6rec.serving.bundle_io`, never re-scored), tagged with its lineage
(``lineage.<domain>.version`` / ``.run_id`` / ``.model``). A new one is composed only when some domain's champion
changed (or ``@champion`` does not match the domain champions, e.g. a registry from before per-domain champions:
its single champion then counts as the champion of every domain it serves until one is promoted).

Before any evaluation the store is checked (:func:`m6rec.decision_log.check_registry`). Writes ``report``
(reports/promotion.json: per domain the candidates' figures, champion before and after, decision and reason; the
same inputs give the same bytes: no run ids, times or absolute paths), logs it to the MLflow run, and appends the
decision with the store and run to ``decision_log`` (reports/promotions.jsonl).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m6rec import decision_log, registry, tracking
from m6rec.config import ConfigError, ProtocolParams, RegisterParams, TrackingParams, section
from m6rec.data.dataset import Prepared, load_prepared
from m6rec.promotion import (
    checks_passed,
    decide_domain,
    domain_figure,
    recorded_figures,
    relative,
    resolve_candidates,
)
from m6rec.serving.bundle import Bundle, DomainBundle, meta_metrics
from m6rec.serving.bundle_io import HASH_TAG, content_hash, export_bundle, load_bundle, read_meta
from m6rec.serving.bundle_scorers import BundleError
from m6rec.stage_io import stage_params, tracking_settings, write_text

log = logging.getLogger(__name__)

TAG_METRIC, TAG_FIGURES, TAG_DATA = "register.metric", "register.figures", "register.data_version"
TAG_HASH = HASH_TAG  # content hash of the registered bundle files; the service refuses a mismatch
TAG_COMPOSED = "composed"  # "true" on the served versions made by this stage
TAG_LOGGED_BY = "logged_by"  # "training run" or "register run"
COMPOSED_MODEL = "champions"  # meta["model"] of a composed bundle


@dataclass
class Candidate:
    bundle: str  # folder, relative to the project
    model: str
    digest: str
    figures: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # domain -> "bundle-meta" | "re-evaluated"
    version: registry.ModelVersionInfo | None = None


class _Data:
    """The validation data, loaded on first use (only re-evaluation needs it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._p: Prepared | None = None

    def get(self) -> Prepared:
        if self._p is None:
            self._p = load_prepared(self.folder)
        return self._p


def domain_alias(domain: str) -> str:
    return registry.DOMAIN_CHAMPION.format(domain=domain)


def _figures_tag(version: registry.ModelVersionInfo, metric: str, data_ver: str) -> dict[str, float]:
    tags = version.tags
    if tags.get(TAG_METRIC) != metric or tags.get(TAG_DATA) != data_ver:
        return {}
    try:
        return {str(d): float(v) for d, v in json.loads(tags.get(TAG_FIGURES) or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def _register(cand: Candidate, cfg: RegisterParams, settings: TrackingParams, known: dict[str, Any]
              ) -> registry.ModelVersionInfo:
    """The version of ``cand``'s bundle: reused by hash, else registered from its training run (or this run)."""
    if cand.digest in known:
        return known[cand.digest]
    found = registry.find_logged_model(cand.digest, settings=settings)
    if found is not None:
        uri, logged_by = found[0], "training run"
    else:
        log.warning("%s: no training run logged this bundle (registry.log_bundle_model): logging it from the "
                    "register run, so its version has no link to the run that trained it", cand.bundle)
        uri, logged_by = registry.log_model(cand.bundle, "model", tags={"bundle": cand.bundle}), "register run"
    version = registry.register_model(uri, cfg.model_name, tags={
        "model": cand.model, "bundle": cand.bundle, TAG_HASH: cand.digest, TAG_LOGGED_BY: logged_by},
        settings=settings)
    known[cand.digest] = version
    return version


def _local_bundle(version: registry.ModelVersionInfo, candidates: list[Candidate], tmp: Path,
                  settings: TrackingParams) -> Path:
    """A local copy of ``version``'s bundle: a candidate folder with the same hash, else downloaded."""
    for c in candidates:
        if c.digest == version.tags.get(TAG_HASH):
            return Path(c.bundle)
    dst = tmp / f"v{version.version}"
    if not dst.exists():
        registry.download_model(version.uri, dst, settings=settings)
    return registry.bundle_root(dst)


def _champion_figure(version: registry.ModelVersionInfo, domain: str, cfg: RegisterParams, data_ver: str,
                     candidates: list[Candidate], data: _Data, tmp: Path, protocol: ProtocolParams,
                     settings: TrackingParams) -> tuple[float | None, str]:
    for c in candidates:  # the champion is a candidate's bundle: the same figure, measured once
        if c.digest == version.tags.get(TAG_HASH) and domain in c.figures:
            return c.figures[domain], c.sources[domain]
    tagged = _figures_tag(version, cfg.metric, data_ver)
    if domain in tagged:
        return tagged[domain], "tags"
    log.info("champion of %s (v%s) was measured on other data or metric: re-evaluating it", domain, version.version)
    local = _local_bundle(version, candidates, tmp, settings)
    if domain not in read_meta(local).get("domains", {}):
        return None, "not served"
    return domain_figure(load_bundle(local, [domain]), data.get(), cfg.metric, domain, protocol), "re-evaluated"


def _serves(version: registry.ModelVersionInfo, candidates: list[Candidate], tmp: Path,
            settings: TrackingParams) -> list[str]:
    return list(read_meta(_local_bundle(version, candidates, tmp, settings)).get("domains", {}))


def compose(sources: Mapping[str, tuple[registry.ModelVersionInfo, Path]], out: Path, data_ver: str) -> Path:
    """Write the served bundle at ``out``: per domain, that domain's bundle from the champion's bundle folder
    (loaded and written by :mod:`m6rec.serving.bundle_io`, arrays untouched), with the champion's recorded metrics
    filed under :data:`COMPOSED_MODEL` and the lineage in ``meta["sources"]``."""
    domains: dict[str, DomainBundle] = {}
    metrics: dict[str, Any] = {}
    encoders: dict[str, tuple[str, Any]] = {}
    explainers: dict[str, str] = {}
    for d, (version, path) in sorted(sources.items()):
        b: Bundle = load_bundle(path, [d])
        domains[d] = b.domains[d]
        model = str(b.meta.get("model") or "model")
        by_model = meta_metrics(b.meta).get(d, {})
        if model in by_model:
            metrics[d] = {COMPOSED_MODEL: by_model[model]}
        if b.domains[d].text_projection is not None:
            encoders[d] = (b.meta.get("encoder"), b.meta.get("encoder_max_seq_length"))
        explainers[d] = str(b.meta.get("explainer") or "similarity")
    if len({e for e, _ in encoders.values()}) > 1:
        raise BundleError(f"the domain champions use different sentence encoders ({encoders}): one served bundle "
                          f"has one encoder; re-export them with the same text_embeddings.encoder")
    if len(set(explainers.values())) > 1:
        raise BundleError(f"the domain champions name different explainers ({explainers}): one served bundle has "
                          f"one explainer")
    meta: dict[str, Any] = {
        "model": COMPOSED_MODEL, "stage": "register", "data_version": data_ver, "metrics": metrics,
        "sources": {d: {"version": v.version, "model": v.tags.get("model")} for d, (v, _) in sorted(sources.items())},
    }
    if encoders:
        meta["encoder"], meta["encoder_max_seq_length"] = next(iter(encoders.values()))
    if set(explainers.values()) - {"similarity"}:
        meta["explainer"] = next(iter(explainers.values()))
    return export_bundle(out, domains, meta)


def _lineage_tags(sources: Mapping[str, registry.ModelVersionInfo]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for d, v in sorted(sources.items()):
        tags[f"lineage.{d}.version"] = v.version
        tags[f"lineage.{d}.run_id"] = v.run_id or ""
        tags[f"lineage.{d}.model"] = v.tags.get("model", "")
    return tags


def _lineage(version: registry.ModelVersionInfo | None) -> dict[str, str]:
    if version is None or version.tags.get(TAG_COMPOSED) != "true":
        return {}
    return {k[len("lineage."):-len(".version")]: v for k, v in version.tags.items()
            if k.startswith("lineage.") and k.endswith(".version")}


def _brief(version: registry.ModelVersionInfo | None, value: float | None = None, source: str | None = None
           ) -> dict[str, Any] | None:
    if version is None:
        return None
    out: dict[str, Any] = {"version": version.version, "model": version.tags.get("model"),
                           "bundle_sha256": version.tags.get(TAG_HASH)}
    if value is not None:
        out.update(value=value, source=source)
    return out


def run(cfg: RegisterParams, summary_path: Path, *, settings: TrackingParams,
        protocol: ProtocolParams = ProtocolParams()) -> dict[str, Any]:
    """Register every candidate, gate each domain, move ``champion-<domain>`` aliases and compose ``@champion``
    when one moved; returns the report."""
    if not cfg.candidates:
        raise ConfigError("register.candidates is empty: nothing to register")
    paths = resolve_candidates(cfg.candidates)
    if not paths:
        raise ConfigError(f"register.candidates {list(cfg.candidates)} name no bundle (all optional and absent)")
    store = decision_log.check_registry(cfg, settings)  # seconds, before minutes of evaluation
    data = _Data(Path(cfg.data_dir))
    data_ver = tracking.data_version(paths=[cfg.data_dir])
    data_ok, data_note = checks_passed(summary_path)

    candidates: list[Candidate] = []
    for p in paths:
        meta = read_meta(p.bundle)
        candidates.append(Candidate(relative(p.bundle), str(meta.get("model") or Path(p.bundle).name),
                                    content_hash(p.bundle)))
    metas = [read_meta(c.bundle) for c in candidates]
    domains = list(cfg.domains) or sorted({d for m in metas for d in m.get("domains", {})})
    for c, meta in zip(candidates, metas, strict=True):
        served = [d for d in domains if d in meta.get("domains", {})]
        recorded = recorded_figures(meta, cfg.metric, served) if meta.get("data_version") == data_ver else {}
        missing = [d for d in served if d not in recorded]
        if missing:
            why = (f"was built on data {meta.get('data_version')}, current is {data_ver}"
                   if meta.get("data_version") != data_ver else "records no figure for them")
            log.info("candidate %s %s: evaluating its domains %s", c.bundle, why, missing)
            bundle = load_bundle(c.bundle, missing)
            for d in missing:
                recorded[d] = domain_figure(bundle, data.get(), cfg.metric, d, protocol)
                c.sources[d] = "re-evaluated"
        c.figures = {d: recorded[d] for d in served if recorded.get(d) is not None}
        c.sources = {d: c.sources.get(d, "bundle-meta") for d in c.figures}
        log.info("candidate %s (%s): %s", c.model, c.bundle, ", ".join(f"{d} {v:.6f}" for d, v in c.figures.items()))

    with tracking.start_run("register", {"register": asdict(cfg)}, data_paths=[cfg.data_dir], settings=settings) \
            as run_id, tempfile.TemporaryDirectory(prefix="m6rec-register-") as tmp_dir:
        tmp = Path(tmp_dir)
        known = {v.tags[TAG_HASH]: v for v in registry.versions(cfg.model_name, settings=settings)
                 if v.tags.get(TAG_HASH) and v.tags.get(TAG_COMPOSED) != "true"}
        for c in candidates:
            c.version = _register(c, cfg, settings, known)
            registry.set_version_tags(cfg.model_name, c.version.version, {
                TAG_METRIC: cfg.metric, TAG_DATA: data_ver, TAG_FIGURES: json.dumps(c.figures, sort_keys=True)},
                settings=settings)
        aliases = registry.aliases(cfg.model_name, settings=settings)
        served_before = (registry.get_version(cfg.model_name, aliases[registry.CHAMPION], settings=settings)
                         if registry.CHAMPION in aliases else None)
        legacy = served_before if served_before is not None and not _lineage(served_before) else None
        legacy_domains = _serves(legacy, candidates, tmp, settings) if legacy is not None else []
        if legacy is not None:
            log.info("@champion v%s is a single model from before per-domain champions: it counts as the champion "
                     "of %s until one is promoted there", legacy.version, legacy_domains)

        per_domain: dict[str, Any] = {}
        after: dict[str, registry.ModelVersionInfo] = {}
        promoted: list[str] = []
        for d in domains:
            champ = None
            if domain_alias(d) in aliases:
                champ = registry.get_version(cfg.model_name, aliases[domain_alias(d)], settings=settings)
            elif legacy is not None and d in legacy_domains:
                champ = legacy
            champ_value, champ_source = None, None
            if champ is not None:
                champ_value, champ_source = _champion_figure(champ, d, cfg, data_ver, candidates, data, tmp,
                                                             protocol, settings)
            index = next((i for i, c in enumerate(candidates) if champ is not None
                          and c.version.version == champ.version), None)
            decision = decide_domain(d, [c.figures.get(d) for c in candidates],
                                     champ_value if champ is not None else None, cfg.margin, data_ok, data_note,
                                     index)
            new = candidates[decision.winner].version if decision.promote else champ
            if new is not None:
                after[d] = new
            if decision.promote:
                promoted.append(d)
            per_domain[d] = {
                "candidates": [{"bundle": c.bundle, "model": c.model, "value": c.figures[d], "source": c.sources[d]}
                               for c in candidates if d in c.figures],
                "champion_before": _brief(champ, champ_value, champ_source),
                "decision": "promoted" if decision.promote else "kept",
                "reason": decision.reason,
                "champion_after": _brief(new),
            }
            log.info("%s: %s", d, decision.reason)

        served_after, composed = served_before, False
        if data_ok:
            for d in promoted:
                registry.set_alias(after[d].version, cfg.model_name, domain_alias(d), settings=settings)
            for d, v in after.items():  # a legacy champion kept on a domain becomes that domain's champion
                if domain_alias(d) not in aliases:
                    registry.set_alias(v.version, cfg.model_name, domain_alias(d), settings=settings)
            # Every domain champion is served, not only the domains gated this time.
            current = registry.aliases(cfg.model_name, settings=settings)
            champions = {a[len("champion-"):]: v for a, v in current.items() if a.startswith("champion-")}
            lineage = _lineage(served_before)
            if champions and lineage != champions:
                sources = {d: registry.get_version(cfg.model_name, v, settings=settings)
                           for d, v in champions.items()}
                bundle = compose({d: (v, _local_bundle(v, candidates, tmp, settings)) for d, v in sources.items()},
                                 tmp / "composed" / "bundle", data_ver)
                uri = registry.log_model(bundle, "champion", tags={"composed": "true"})
                served_after = registry.register_model(uri, cfg.model_name, tags={
                    "model": COMPOSED_MODEL, TAG_COMPOSED: "true", TAG_HASH: content_hash(bundle),
                    TAG_LOGGED_BY: "register run", **_lineage_tags(sources)}, settings=settings)
                registry.set_alias(served_after.version, cfg.model_name, registry.CHAMPION, settings=settings)
                composed = True

        report = {
            "decision": "promoted" if promoted else "kept",
            "promoted": bool(promoted),
            "promoted_domains": promoted,
            "reason": (f"promoted on {', '.join(promoted)}" if promoted else
                       f"nothing promoted: {data_note}" if not data_ok else "nothing promoted: no domain improved"),
            "metric": cfg.metric, "margin": cfg.margin, "model_name": cfg.model_name,
            "data_dir": relative(cfg.data_dir), "data_version": data_ver,
            "data_checks_passed": data_ok, "data_checks": data_note,
            "candidates": [{"bundle": c.bundle, "model": c.model, "version": c.version.version,
                            "bundle_sha256": c.digest, "logged_by": c.version.tags.get(TAG_LOGGED_BY),
                            "figures": c.figures} for c in candidates],
            "domains": per_domain,
            "served": {
                "composed": composed,
                "version_before": served_before.version if served_before else None,
                "version_after": served_after.version if served_after else None,
                "domains": dict(sorted(_lineage(served_after).items())),  # which version serves each domain
            },
            "champion_after": served_after.version if served_after else None,
        }
        report_path = write_text(cfg.report, json.dumps(report, indent=2, sort_keys=False) + "\n")
        decision_log.append(cfg.decision_log, {
            "store": store, "model_name": cfg.model_name, "run_id": run_id, "decision": report["decision"],
            "reason": report["reason"], "promoted_domains": promoted,
            "domains": {d: {"decision": r["decision"], "before": (r["champion_before"] or {}).get("version"),
                            "after": (r["champion_after"] or {}).get("version")} for d, r in per_domain.items()},
            "champion_before": served_before.version if served_before else None,
            "champion_after": report["champion_after"], "metric": cfg.metric, "data_version": data_ver})
        tracking.log_metrics({f"{d}.promoted": float(d in promoted) for d in domains})
        tracking.set_tags({"decision": report["decision"], "champion_version": report["champion_after"] or "",
                           "promoted_domains": ",".join(promoted)})
        tracking.log_artifact(report_path)
    log.info("%s; @champion is v%s%s", report["reason"], report["champion_after"],
             " (newly composed)" if composed else "")
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
