"""The champion gate's figures and decisions, per domain (the `register` stage's work apart from the registry).

Every domain has its own champion. A model's figure on a domain is the declared metric (e.g. ``valid.ndcg@20``)
on that domain's current validation data: read from a bundle's own recorded metrics when they refer to that data,
else measured by re-evaluating the bundle's domain through the shared protocol (:class:`BundleModel`). The decision
for a domain is pure (:func:`decide_domain`); which bundle paths are candidates is :func:`resolve_candidates`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.config import ProtocolParams, parse_metric
from m6rec.data.dataset import DomainData, Prepared, domain_data
from m6rec.data.sequences import split_histories
from m6rec.evaluation.protocol import evaluate
from m6rec.serving.bundle import META_FILE, Bundle, DomainBundle, meta_metrics
from m6rec.serving.export import raw_user_ids
from m6rec.serving.scoring import DomainScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidatePath:
    """One resolved candidate: a bundle folder and the params entry it came from."""

    bundle: str
    entry: str


@dataclass
class Decision:
    """A domain's verdict: ``winner`` (index of the winning candidate) when the domain's champion changes."""

    promote: bool
    reason: str
    winner: int | None = None


_GLOB = re.compile(r"[*?\[]")


def resolve_candidates(entries: Sequence[str | Mapping[str, Any]], root: str | Path = ".") -> list[CandidatePath]:
    """``register.candidates`` -> bundle folders, in the order given (a glob's matches sorted), each once.

    An entry is a folder or a glob (``models/baselines/bundles/*``; only folders holding a ``bundle.json``
    match), or ``{bundle: ..., optional: true}``. A non-optional entry that names no bundle is an error naming it.
    """
    root = Path(root)
    out: list[CandidatePath] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        pattern, optional = (entry, False) if isinstance(entry, str) else (entry["bundle"], entry.get("optional", False))
        if _GLOB.search(pattern):
            found = sorted(p for p in glob.glob(pattern, root_dir=root) if (root / p / META_FILE).is_file())
        else:
            found = [pattern] if (root / pattern / META_FILE).is_file() else []
        if not found:
            if optional:
                log.info("register.candidates[%d] %s: no bundle there (optional, skipped)", i, pattern)
                continue
            what = "matches no bundle folder" if _GLOB.search(pattern) else "is not a bundle folder (no bundle.json)"
            raise FileNotFoundError(f"register.candidates[{i}]: {pattern} {what}; build it first or mark it "
                                    f"{{bundle: {pattern}, optional: true}}")
        for path in found:
            if path not in seen:
                seen.add(path)
                out.append(CandidatePath(path, pattern))
    return out


def recorded_figures(meta: Mapping[str, Any], metric: str, domains: Sequence[str]) -> dict[str, float]:
    """The figures a bundle's meta records for its own model on each of ``domains`` it serves and has metrics for
    (a served domain without a recorded figure is left out: the caller re-evaluates it)."""
    metrics = meta_metrics(meta)
    model, served = str(meta.get("model") or "model"), list(meta.get("domains") or ())
    split, name, _ = parse_metric(metric)
    out: dict[str, float] = {}
    for d in domains:
        if d not in served or d not in metrics:
            continue
        by_model = metrics[d]
        results = by_model.get(model, next(iter(by_model.values())) if len(by_model) == 1 else None)
        try:
            out[d] = float(results[split][name])
        except (KeyError, TypeError):
            continue
    return out


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
        # Row scorers (item-item, graph filter, popularity) and blends score the input the protocol allows, built
        # from the current data, never the bundle's stored train + valid rows (which hold the validation items).
        self.composite = bool(self.scorer.components) or self.scorer.row_scorer is not None
        if self.composite:
            self.history_len = 0  # the protocol then passes train + valid rows at test/cold, None at valid
            self.data = data
            keep = np.flatnonzero(self.item_pos.numpy() >= 0)
            self.to_bundle = sp.csr_matrix((np.ones(len(keep), np.float32), (keep, self.item_pos.numpy()[keep])),
                                           shape=(len(self.item_pos), b.n_items))
            lens = [c.max_len for c in self._leaves(self.scorer)]
            self.sequences = split_histories(data, max(lens)) if max(lens) else None
        miss_u, miss_i = int((self.user_pos < 0).sum()), int((self.item_pos < 0).sum())
        if miss_u or miss_i:
            log.warning("%s: bundle lacks %d of %d users and %d of %d items of the current data (scored 0)",
                        data.name, miss_u, len(self.user_pos), miss_i, len(self.item_pos))

    def full_scores(self, domain: str, users: np.ndarray, history: np.ndarray | None = None) -> torch.Tensor:
        if domain != self.domain:
            raise KeyError(f"this bundle model scores domain '{self.domain}', not '{domain}'")
        items, unknown = self.item_pos.clamp_min(0), self.item_pos.unsqueeze(0) < 0
        if self.composite:
            return self._composite(self.scorer, np.asarray(users, dtype=np.int64), history)[:, items].masked_fill(
                unknown, 0.0)
        if history is not None:
            hist = np.where(history >= 0, self.item_pos.numpy()[np.clip(history, 0, None)], -1)
            return self.scorer.histories(torch.from_numpy(hist))[:, items].masked_fill(unknown, 0.0)
        rows = self.user_pos[torch.as_tensor(users, dtype=torch.int64)]
        out = torch.zeros(len(rows), len(self.item_pos))
        known = rows >= 0
        if known.any():
            out[known] = self.scorer.users(rows[known])[:, items].masked_fill(unknown, 0.0)
        return out

    @staticmethod
    def _leaves(scorer: DomainScorer) -> list[DomainScorer]:
        return [x for c in scorer.components for x in BundleModel._leaves(c)] if scorer.components else [scorer]

    def _composite(self, scorer: DomainScorer, users: np.ndarray, rows: sp.csr_matrix | None) -> torch.Tensor:
        """Scores in the bundle's item space of a row scorer or a blend, from the protocol's input: ``rows``
        (train + valid at test and cold) or, when None, the training rows; a blend's history components get the
        matching item sequences and its dot components their stored user vectors."""
        if scorer.components:
            return scorer.combine([self._composite(c, users, rows) for c in scorer.components])
        if scorer.row_scorer is not None:
            src = self.data.train[users] if rows is None else sp.csr_matrix(rows)
            return scorer.rows((src @ self.to_bundle).tocsr())
        if scorer.max_len:
            hist = self.sequences["valid" if rows is None else "test"][users][:, -scorer.max_len:]
            hist = np.where(hist >= 0, self.item_pos.numpy()[np.clip(hist, 0, None)], -1)
            return scorer.histories(torch.from_numpy(hist))
        pos = self.user_pos[torch.from_numpy(users)]
        out = torch.zeros(len(pos), scorer.items.shape[0])
        if (pos >= 0).any():
            out[pos >= 0] = scorer.users(pos[pos >= 0])
        return out

    def export(self, domain: str):
        raise TypeError("a bundle model is already an export: serve the bundle itself")


def domain_figure(bundle: Bundle, prepared: Prepared, metric: str, domain: str,
                  protocol: ProtocolParams = ProtocolParams()) -> float | None:
    """Evaluate a bundle's own scores on ``domain`` of ``prepared`` with the shared protocol (split from
    ``metric``); None when the bundle or the data lacks the domain."""
    split, name, ks = parse_metric(metric)
    if domain not in bundle.domains or domain not in prepared.meta["per_domain"]:
        return None
    data = domain_data(prepared, domain)
    model = BundleModel(bundle.domains[domain], data, raw_user_ids(prepared, domain))
    return float(evaluate(model, data, split, replace(protocol, ks=ks)).get(name, 0.0))


def relative(path: str | Path) -> str:
    """``path`` relative to the working directory (the project root for a stage), so records name no machine."""
    return Path(os.path.relpath(Path(path).absolute())).as_posix()


def checks_passed(summary_path: Path) -> tuple[bool, str]:
    """Whether the validate stage's summary says every check passed (missing or unreadable = not passed)."""
    where = relative(summary_path)
    if not summary_path.is_file():
        return False, f"no data-check summary at {where}"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return False, f"unreadable data-check summary {where}: {type(exc).__name__}"
    ok = summary.get("success") is True
    return ok, f"data checks {'passed' if ok else 'failed'} ({where})"


def decide_domain(domain: str, figures: Sequence[float | None], champion: float | None, margin: float,
                  data_ok: bool, data_note: str, champion_index: int | None = None) -> Decision:
    """The gate of one domain (pure). ``figures``: each candidate's figure on the domain (None: not served);
    ``champion``: the current champion's figure (None: the domain has no champion); ``champion_index``: which
    candidate *is* the champion's bundle, if any. The best candidate (the first of equals) wins only if it beats
    the champion by more than ``margin``; a failed data check promotes nothing."""
    served = [(v, i) for i, v in enumerate(figures) if v is not None]
    if not data_ok:
        return Decision(False, f"not promoted: {data_note}")
    if not served:
        return Decision(False, f"no candidate serves {domain}")
    best_value, best = max(served, key=lambda t: (t[0], -t[1]))
    if champion is None:
        return Decision(True, f"promoted: {domain} has no champion yet (best candidate {best_value:.6f})", best)
    if best == champion_index:
        return Decision(False, f"kept: the champion is the best candidate ({best_value:.6f})")
    if best_value > champion + margin:
        return Decision(True, f"promoted: {best_value:.6f} > champion {champion:.6f} + margin {margin}", best)
    return Decision(False, f"not promoted: best {best_value:.6f} <= champion {champion:.6f} + margin {margin}")
