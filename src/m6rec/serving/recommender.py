"""Request-time work behind the service: top-k over a bundle's precomputed item matrix, with no HTTP in sight.

Per request: the user's scores against the precomputed item matrix (:class:`m6rec.serving.scoring.DomainScorer`:
one matrix-vector product for a dot-product model, K + 1 of them and a softmax over interests for a history-attention
model), the user's seen items set to ``-inf``, and one :func:`torch.topk`. Unknown users get the most popular items
(``source="popularity"``), scored by their share of the domain's training interactions (in [0, 1], summing to 1
over the catalogue) rather than raw counts. A listing is ``[{"item", "title", "score"}, ...]``, best first. Client
mistakes raise :class:`RequestError`, which names the field; the service turns it into an HTTP 4xx.

``explain``: on a domain with a history scorer, the model's own attention of the item on each of the user's history
items (``method="attention"``); on a dot-product domain, an *explainer* chosen by the bundle's ``meta["explainer"]``
(default ``"similarity"``: the user's history items ranked by cosine similarity to the target item). Another
explanation can be registered with :func:`register_explainer` and named in the bundle meta.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m6rec.serving.ann import AnnIndex, AnnSettings
from m6rec.serving.bundle import Bundle, DomainBundle, meta_metrics
from m6rec.serving.encoder import LazyEncoder
from m6rec.serving.scoring import DomainScorer

log = logging.getLogger(__name__)

_NEG_INF = float("-inf")


class RequestError(ValueError):
    """A client mistake: ``field`` names the bad request field, ``status`` is the HTTP status to answer with."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        self.field = field
        self.status = status
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Ranked:
    """A ranked list: local item indices with their scores (best first)."""

    items: np.ndarray
    scores: np.ndarray


