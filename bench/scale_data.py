"""Synthetic multi-domain interaction data whose shape follows the real domains, at any size (the scale bench).

Per real domain (Gowalla, Amazon Office, Amazon Scientific, read from the data mirror through the project's own
parsers) a discrete power law is fitted (Clauset, Shalizi & Newman 2009: exponent by maximum likelihood, x_min by
the smallest KS distance) to the tail of the user activity (interactions per user) and of the item popularity
(interactions per item); below x_min the real counts are resampled as they are. A synthetic domain of n interactions then

* draws user activities from the fitted user law (truncated at the real maximum) until they sum to n;
* draws item weights from the fitted item law, for as many items as n / (the real mean popularity);
* gives each user that many distinct items, drawn with probability proportional to the item weights (a Chung-Lu
  bipartite graph: the item popularity comes out as a power law with the fitted exponent);
* gives each user log-normal gaps between interactions, placed within 2012-2024 (none of the
  three real domains carries timestamps, only an order, so the gaps are not fitted: median 1 day, sigma 1.5);
* gives each item a text drawn with replacement from the real domain's item texts; with ``texts="distinct"``
  (default) every draw after the first of a text gets a suffix " (variant k)", so distinct items have distinct
  texts, as in a real catalogue, and the encoder cache (keyed by the text's sha256) cannot serve them; with
  ``texts="pooled"`` the real texts are reused as they are (at most ~6.8k distinct texts: cache hits).

Gowalla has no item text, so its synthetic domain has none either. The files are a generic ``csv`` source
(config/datasets.yaml's parser csv): interactions.csv (user,item,timestamp) and items.csv (item,title,text).
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

START_TS = 1325376000  # 2012-01-01 UTC
SPAN_S = 12 * 365 * 86400  # every interaction lies in 2012-2024 (a user's start is uniform over what is left)
GAP_MEDIAN_S = 86400.0  # median gap between a user's interactions (not fitted: the real domains have no time)
GAP_SIGMA = 1.5  # log-normal sigma of the gaps


@dataclass(frozen=True)
class PowerLaw:
    """Counts of a real domain: a discrete power law p(x) ~ x^-alpha on [xmin, xmax] for the tail, and the real
    counts below xmin (the body, resampled as they are) for the rest."""

    alpha: float
    xmin: int
    xmax: int
    tail_share: float  # share of the real counts >= xmin
    mean: float  # of the real counts
    n: int  # number of real counts fitted (users or items)
    ks: float  # Kolmogorov-Smirnov distance between the real tail and the fitted law
    body: tuple[int, ...] = ()  # the real counts below xmin

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Counts drawn from the body or (with probability tail_share) the tail law (continuous approximation of
        the discrete inverse CDF, Clauset et al. eq. D.6), truncated at xmax."""
        u = rng.random(size)
        x = np.floor((self.xmin - 0.5) * (1.0 - u) ** (-1.0 / (self.alpha - 1.0)) + 0.5)
        x = np.clip(x, self.xmin, self.xmax).astype(np.int64)
        if self.body:
            from_body = rng.random(size) >= self.tail_share
            x[from_body] = rng.choice(np.asarray(self.body, dtype=np.int64), int(from_body.sum()))
        return x

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "body"}


def _tail_fit(x: np.ndarray, xmin: int) -> tuple[float, float]:
    """(alpha MLE, KS distance) of the tail x >= xmin (sorted x)."""
    tail = x[x >= xmin]
    alpha = 1.0 + len(tail) / float(np.sum(np.log(tail / (xmin - 0.5))))
    emp = np.arange(1, len(tail) + 1) / len(tail)
    model = 1.0 - ((tail + 0.5) / (xmin - 0.5)) ** (1.0 - alpha)
    return alpha, float(np.max(np.abs(emp - np.clip(model, 0.0, 1.0))))


