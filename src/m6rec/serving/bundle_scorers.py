"""The bundle format's scorers: how a domain that is not a plain dot product scores its users, as checked arrays.

:class:`HistoryScorer` (a user is their recent items, pooled by attention) and the row scorers, which score one user
row over the whole catalogue: :class:`ItemItemScorer` (ItemKNN, EASE), :class:`GraphFilterScorer` (GF-CF),
:class:`PopularityScorer` (MostPopular) and :class:`BlendScorer` (a z-scored mixture of component domain bundles).
:class:`m6rec.serving.bundle.DomainBundle` holds one of them; the file layout of each is in :mod:`m6rec.serving.bundle`.
Numpy and scipy only, like the rest of the format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from m6rec.serving.bundle import DomainBundle


class BundleError(ValueError):
    """A bundle folder or a DomainBundle is malformed (names the file or array at fault)."""


@dataclass(frozen=True, eq=False)
class HistoryScorer:
    """Users scored from their recent items by a :class:`m6rec.models.attention.HistoryAttention`.

    ``config``: its constructor arguments (``dim``, ``n_interests`` = K focused interests as passed to the
    constructor, not the module's K + 1 pooled vectors, ``max_len``, ``pooling``, ``hidden``); ``weights``: its state
    dict as float32 arrays; ``recency``: the domain's recency bias ``[K, max_len]`` (None without one); ``history``:
    int64 ``[n_users, max_len]``, each user's items oldest first, right-aligned, -1 padded.
    """

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    history: np.ndarray
    recency: np.ndarray | None = None

    def __post_init__(self) -> None:
        missing = sorted({"dim", "n_interests", "max_len", "pooling"} - set(self.config))
        if missing:
            raise BundleError(f"history_scorer config lacks {missing}")
        length = int(self.config["max_len"])
        if self.history.ndim != 2 or self.history.shape[1] != length:
            raise BundleError(f"history_scorer.history must be [n_users, {length}], got {self.history.shape}")
        if not np.issubdtype(self.history.dtype, np.integer):
            raise BundleError(f"history_scorer.history must hold integer item indices, got {self.history.dtype}")
        if self.recency is not None and (self.recency.ndim != 2 or self.recency.shape[1] != length):
            raise BundleError(f"history_scorer.recency must be [K, {length}], got {self.recency.shape}")
        for name, arr in self.weights.items():
            if name in _SCORER_RESERVED:
                raise BundleError(f"history_scorer weight name {name!r} is reserved")
            if not np.isfinite(arr).all():
                raise BundleError(f"history_scorer weight {name} holds NaN or inf values")


_SCORER_RESERVED = ("history", "recency")
HistoryScorer.kind = "history"
STANDARDISE = ("user-z",)


def _csr(m: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise BundleError(f"{name} must be a scipy sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m, dtype=np.float32)
    if not np.isfinite(m.data).all():
        raise BundleError(f"{name} holds NaN or inf values")
    return m


def _vector(v: Any, n: int, name: str) -> None:
    if not isinstance(v, np.ndarray) or v.shape != (n,) or not np.isfinite(v).all():
        raise BundleError(f"{name} must be a finite [{n}] array, got {getattr(v, 'shape', type(v).__name__)}")


@dataclass(frozen=True, eq=False)
class ItemItemScorer:
    """``scores = history @ matrix`` (ItemKNN, EASE): ``history`` csr [n_users, n_items] (train + valid);
    ``matrix`` csr [n_items, n_items] or dense [n_active, n_active] over the sorted items ``active``."""

    history: sp.csr_matrix
    matrix: np.ndarray | sp.csr_matrix
    active: np.ndarray | None = None

    kind = "itemitem"

    @property
    def n_users(self) -> int:
        return int(self.history.shape[0])

    @property
    def dense(self) -> bool:
        return not sp.issparse(self.matrix)

    def check(self, n_items: int) -> None:
        h = _csr(self.history, "itemitem history")
        if h.shape[1] != n_items:
            raise BundleError(f"itemitem history has {h.shape[1]} items, expected {n_items}")
        if self.dense:
            if self.active is None:
                raise BundleError("a dense itemitem matrix needs its active items")
            act = np.asarray(self.active)
            n = len(act)
            if not np.issubdtype(act.dtype, np.integer) or act.ndim != 1 or (n and (act.min() < 0 or
                                                                                   act.max() >= n_items)):
                raise BundleError(f"itemitem active must be integer item indices in [0, {n_items})")
            if not isinstance(self.matrix, np.ndarray) or self.matrix.shape != (n, n):
                raise BundleError(f"dense itemitem matrix must be [{n}, {n}] (active items), got "
                                  f"{getattr(self.matrix, 'shape', None)}")
            if not np.isfinite(self.matrix).all():
                raise BundleError("itemitem matrix holds NaN or inf values")
        else:
            m = _csr(self.matrix, "itemitem matrix")
            if m.shape != (n_items, n_items):
                raise BundleError(f"itemitem matrix has shape {m.shape}, expected {(n_items, n_items)}")


@dataclass(frozen=True, eq=False)
class GraphFilterScorer:
    """GF-CF's two filters on a user's train + valid row (see the module docstring)."""

    history: sp.csr_matrix
    norm: sp.csr_matrix  # [n_train_users, n_items]
    basis: np.ndarray  # float32 [k, n_items]
    inv_degree: np.ndarray  # float32 [n_items]
    sqrt_degree: np.ndarray  # float32 [n_items]
    alpha: float

    kind = "graphfilter"

    @property
    def n_users(self) -> int:
        return int(self.history.shape[0])

    def check(self, n_items: int) -> None:
        for name, m in (("graphfilter history", self.history), ("graphfilter norm", self.norm)):
            if _csr(m, name).shape[1] != n_items:
                raise BundleError(f"{name} has {m.shape[1]} items, expected {n_items}")
        if not isinstance(self.basis, np.ndarray) or self.basis.ndim != 2 or self.basis.shape[1] != n_items:
            raise BundleError(f"graphfilter basis must be [k, {n_items}], got {getattr(self.basis, 'shape', None)}")
        _vector(self.inv_degree, n_items, "graphfilter inv_degree")
        _vector(self.sqrt_degree, n_items, "graphfilter sqrt_degree")
        if not np.isfinite(self.alpha):
            raise BundleError("graphfilter alpha must be finite")


@dataclass(frozen=True, eq=False)
class PopularityScorer:
    """Every one of ``n_users`` users scores ``counts``."""

    counts: np.ndarray  # float32 [n_items]
    users: int

    kind = "popularity"

    @property
    def n_users(self) -> int:
        return int(self.users)

    def check(self, n_items: int) -> None:
        _vector(self.counts, n_items, "popularity scores")


@dataclass(frozen=True, eq=False)
class BlendScorer:
    """``sum_c weights[c] * standardise(component c's scores)``; components are DomainBundles of the same users and
    items (same raw ids), none of them a blend."""

    components: tuple["DomainBundle", ...]
    names: tuple[str, ...]
    weights: tuple[float, ...]
    standardise: str = "user-z"

    kind = "blend"

    @property
    def n_users(self) -> int:
        return self.components[0].n_users if self.components else 0

    def check(self, n_items: int) -> None:
        if not self.components:
            raise BundleError("a blend needs at least one component")
        if not (len(self.components) == len(self.names) == len(self.weights)):
            raise BundleError(f"blend has {len(self.components)} components, {len(self.names)} names and "
                              f"{len(self.weights)} weights")
        if self.standardise not in STANDARDISE:
            raise BundleError(f"blend standardise {self.standardise!r} is not one of {STANDARDISE}")
        if not all(np.isfinite(w) for w in self.weights):
            raise BundleError("blend weights must be finite")
        for name, c in zip(self.names, self.components):
            if c.kind == "blend":
                raise BundleError(f"blend component {name!r} is itself a blend")
            if c.n_items != n_items or c.n_users != self.n_users:
                raise BundleError(f"blend component {name!r} has {c.n_users} users x {c.n_items} items, expected "
                                  f"{self.n_users} x {n_items}")


RowScorer = ItemItemScorer | GraphFilterScorer | PopularityScorer | BlendScorer
