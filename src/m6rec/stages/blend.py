"""Stage `blend`: per domain, a weighted sum of the candidate models' per-user z-scored scores, served as one bundle.

Reads the candidate bundles (`bundles`: bundle folders, or folders of bundles such as models/baselines/bundles/),
fits each domain's weights on the validation split only (:func:`m6rec.models.blend.fit_blend`: the best
`max_components` candidates, a simplex grid of step `step`; a mixture is kept only if its cross-fitted gain over
the best single candidate on `folds` folds of the validation users is at least `min_z` standard errors, else that
single candidate is served alone), and writes the blend's serving bundle (`bundle`, kind
``blend`` per domain; meta ``model`` = ``blend``) and `metrics` ({domain: {model: {valid, test}}}: every candidate
scored on this stage's inputs and ``blend``, with its ``weights`` and ``fit``: the best grid point, its z and
whether it was kept). The valid figures are what the fit saw; the test figures are reported only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from m6rec import registry, tracking
from m6rec.config import ProtocolParams, section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.evaluation.protocol import evaluate_split
from m6rec.model_params import BlendParams
from m6rec.models.blend import CandidateScores, blend_domain, blend_score_fn, fit_blend
from m6rec.runtime import configure as configure_runtime
from m6rec.runtime import map_tasks, task_seed, worker_count
from m6rec.serving.bundle import META_FILE
from m6rec.serving.bundle_io import export_bundle, load_bundle
from m6rec.serving.export import bundle_meta, raw_user_ids
from m6rec.stage_io import stage_params, tracking_settings, write_metrics

log = logging.getLogger(__name__)


def candidate_paths(entries: list[str] | tuple[str, ...]) -> list[Path]:
    """Bundle folders named by ``entries``: a bundle itself, or every bundle one level below a folder."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if (path / META_FILE).is_file():
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.iterdir() if (p / META_FILE).is_file())
        else:
            log.warning("blend candidate %s does not exist: skipped", path)
    return out


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "blend", BlendParams)
    protocol = section(params, "protocol", ProtocolParams)
    configure_runtime(params)
    prepared = load_prepared(cfg.in_dir)
    bundles: dict[str, object] = {}
    encoder = None
    for path in candidate_paths(cfg.bundles):
        b = load_bundle(path)
        name = str(b.meta.get("model") or path.name)
        if name in bundles:
            name = f"{b.meta.get('stage', path.parent.name)}.{name}"
        bundles[name] = b
        encoder = encoder or b.meta.get("encoder")
        log.info("blend candidate %s: %s (%s)", name, path, ", ".join(sorted(b.domains)))
    if not bundles:
        raise FileNotFoundError(f"params.yaml blend.bundles {list(cfg.bundles)}: no serving bundle found")
    have = {d for b in bundles.values() for d in b.domains}
    domains = list(cfg.domains) or [d for d in prepared.domains if d in have]
    ks, batch = protocol.ks, protocol.batch_users
    metrics: dict[str, dict] = {}
    served = {}
    resolved = {"blend": asdict(cfg), "protocol": asdict(protocol)}

    datas = {d: domain_data(prepared, d) for d in domains}

    def blend_one(d: str) -> tuple[dict, object]:
        """One domain's fit, figures and served bundle (in a worker process when runtime.workers allows)."""
        data, raw = datas[d], raw_user_ids(prepared, d)
        # Dot-product bundles carry user vectors folded in from train + valid (what the service serves), so
        # their validation scores would see the validation items: the weights are fitted on validation, so
        # only kinds scored from the split's own input (item-item, graph filter, popularity, history) enter.
        cands = {n: CandidateScores(b.domains[d], data, raw) for n, b in bundles.items()
                 if d in b.domains and b.domains[d].kind != "dot"}
        if not cands:
            raise KeyError(f"blend domain {d!r}: no candidate bundle has it")
        fit = fit_blend(cands, data, cfg.metric, cfg.max_components, cfg.step, ks, batch, cfg.folds, cfg.min_z,
                        cfg.seed)
        res = {n: {"valid": fit.candidate_results[n], "test": evaluate_split(c.score_fn("test"), data, "test", ks,
                                                                            batch)}
               for n, c in cands.items()}
        res["blend"] = {s: evaluate_split(blend_score_fn(cands, fit, s), data, s, ks, batch)
                        for s in ("valid", "test")}
        res["blend"]["weights"] = dict(zip(fit.names, fit.weights))
        res["blend"]["fit"] = {"mixture": dict(zip(fit.chosen, fit.mixture)), "accepted": fit.accepted,
                               "mixture_valid": fit.mixture_valid, "z": fit.z, "fold_gains": fit.fold_gains}
        best = max((n for n in cands), key=lambda n: res[n]["test"].get(cfg.metric, 0.0))
        log.info("%s blend test %s %.4f; best single %s %.4f", d, cfg.metric,
                 res["blend"]["test"].get(cfg.metric, 0.0), best, res[best]["test"].get(cfg.metric, 0.0))
        return res, blend_domain(cands, fit)

    order = sorted(domains, key=lambda d: -datas[d].n_users * datas[d].n_items)  # the largest first
    with tracking.start_run("blend", resolved, settings=tracking_settings(params), data_paths=[cfg.in_dir]):
        done = dict(zip(order, map_tasks(blend_one, order, worker_count(params), task_seed(params), what="domain")))
        for d in domains:
            metrics[d], served[d] = done.pop(d)
        write_metrics(cfg.metrics, metrics)
        tracking.log_metrics({d: {"blend": {s: metrics[d]["blend"][s] for s in ("valid", "test")}}
                              for d in metrics})
        tracking.log_artifact(cfg.metrics)
        meta = bundle_meta("blend", "blend", {d: metrics[d]["blend"] for d in served},
                           tracking.data_version(paths=[cfg.in_dir]), encoder=encoder,
                           blend={d: metrics[d]["blend"]["weights"] for d in served})
        export_bundle(cfg.bundle, served, meta)
        tracking.log_artifact(Path(cfg.bundle) / META_FILE)
        registry.log_bundle_model(cfg.bundle, prepared)
    log.info("blend done: %s", cfg.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
