"""The champion gate's figures and decision (the `register` stage's work apart from the registry itself).

A model's figure is the declared metric (e.g. ``valid.ndcg@20``) averaged over the declared domains, on the
current validation data: read from a bundle's own recorded metrics when they refer to that data, else measured by
re-evaluating the bundle through the shared protocol (:class:`BundleModel`). The decision is pure
(:func:`decide`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m6rec.config import ProtocolParams, parse_metric
from m6rec.data.dataset import DomainData, Prepared, domain_data
from m6rec.evaluation.protocol import evaluate
from m6rec.serving.bundle import Bundle, DomainBundle, meta_metrics
from m6rec.serving.export import raw_user_ids
from m6rec.serving.scoring import DomainScorer

log = logging.getLogger(__name__)


@dataclass
class Figure:
    """A model's figure on the declared metric: the mean and the per-domain values, and where it came from."""

    value: float
    per_domain: dict[str, float | None]
    source: str  # "bundle-meta", "tags" or "re-evaluated"


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


def mean_figure(per_domain: Mapping[str, float | None]) -> float:
    """Mean over the declared domains; a domain without a figure counts as 0."""
    if not per_domain:
        raise ValueError("no domains to average over")
    return float(np.mean([0.0 if v is None else float(v) for v in per_domain.values()]))


def recorded_figure(meta: Mapping[str, Any], metric: str, domains: Sequence[str]) -> Figure | None:
    """The figure a bundle's meta records for its own model (None when it records no metrics at all).

    Domains the bundle does not serve count as 0; a served domain missing from the metrics is an error (the stage
    that made the candidate must report what it exports).
    """
    metrics = meta_metrics(meta)
    if not metrics:
        return None
    model, served = str(meta.get("model") or "model"), list(meta.get("domains") or ())
    split, name, _ = parse_metric(metric)
    per: dict[str, float | None] = {}
    for d in domains:
        if d not in served:
            per[d] = None
            continue
        try:
            per[d] = float(metrics[d][model][split][name])
        except (KeyError, TypeError) as exc:
            raise KeyError(f"bundle meta of model {model!r} records no metrics {d}.{model}.{split}.{name}") from exc
    return Figure(mean_figure(per), per, "bundle-meta")


def align_ids(src_ids: Sequence[str], dst_ids: Sequence[str]) -> np.ndarray:
    """Position in ``src_ids`` of each of ``dst_ids`` (-1 where absent)."""
    pos = {s: i for i, s in enumerate(src_ids)}
    return np.array([pos.get(str(d), -1) for d in dst_ids], dtype=np.int64)


class BundleModel:
    """One domain of a serving bundle as a model of the contract (:mod:`m6rec.models.base`) on data that may have
    changed since it was exported: users and items matched by raw id, those the bundle lacks score 0.

    A history scorer reads the history the protocol builds for the split (valid: the training items; test and
    cold: train + valid), mapped into the bundle's item indices, not the one stored in the bundle (which may
    include the very items being evaluated); items the bundle does not know drop out of the history.
    """

    name = "bundle"

    def __init__(self, b: DomainBundle, data: DomainData, raw_user: Sequence[str]) -> None:
        self.domain = data.name
        self.scorer = DomainScorer(b)
        self.history_len = self.scorer.max_len
        self.user_pos = torch.from_numpy(align_ids(b.raw_user, raw_user))
        self.item_pos = torch.from_numpy(align_ids(b.raw_item, data.items["raw_item"].astype(str).tolist()))
        miss_u, miss_i = int((self.user_pos < 0).sum()), int((self.item_pos < 0).sum())
        if miss_u or miss_i:
            log.warning("%s: bundle lacks %d of %d users and %d of %d items of the current data (scored 0)",
                        data.name, miss_u, len(self.user_pos), miss_i, len(self.item_pos))

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        if domain != self.domain:
            raise KeyError(f"this bundle model scores domain '{self.domain}', not '{domain}'")
        items, unknown = self.item_pos.clamp_min(0), self.item_pos.unsqueeze(0) < 0
        if history is not None:
            hist = np.where(history >= 0, self.item_pos.numpy()[np.clip(history, 0, None)], -1)
            return self.scorer.histories(torch.from_numpy(hist))[:, items].masked_fill(unknown, 0.0)
        rows = self.user_pos[torch.as_tensor(users, dtype=torch.int64)]
        out = torch.zeros(len(rows), len(self.item_pos))
        known = rows >= 0
        if known.any():
            out[known] = self.scorer.users(rows[known])[:, items].masked_fill(unknown, 0.0)
        return out

    def export(self, domain: str):
        raise TypeError("a bundle model is already an export: serve the bundle itself")


def bundle_figure(bundle: Bundle, prepared: Prepared, metric: str, domains: Sequence[str],
                  protocol: ProtocolParams = ProtocolParams()) -> Figure:
    """Evaluate a bundle's own scores on ``prepared`` with the shared protocol (split from ``metric``)."""
    split, name, ks = parse_metric(metric)
    protocol = replace(protocol, ks=ks)
    per: dict[str, float | None] = {}
    for d in domains:
        if d not in bundle.domains or d not in prepared.meta["per_domain"]:
            per[d] = None
            continue
        data = domain_data(prepared, d)
        model = BundleModel(bundle.domains[d], data, raw_user_ids(prepared, d))
        per[d] = float(evaluate(model, data, split, protocol).get(name, 0.0))
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


def candidate_report(c: Candidate) -> dict[str, Any]:
    return {"model": c.model, "version": c.version, "bundle": c.bundle_dir, "metrics_file": c.metrics_file,
            "value": c.figure.value, "per_domain": c.figure.per_domain, "source": c.figure.source,
            "model_uri": c.model_uri}