def fit_power_law(counts: np.ndarray, min_tail: int = 100) -> PowerLaw:
    """Clauset, Shalizi & Newman (2009): alpha by maximum likelihood (eq. 3.7) for each candidate xmin, and the
    xmin whose tail is closest to its fit (KS distance), among those leaving at least `min_tail` counts."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    x = x[x > 0]
    best = None
    candidates = np.unique(x)
    candidates = candidates[(len(x) - np.searchsorted(x, candidates)) >= min(min_tail, len(x))]
    if len(candidates) > 200:  # a fitted synthetic domain has thousands of distinct counts: 200 xmin suffice
        candidates = np.unique(candidates[np.linspace(0, len(candidates) - 1, 200).astype(int)])
    for xmin in candidates:
        alpha, ks = _tail_fit(x, int(xmin))
        if best is None or ks < best[2]:
            best = (int(xmin), alpha, ks)
    xmin, alpha, ks = best
    return PowerLaw(alpha=alpha, xmin=xmin, xmax=int(x.max()), tail_share=float((x >= xmin).mean()),
                    mean=float(x.mean()), n=len(x), ks=ks, body=tuple(int(v) for v in x[x < xmin]))


@dataclass(frozen=True)
class RealDomain:
    """What the generator takes from one real domain: two fitted laws and the item text pool (titles, bodies)."""

    name: str
    users: PowerLaw
    items: PowerLaw
    titles: tuple[str, ...]
    bodies: tuple[str, ...]

    def summary(self) -> dict:
        return {"users": self.users.summary(), "items": self.items.summary(), "texts": len(self.titles)}


def _counts(inter: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    pairs = inter[["raw_user", "raw_item"]].drop_duplicates()
    return pairs["raw_user"].value_counts().to_numpy(), pairs["raw_item"].value_counts().to_numpy()


def load_real(mirror: Path) -> dict[str, RealDomain]:
    """Fit the three real domains of the mirror (read by the project's parsers, so the texts are those it encodes)."""
    from m6rec.data.parsers import amazon_lcrec_json, amazon_unisrec, lightgcn_split

    out = {}
    for name, parser in (("lightgcn-gowalla", lightgcn_split), ("amazon-office", amazon_lcrec_json),
                         ("amazon-scientific", amazon_unisrec)):
        inter, items = parser(mirror / name)
        users_c, items_c = _counts(inter)
        texts = items[items["text"].str.len() > 0]
        titles, bodies = [], []
        for title, text in zip(texts["title"], texts["text"], strict=True):
            title = html.unescape(str(title)).strip()
            body = text[len(title):].lstrip(". ").strip() if title and text.startswith(title) else text
            titles.append(title or body[:60])
            bodies.append(body)
        out[name] = RealDomain(name, fit_power_law(users_c), fit_power_law(items_c), tuple(titles), tuple(bodies))
    return out


@dataclass(frozen=True)
class SyntheticSpec:
    """One synthetic domain: the real domain it follows and its share of the interactions."""

    name: str
    real: str
    share: float
    has_text: bool
    finetune: bool = False


# Gowalla-like (no text, as Gowalla), Scientific-like and Office-like (the fine-tuning target, as ml-100k is in the
# default pipeline). Shares: at 10M interactions ~0.9M users and ~0.6M items in all (the "up to ~1M").
SPECS = (
    SyntheticSpec("syn-gowalla", "lightgcn-gowalla", 0.4, has_text=False),
    SyntheticSpec("syn-scientific", "amazon-scientific", 0.3, has_text=True),
    SyntheticSpec("syn-office", "amazon-office", 0.3, has_text=True, finetune=True),
)


def _user_activity(law: PowerLaw, n: int, rng: np.random.Generator) -> np.ndarray:
    """Activities drawn from `law` until they sum to `n` (the last one cut so the sum is exactly n)."""
    guess = int(n / max(law.mean, 1.0) * 1.3) + 16
    acts = law.sample(rng, guess)
    while acts.sum() < n:
        acts = np.concatenate([acts, law.sample(rng, guess)])
    cum = np.cumsum(acts)
    last = int(np.searchsorted(cum, n))
    acts = acts[: last + 1].copy()
    acts[-1] -= int(cum[last] - n)
    return acts[acts > 0]


def generate_domain(spec: SyntheticSpec, real: RealDomain, n: int, seed: int,
                    texts: str = "distinct") -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """(interactions, items or None, stats) of about `n` distinct (user, item) pairs following `real`."""
    rng = np.random.default_rng(seed)
    n_items = max(int(round(n / real.items.mean)), 50)
    weights = real.items.sample(rng, n_items).astype(np.float64)
    prob = weights / weights.sum()
    acts = _user_activity(real.users, n, rng)
    acts = np.minimum(acts, n_items // 2)  # a user cannot have more distinct items than exist
    users = np.repeat(np.arange(len(acts), dtype=np.int64), acts)
    items = rng.choice(n_items, size=len(users), p=prob).astype(np.int64)
    key = np.unique(users * n_items + items)  # drop repeats of a pair: the data has one row per (user, item)
    # redraw the repeats (popular items collide most) a few times: the activities then match the draw within ~1%
    for _ in range(4):
        deficit = np.maximum(acts - np.bincount(key // n_items, minlength=len(acts)), 0)
        if deficit.sum() <= 0.002 * len(users):
            break
        extra_users = np.repeat(np.arange(len(acts), dtype=np.int64), deficit)
        extra_items = rng.choice(n_items, size=len(extra_users), p=prob).astype(np.int64)
        key = np.unique(np.concatenate([key, extra_users * n_items + extra_items]))
    users, items = key // n_items, key % n_items
    # timestamps: per user a start and log-normal gaps, in a random order of the user's items
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    gaps = rng.lognormal(math.log(GAP_MEDIAN_S), GAP_SIGMA, len(users))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    gaps[starts] = 0.0
    cum = np.cumsum(gaps)
    rel = cum - np.repeat(cum[starts], np.diff(np.r_[starts, len(users)]))
    # a very active user's timeline is squeezed into the window, so no interaction lies in the future
    span = np.maximum.reduceat(rel, starts)
    squeeze = np.minimum(1.0, SPAN_S / np.maximum(span, 1.0))
    span = span * squeeze
    user_start = START_TS + (rng.random(len(starts)) * (SPAN_S - span)).astype(np.int64)
    ts = user_start[users] + (rel * squeeze[users]).astype(np.int64)
    used = np.unique(items)
    inter = pd.DataFrame({"user": np.char.add("u", users.astype(str)), "item": np.char.add("i", items.astype(str)),
                          "timestamp": ts})
    item_frame = None
    if spec.has_text:
        pick = rng.integers(0, len(real.titles), len(used))
        titles = np.asarray(real.titles, dtype=object)[pick]
        if texts == "distinct":
            seen = pd.Series(pick).groupby(pick).cumcount().to_numpy()  # k-th draw of the same real text
            suffix = np.where(seen > 0, np.char.add(" (variant ", np.char.add(seen.astype(str), ")")), "")
            titles = titles.astype(str) + suffix.astype(object)
        elif texts != "pooled":
            raise ValueError(f"texts must be distinct or pooled, got {texts!r}")
        item_frame = pd.DataFrame({"item": np.char.add("i", used.astype(str)), "title": titles,
                                   "text": np.asarray(real.bodies, dtype=object)[pick]})
    u_deg = np.bincount(users)
    i_deg = np.bincount(items)[used]
    stats = {"interactions": int(len(inter)), "users": int(len(u_deg)), "items": int(len(used)),
             "catalogue_drawn": int(n_items), "mean_user_activity": float(u_deg.mean()),
             "mean_item_popularity": float(i_deg.mean()),
             "fit_user_alpha_synthetic": fit_power_law(u_deg).alpha,
             "fit_item_alpha_synthetic": fit_power_law(i_deg).alpha,
             "distinct_texts": int(item_frame[["title", "text"]].drop_duplicates().shape[0]) if spec.has_text else 0}
    return inter, item_frame, stats


def registry_entry(spec: SyntheticSpec, folder: str) -> dict:
    """The generic-csv config/datasets.yaml entry of a synthetic domain whose files are in `folder`."""
    entry = {"parser": "csv", "domain": "synthetic", "feedback": "implied", "split": "chronological",
             "has_text": spec.has_text, "path": folder, "interactions": "interactions.csv",
             "columns": {"user": "user", "item": "item", "timestamp": "timestamp"},
             "licence": f"synthetic (bench/scale_data.py), shaped after {spec.real}"}
    if spec.has_text:
        entry["items"] = "items.csv"
        entry["item_columns"] = {"item": "item", "title": "title", "text": ["text"]}
    return entry


def write_domains(raw_dir: Path, total: int, real: dict[str, RealDomain], seed: int = 42,
                  texts: str = "distinct", specs: tuple[SyntheticSpec, ...] = SPECS) -> dict[str, dict]:
    """Write every synthetic domain's csv files into ``raw_dir/<name>/``; returns {name: stats + registry entry}."""
    out = {}
    for k, spec in enumerate(specs):
        inter, items, stats = generate_domain(spec, real[spec.real], int(round(total * spec.share)), seed + k, texts)
        folder = raw_dir / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        inter.to_csv(folder / "interactions.csv", index=False)
        if items is not None:
            items.to_csv(folder / "items.csv", index=False)
        out[spec.name] = {"stats": stats, "spec": asdict(spec)}
    return out
