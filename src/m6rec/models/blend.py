"""A blend of serving bundles: per domain, a weighted sum of the candidates' standardised scores.

``score(u) = sum_c w_c * z_c(u)``, with ``z_c(u)`` candidate c's scores of every item for user u, z-scored over the
catalogue for that user (``(s - mean) / std``, :func:`m6rec.serving.scoring.standardise`), so that models whose
scores live on different scales (cosine sums, dot products, attention logits) add up. The weights lie on the
simplex (``w_c >= 0``, ``sum w_c = 1``) and are fitted per domain by a grid search on the VALIDATION split only,
with the protocol's validation input (training interactions only): the test split never enters the fit.

Each candidate is scored the way the evaluation protocol (:mod:`m6rec.evaluation.protocol`) scores the model it
came from, on the split's input (:class:`CandidateScores`, like :class:`m6rec.promotion.BundleModel`):

- ``dot``: the bundle's user vectors (trained on the training split);
- ``history``: the bundle's attention pooling of the history the protocol builds for the split (valid: train
  items; test: train + valid), not the history stored in the bundle;
- ``itemitem``, ``graphfilter``, ``popularity``: the split's interaction rows (valid: train; test: train + valid).

At test time every kind thus sees train + valid, which is what the served bundle stores, so the blend's test figure
is the served blend's. The fitted blend is a serving bundle domain of kind ``blend``
(:class:`m6rec.serving.bundle_scorers.BlendScorer`) holding the components with a non-zero weight.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from m6rec.data.dataset import DomainData
from m6rec.data.sequences import split_histories
from m6rec.evaluation.protocol import ScoreFn, evaluate_split
from m6rec.serving.bundle import DomainBundle
from m6rec.serving.bundle_scorers import BlendScorer, BundleError
from m6rec.serving.scoring import ROW_KINDS, DomainScorer, standardise

log = logging.getLogger(__name__)


def split_rows(data: DomainData, split: str) -> sp.csr_matrix:
    """The interaction rows the protocol lets a model see for ``split`` (binary float32): valid = train,
    test / cold = train + valid."""
    rows = data.train if split == "valid" else data.train + data.valid
    rows = sp.csr_matrix(rows, dtype=np.float32)
    rows.data[:] = 1.0
    rows.eliminate_zeros()
    rows.sort_indices()
    return rows


class CandidateScores:
    """One domain bundle scored on ``data`` with the input the protocol allows for each split.

    The bundle must have been exported from the same data (same raw user and item ids in the same order).
    """

    def __init__(self, b: DomainBundle, data: DomainData, raw_user: Sequence[str]) -> None:
        if b.kind == "blend":
            raise BundleError(f"{data.name}: a blend cannot be a blend candidate")
        raw_item = tuple(data.items["raw_item"].astype(str))
        if tuple(b.raw_item) != raw_item or tuple(b.raw_user) != tuple(str(u) for u in raw_user):
            raise BundleError(f"{data.name}: the bundle's users or items differ from the data's (export it again "
                              f"from this data)")
        self.bundle, self.data = b, data
        self.scorer = DomainScorer(b)
        self.kind = b.kind
        self._inputs: dict[str, object] = {}

    def _input(self, split: str):
        if split not in self._inputs:
            if self.kind == "history":
                self._inputs[split] = split_histories(self.data, self.scorer.max_len)[split]
            elif self.kind in ROW_KINDS:
                self._inputs[split] = split_rows(self.data, split)
            else:
                self._inputs[split] = None
        return self._inputs[split]

    def score_fn(self, split: str) -> ScoreFn:
        """``users -> scores [B, n_items]`` on ``split``'s input."""
        inp = self._input(split)

        def score(users: np.ndarray) -> torch.Tensor:
            users = np.asarray(users, dtype=np.int64)
            if self.kind == "history":
                return self.scorer.histories(torch.from_numpy(np.asarray(inp[users], dtype=np.int64)))
            if self.kind in ROW_KINDS:
                return self.scorer.rows(inp[users])
            return self.scorer.users(torch.from_numpy(users))

        return score


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` components on the simplex with the given step, the vertices first (so that a
    tie keeps the simplest blend: the first, best-on-validation, component alone)."""
    parts = max(1, int(round(1.0 / step)))
    points = [c for c in itertools.product(range(parts + 1), repeat=n) if sum(c) == parts]
    points.sort(key=lambda c: (sum(1 for x in c if x) , [-x for x in c]))
    return [tuple(x / parts for x in c) for c in points]


def blend_scores(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_c weights[c] * standardise(parts[c])`` (the serving blend's formula)."""
    out = torch.zeros_like(parts[0])
    for w, p in zip(weights, parts):
        if w:
            out += w * standardise(p)
    return out


@dataclass
class BlendFit:
    """A domain's fitted blend: the chosen components and weights, and every figure the fit saw."""

    names: list[str]
    weights: list[float]
    valid: float  # the chosen blend's validation metric (the best single's when the mixture was not accepted)
    candidate_valid: dict[str, float] = field(default_factory=dict)  # each candidate alone
    candidate_results: dict[str, dict[str, float]] = field(default_factory=dict)  # their whole validation figures
    grid: list[tuple[list[float], float]] = field(default_factory=list)  # (weights, valid) of every point
    chosen: list[str] = field(default_factory=list)  # the candidates the grid spans, best on validation first
    mixture: list[float] = field(default_factory=list)  # the best grid point (weights over `chosen`)
    mixture_valid: float = 0.0  # its validation metric
    fold_gains: list[float] = field(default_factory=list)  # cross-fitted gain of the procedure per held-out fold
    z: float = 0.0  # mean(fold_gains) / its standard error
    accepted: bool = False  # whether the mixture beat the best single by the margin (else: the single alone)


def user_folds(users: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``users`` split into ``folds`` seeded folds of (nearly) equal size, each sorted."""
    order = np.random.default_rng(seed).permutation(len(users))
    return [np.sort(users[order[f::folds]]) for f in range(folds)]


def cross_fitted_gains(table: np.ndarray, sizes: np.ndarray, vertices: Sequence[int]) -> np.ndarray:
    """The validation gain of choosing the best grid point over choosing the best single, held out per fold.

    ``table[p, f]`` is grid point p's metric on fold f (a mean over the fold's ``sizes[f]`` users), ``vertices``
    the grid points that hold one component alone. For each fold f, both choices are made on the other folds
    (size-weighted means) and compared on fold f: the gain of the whole procedure (search the grid, keep the best)
    over its simplest alternative (keep the best single), measured on users the choice did not see.
    """
    gains = np.zeros(table.shape[1])
    vertices = np.asarray(vertices)
    for f in range(table.shape[1]):
        rest = np.ones(table.shape[1], dtype=bool)
        rest[f] = False
        mean_rest = table[:, rest] @ sizes[rest] / max(sizes[rest].sum(), 1)
        best = int(np.argmax(mean_rest))
        single = int(vertices[np.argmax(mean_rest[vertices])])
        gains[f] = table[best, f] - table[single, f]
    return gains


def fit_blend(candidates: Mapping[str, CandidateScores], data: DomainData, metric: str = "ndcg@20",
              max_components: int = 3, step: float = 0.1, ks: Sequence[int] = (10, 20),
              batch_users: int = 2048, folds: int = 10, min_z: float = 2.0, seed: int = 0) -> BlendFit:
    """Weights on the simplex over the best ``max_components`` candidates (by ``metric`` on validation) that
    maximise the blend's validation ``metric``; only the validation split and its input (training rows) are read.

    A mixture is kept only if it is reliably better than the best candidate alone: the validation users are cut
    into ``folds`` seeded folds, the choice (best grid point vs best single) is cross-fitted (made on the other
    folds, measured on the held-out one, :func:`cross_fitted_gains`), and the mixture is accepted when the mean
    held-out gain is at least ``min_z`` standard errors above zero. Otherwise the best single candidate is served
    alone (weight 1): the grid's best point always looks better on the users it was picked on, and a gain of a
    few thousandths of NDCG on one validation split does not survive the test split (amazon-office: +.0010 on
    validation, -.0007 on test before this rule). ``folds < 2`` accepts the best grid point unconditionally.
    """
    if not candidates:
        raise ValueError(f"{data.name}: no blend candidates")
    users = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    # Each candidate is scored on validation once: its standardised scores are kept while it is among the best
    # max_components so far (a candidate that falls out cannot come back), and the grid reads them.
    results: dict[str, dict[str, float]] = {}
    cand_valid: dict[str, float] = {}
    kept: dict[str, list[tuple[np.ndarray, torch.Tensor]]] = {}
    for name, c in candidates.items():
        fn, seen = c.score_fn("valid"), []

        def recording(u: np.ndarray, fn=fn, seen=seen) -> torch.Tensor:
            out = fn(u)
            seen.append((np.asarray(u, dtype=np.int64).copy(), standardise(out)))  # before evaluation masks `out`
            return out

        results[name] = evaluate_split(recording, data, "valid", ks, batch_users)
        cand_valid[name] = float(results[name].get(metric, 0.0))
        kept[name] = seen
        top = sorted(cand_valid, key=lambda n: -cand_valid[n])[:max_components]
        kept = {n: kept[n] for n in top}
    chosen = sorted(cand_valid, key=lambda n: -cand_valid[n])[:max_components]
    pos = np.full(data.n_users, -1, dtype=np.int64)
    pos[users] = np.arange(len(users))
    cached = []
    for name in chosen:
        batches = kept[name]
        if batches and np.array_equal(np.concatenate([u for u, _ in batches]), users):
            cached.append(torch.cat([z for _, z in batches]))
            continue
        fn = candidates[name].score_fn("valid")  # the evaluation saw other users (none has validation items)
        cached.append(torch.cat([standardise(fn(users[s:s + batch_users])) for s in range(0, len(users), batch_users)]
                                or [torch.zeros(0, data.n_items)]))
    kept = {}
    parts = user_folds(users, folds, seed) if folds >= 2 and len(users) >= folds else [users]
    points = simplex_grid(len(chosen), step)
    table = np.zeros((len(points), len(parts)))
    sizes = np.zeros(len(parts))
    for p, w in enumerate(points):
        def score(u: np.ndarray, w: tuple[float, ...] = w) -> torch.Tensor:
            rows = torch.from_numpy(pos[np.asarray(u, dtype=np.int64)])
            out = torch.zeros(len(rows), data.n_items)
            for wc, z in zip(w, cached):
                if wc:
                    out += wc * z[rows]
            return out

        for f, fold in enumerate(parts):
            r = evaluate_split(score, data, "valid", ks, batch_users, users=fold)
            table[p, f], sizes[f] = float(r.get(metric, 0.0)), float(r.get("n_users", 0.0))
    overall = table @ sizes / max(sizes.sum(), 1)
    grid = [(list(w), float(v)) for w, v in zip(points, overall)]
    best = int(np.argmax(overall))  # first maximum: a tie keeps the simpler point (vertices come first)
    vertices = [p for p, w in enumerate(points) if sum(1 for x in w if x) == 1]
    single = max(vertices, key=lambda p: (overall[p], -p))
    gains = cross_fitted_gains(table, sizes, vertices) if len(parts) >= 2 else np.zeros(0)
    se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) >= 2 else 0.0
    # A gain the same on every fold (se 0) counts as reliable only if it is positive; z is then a large finite
    # number, so that it can be written to JSON.
    z = float(gains.mean() / se) if se > 0 else (1e9 if len(gains) and gains.mean() > 0 else 0.0)
    multi = sum(1 for x in points[best] if x) > 1
    accepted = multi and (len(parts) < 2 or z >= min_z)
    pick = best if accepted or not multi else single
    names = [n for n, w in zip(chosen, points[pick]) if w > 0]
    weights = [float(w) for w in points[pick] if w > 0]
    log.info("%s blend %s: valid %s %.4f (best grid point %s %.4f, cross-fitted gain over the best single %s "
             "%.4f: %+.4f, z %.2f, %s)", data.name, ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights)),
             metric, overall[pick], [round(x, 2) for x in points[best]], overall[best], chosen[0],
             overall[single], float(gains.mean()) if len(gains) else 0.0, z,
             "mixture kept" if accepted else ("single alone" if multi else "best point is a single"))
    return BlendFit(names=names, weights=weights, valid=float(overall[pick]), candidate_valid=cand_valid,
                    candidate_results=results,
                    grid=grid, chosen=list(chosen), mixture=[float(x) for x in points[best]],
                    mixture_valid=float(overall[best]), fold_gains=[float(g) for g in gains], z=z, accepted=accepted)


def blend_score_fn(candidates: Mapping[str, CandidateScores], fit: BlendFit, split: str) -> ScoreFn:
    """The fitted blend's scores on ``split``'s input."""
    fns = [candidates[n].score_fn(split) for n in fit.names]
    return lambda users: blend_scores([fn(users) for fn in fns], fit.weights)


def blend_domain(candidates: Mapping[str, CandidateScores], fit: BlendFit) -> DomainBundle:
    """The serving domain of a fitted blend: kind ``blend`` over the chosen components' bundles; ids, titles, seen
    and popularity from the first component (the same data for all), item vectors for similar items likewise."""
    parts = tuple(candidates[n].bundle for n in fit.names)
    first = parts[0]
    return DomainBundle(item_vectors=first.item_vectors, user_vectors=None, popularity=first.popularity,
                        seen=first.seen, titles=first.titles, raw_item=first.raw_item, raw_user=first.raw_user,
                        scorer=BlendScorer(components=parts, names=tuple(fit.names), weights=tuple(fit.weights)))


__all__ = ["split_rows", "CandidateScores", "simplex_grid", "blend_scores", "BlendFit", "user_folds",
           "cross_fitted_gains", "fit_blend",
           "blend_score_fn", "blend_domain"]