class DomainIndex:
    """One domain's bundle as torch tensors and id lookups, built once at start-up."""

    def __init__(self, name: str, b: DomainBundle, ann: AnnSettings | None = None, threads: int = 1) -> None:
        self.name = name
        self.bundle = b
        self.scorer = DomainScorer(b)
        self.items = self.scorer.items
        # A large dot-product catalogue: recommend from an approximate index (m6rec.serving.ann); every other
        # kind, and every smaller catalogue, is ranked exactly.
        self.ann: AnnIndex | None = None
        if ann is not None and b.kind == "dot" and b.n_items >= ann.min_items:
            self.ann = AnnIndex(b.item_vectors, ann, threads)
        elif ann is not None and b.n_items >= ann.min_items:
            log.warning("domain %s: %d items, but a %s scorer has no ANN index; it is ranked exactly",
                        name, b.n_items, b.kind)
        norms = self.items.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.items_unit = self.items / norms  # cosine similarity for similar_items / explain
        self.popularity = np.asarray(b.popularity, dtype=np.float32)
        self.pop_order = np.argsort(-self.popularity, kind="stable")
        total = float(self.popularity.sum())
        # The fallback's score: an item's share of the training interactions, a probability, not a raw count.
        self.popularity_share = self.popularity / total if total > 0 else np.zeros_like(self.popularity)
        self.seen_indptr = b.seen.indptr.astype(np.int64)
        self.seen_indices = torch.from_numpy(b.seen.indices.astype(np.int64))
        self.raw_item = list(b.raw_item)
        self.titles = list(b.titles)
        self.user_index = {u: i for i, u in enumerate(b.raw_user)}
        self.item_index = {it: i for i, it in enumerate(b.raw_item)}
        self.projection = None
        if b.text_projection is not None:
            self.projection = (torch.from_numpy(b.text_projection.weight), torch.from_numpy(b.text_projection.bias))

    @property
    def n_items(self) -> int:
        return len(self.raw_item)

    def seen(self, user: int) -> torch.Tensor:
        return self.seen_indices[self.seen_indptr[user]:self.seen_indptr[user + 1]]

    def item(self, raw: str, field: str) -> int:
        idx = self.item_index.get(raw)
        if idx is None:
            raise RequestError(field, f"unknown item id {raw!r} in domain {self.name!r}", 404)
        return idx

    def top_k(self, scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> Ranked:
        """Top-``k`` of one row of item ``scores`` (modified in place), ``exclude`` (item indices) masked out."""
        if exclude is not None and exclude.numel():
            scores[exclude] = _NEG_INF
        k = min(k, self.n_items)
        values, idx = torch.topk(scores, k)
        keep = torch.isfinite(values)  # fewer than k unmasked items: drop the masked fill-ins
        return Ranked(items=idx[keep].numpy(), scores=values[keep].numpy())


@dataclass(frozen=True)
class RecommendQuery:
    """One ``recommend`` request (see :meth:`Recommender.recommend_batch`)."""

    domain: str
    user: str
    k: int = 10
    exclude_seen: bool = True


Explainer = Callable[[DomainIndex, int, int, int], Ranked]


def similarity_explainer(index: DomainIndex, user: int, item: int, n: int) -> Ranked:
    """The user's history items ranked by cosine similarity to ``item`` (``item`` itself left out)."""
    history = index.seen(user)
    history = history[history != item]
    if history.numel() == 0:
        return Ranked(items=np.empty(0, dtype=np.int64), scores=np.empty(0, dtype=np.float32))
    sims = index.items_unit[history] @ index.items_unit[item]
    values, order = torch.topk(sims, min(n, history.numel()))
    return Ranked(items=history[order].numpy(), scores=values.numpy())


EXPLAINERS: dict[str, Explainer] = {"similarity": similarity_explainer}


def register_explainer(name: str, fn: Explainer) -> None:
    """Make ``fn`` available to bundles whose ``meta["explainer"]`` is ``name``."""
    EXPLAINERS[name] = fn


class Recommender:
    """All endpoints' logic over one loaded bundle. Read-only after construction (safe across threads)."""

    def __init__(self, bundle: Bundle, max_k: int = 100, max_history: int = 1000, explain_n: int = 5,
                 version: str | None = None, source: str = "", encoder: LazyEncoder | None = None,
                 ann: AnnSettings | None = AnnSettings(), threads: int = 1) -> None:
        """``ann``: when a dot-product domain is large enough to be served from an approximate index (None =
        always exact); ``threads``: the index's search threads."""
        self.meta = bundle.meta
        self.max_k = max_k
        self.max_history = max_history
        self.explain_n = explain_n
        self.version = version
        self.source = source
        self.domains = {name: DomainIndex(name, d, ann, threads) for name, d in bundle.domains.items()}
        explainer = self.meta.get("explainer", "similarity")
        if explainer not in EXPLAINERS:
            raise ValueError(f"bundle meta names explainer {explainer!r}; known: {sorted(EXPLAINERS)}")
        self.explainer_name = explainer  # dot-product domains; history-scorer domains explain by attention
        self.explainer = EXPLAINERS[explainer]
        has_text = any(d.projection is not None for d in self.domains.values())
        self.encoder = encoder if has_text else None
        if self.encoder is None and has_text and self.meta.get("encoder"):
            self.encoder = LazyEncoder(self.meta["encoder"], self.meta.get("encoder_max_seq_length") or None)

    # ------------------------------------------------------------------------------------------------ checks

    def domain(self, name: str) -> DomainIndex:
        index = self.domains.get(name)
        if index is None:
            raise RequestError("domain", f"unknown domain {name!r}; served domains: {sorted(self.domains)}", 404)
        return index

    def check_k(self, k: int, field: str = "k") -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise RequestError(field, f"must be a positive integer, got {k!r}")
        if k > self.max_k:
            raise RequestError(field, f"must be <= {self.max_k} (serve.max_k), got {k}")
        return k

    # --------------------------------------------------------------------------------------------- endpoints

    def _listing(self, index: DomainIndex, ranked: Ranked, score: str = "score") -> list[dict[str, Any]]:
        """``[{"item", "title", score}, ...]`` in rank order."""
        return [{"item": index.raw_item[i], "title": index.titles[i], score: float(s)}
                for i, s in zip(ranked.items, ranked.scores, strict=True)]

    def recommend(self, domain: str, user: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """Top-k for a known user (``source="model"``); the most popular items (``source="popularity"``, scored by
        their share of the training interactions) for an unknown one."""
        answer = self.recommend_batch([RecommendQuery(domain, user, k, exclude_seen)])[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[dict[str, Any] | RequestError]:
        """:meth:`recommend` for many queries: one ``[B, d] @ [d, n_items]`` product and one top-k per domain.

        A bad query gets its :class:`RequestError` in its slot instead of failing the batch.
        """
        out: list[dict[str, Any] | RequestError | None] = [None] * len(queries)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            try:
                index = self.domain(q.domain)
                k = self.check_k(q.k)
            except RequestError as exc:
                out[i] = exc
                continue
            if q.user in index.user_index:
                groups.setdefault(q.domain, []).append(i)
            else:
                top = index.pop_order[: min(k, index.n_items)]
                ranked = Ranked(items=top, scores=index.popularity_share[top])
                out[i] = {"domain": q.domain, "user": q.user, "source": "popularity",
                          "items": self._listing(index, ranked)}
        for domain, rows in groups.items():
            index = self.domains[domain]
            users = [index.user_index[queries[i].user] for i in rows]
            k_max = min(max(queries[i].k for i in rows), index.n_items)
            values, top = self._top_users(index, users, [queries[i].exclude_seen for i in rows], k_max)
            for r, i in enumerate(rows):
                k = min(queries[i].k, index.n_items)
                v, t = values[r, :k], top[r, :k]
                keep = np.isfinite(v)  # fewer than k unmasked items: drop the masked fill-ins
                out[i] = {"domain": domain, "user": queries[i].user, "source": "model",
                          "items": self._listing(index, Ranked(items=t[keep], scores=v[keep]))}
        return out  # type: ignore[return-value]

    @staticmethod
    def _top_users(index: DomainIndex, users: list[int], exclude_seen: list[bool], k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """``(values, items)`` ``[B, k]`` of known local ``users``, each one's seen items left out where asked."""
        if index.ann is not None:
            empty = torch.empty(0, dtype=torch.int64)
            seen = [(index.seen(u) if ex else empty).numpy() for u, ex in zip(users, exclude_seen, strict=True)]
            return index.ann.search(index.scorer.user_vectors[users].numpy(), k, seen)
        masked = [r for r, ex in enumerate(exclude_seen) if ex]
        row_ids = col_ids = None
        if masked:
            cols = [index.seen(users[r]) for r in masked]
            row_ids = torch.repeat_interleave(torch.tensor(masked), torch.tensor([len(c) for c in cols]))
            col_ids = torch.cat(cols)
        values, top = index.scorer.top_k(torch.as_tensor(users, dtype=torch.int64), k, row_ids, col_ids)
        return values.numpy(), top.numpy()

    def recommend_items(self, domain: str, items: Sequence[str] = (), text: str | None = None,
                        k: int = 10) -> dict[str, Any]:
        """Top-k for an anonymous user given item ids and/or free text.

        The items (in the order given, oldest first) and the projected text vector (one more item, the most recent)
        form a history, scored the way the domain's model scores one (:meth:`DomainScorer.history_scores`: their
        mean for a dot-product model, the attention pooling for a history model). Unknown item ids are ignored and
        listed in ``unknown_items``; if nothing usable is left: 400.
        """
        index = self.domain(domain)
        k = self.check_k(k)
        if len(items) > self.max_history:
            raise RequestError("items", f"at most {self.max_history} item ids (serve.max_history), got {len(items)}")
        raw_text, text = text, text.strip() if text else ""
        known = [index.item_index[i] for i in items if i in index.item_index]
        unknown = [i for i in items if i not in index.item_index]
        # 422, not 400: such a request is valid by the declared schema, which cannot know the catalogue.
        if not known and not text:
            if unknown:
                raise RequestError("items", f"none of the {len(unknown)} item id(s) is known in domain {domain!r} "
                                            f"(first: {unknown[:5]}) and no text was given", 422)
            if not items and not raw_text:
                raise RequestError("items", "empty history: give at least one item id or a non-empty text")
            raise RequestError("text", "blank text and no item ids: nothing to recommend from", 422)
        extra = self._text_vector(index, text).unsqueeze(0) if text else None
        given = np.asarray(sorted(set(known)), dtype=np.int64)
        if index.ann is not None:
            values, top = index.ann.search(index.scorer.dot_query(known, extra).numpy()[None], k, [given])
            keep = np.isfinite(values[0])
            ranked = Ranked(items=top[0][keep], scores=values[0][keep])
        else:
            exclude = torch.from_numpy(given) if len(given) else None
            ranked = index.top_k(index.scorer.history_scores(known, extra), k, exclude=exclude)
        return {"domain": domain, "source": "model", "items": self._listing(index, ranked), "unknown_items": unknown,
                "used_text": bool(text)}

    def _text_vector(self, index: DomainIndex, text: str) -> torch.Tensor:
        if index.projection is None or self.encoder is None:
            raise RequestError("text", f"domain {index.name!r} has no text projection in this model; "
                                       f"send item ids instead", 422)
        weight, bias = index.projection
        vec = torch.from_numpy(self.encoder.get().encode([text])[0])
        if vec.shape[0] != weight.shape[0]:
            raise RuntimeError(f"encoder {self.encoder.name} gives {vec.shape[0]}-d vectors but the text "
                               f"projection of {index.name} expects {weight.shape[0]}")
        return vec @ weight + bias

    def similar_items(self, domain: str, item: str, k: int = 10) -> dict[str, Any]:
        """Items closest to ``item`` by cosine similarity of item vectors (``item`` itself excluded)."""
        index = self.domain(domain)
        k = self.check_k(k)
        i = index.item(item, "item")
        ranked = index.top_k(torch.mv(index.items_unit, index.items_unit[i]), k, exclude=torch.tensor([i]))
        return {"domain": domain, "item": item, "source": "model", "items": self._listing(index, ranked)}

    def explain(self, domain: str, user: str, item: str, n: int | None = None) -> dict[str, Any]:
        """Why ``item`` for ``user``: the score and the ``n`` history items that support it most.

        History-scorer domains: the model's attention weights of ``item`` on the user's history items (``method``
        ``"attention"``; the weights of the whole history sum to 1). Dot-product domains: the bundle's explainer.
        ``history`` is ``[{"item", "title", "weight"}, ...]``, strongest first.
        """
        index = self.domain(domain)
        n = self.check_k(self.explain_n if n is None else n, "n")
        u = index.user_index.get(user)
        if u is None:
            raise RequestError("user", f"unknown user id {user!r} in domain {domain!r}: nothing to explain", 404)
        i = index.item(item, "item")
        if index.scorer.kind == "history":
            why = index.scorer.explain(u, i)
            order = np.argsort(-why.weights, kind="stable")[:n]
            ranked, score = Ranked(items=why.items[order], scores=why.weights[order]), why.score
        else:
            ranked, score = self.explainer(index, u, i, n), index.scorer.score(u, i)
        return {"domain": domain, "user": user, "item": item, "score": score, "method": self._explain_method(index),
                "history": self._listing(index, ranked, score="weight")}

    def _explain_method(self, index: DomainIndex) -> str:
        return "attention" if index.scorer.kind == "history" else self.explainer_name

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.meta.get("model"), "version": self.version, "source": self.source,
            "data_version": self.meta.get("data_version"), "metrics": meta_metrics(self.meta),
            "encoder": self.meta.get("encoder"), "created": self.meta.get("created"),
            "explainer": ",".join(sorted({self._explain_method(d) for d in self.domains.values()})),
            "max_k": self.max_k,
            "domains": {name: {"n_users": len(d.user_index), "n_items": d.n_items, "dim": int(d.items.shape[1]),
                               "text": d.projection is not None, "scorer": d.scorer.kind,
                               "explainer": self._explain_method(d),
                               "index": d.ann.describe if d.ann is not None else "exact"}
                        for name, d in self.domains.items()},
        }
