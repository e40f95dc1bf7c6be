"""Interactions -> one bipartite user-item graph over global ids, with its normalised adjacency.

Node numbering: users first, then items. A user with global id ``u`` is node ``u``; an item with global id ``i`` is
node ``n_users + i``. Global ids are the project's, ``offset[domain] + local`` with the offsets of
:func:`m6rec.data.dataset.global_offsets` over the prepared domains, so they agree with every other stage. The graph
covers the prefix of the domain order that ends with the last source domain: a non-source domain before it is
present as isolated nodes, domains after it are left out (with the default order, Gowalla, last and without text, is
not a node at all when it is not a source: 78k isolated nodes would more than double the cost of every propagation).

The LightGCN propagation matrix is the symmetric normalised adjacency

    Â = D^-1/2 A D^-1/2,   A = [[0, R], [R^T, 0]],   R[u, i] = 1 if (u, i) is a (deduplicated) training pair,

with ``D`` the node degrees. Isolated nodes (degree 0) get empty rows and columns rather than a division by zero.
``Â`` is stored as a ``torch.sparse_csr_tensor`` so that propagation is one sparse-dense product per layer.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from m6rec.data.dataset import Prepared, global_offsets

GRAPH_FILE = "graph.pt"
COUNTS_FILE = "graph.json"


def sparse_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """A square torch sparse CSR tensor (quietly: torch warns that CSR support is beta)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=(n, n), check_invariants=False)


@dataclass(frozen=True)
class BipartiteGraph:
    """A multi-domain user-item graph. Tensors are on the CPU; ids are global (see the module docstring)."""

    domains: tuple[str, ...]  # the domains of the id space, in global-offset order (a prefix of the prepared order)
    source_domains: tuple[str, ...]  # the domains whose interactions are edges
    n_users_per_domain: tuple[int, ...]
    n_items_per_domain: tuple[int, ...]
    edge_user: torch.Tensor  # int64 [E] global user id
    edge_item: torch.Tensor  # int64 [E] global item id
    edge_domain: torch.Tensor  # int64 [E] index into `domains`
    adj: torch.Tensor  # float32 sparse CSR [N, N], N = n_users + n_items, the normalised adjacency

    @property
    def n_users(self) -> int:
        return int(sum(self.n_users_per_domain))

    @property
    def n_items(self) -> int:
        return int(sum(self.n_items_per_domain))

    @property
    def num_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def num_edges(self) -> int:
        """Number of distinct user-item pairs (each is two directed entries of the adjacency)."""
        return int(self.edge_user.numel())

    @property
    def user_offsets(self) -> dict[str, int]:
        return dict(zip(self.domains, np.concatenate([[0], np.cumsum(self.n_users_per_domain)[:-1]]).tolist()))

    @property
    def item_offsets(self) -> dict[str, int]:
        return dict(zip(self.domains, np.concatenate([[0], np.cumsum(self.n_items_per_domain)[:-1]]).tolist()))

    @property
    def user_domain(self) -> torch.Tensor:
        """int64 [n_users]: domain index of each user."""
        return torch.repeat_interleave(torch.arange(len(self.domains)), torch.tensor(self.n_users_per_domain))

    @property
    def item_domain(self) -> torch.Tensor:
        """int64 [n_items]: domain index of each item."""
        return torch.repeat_interleave(torch.arange(len(self.domains)), torch.tensor(self.n_items_per_domain))

    def degrees(self) -> torch.Tensor:
        """int64 [N]: number of distinct neighbours of every node (users first, then items)."""
        deg = torch.zeros(self.num_nodes, dtype=torch.int64)
        deg.index_add_(0, self.edge_user, torch.ones_like(self.edge_user))
        deg.index_add_(0, self.n_users + self.edge_item, torch.ones_like(self.edge_item))
        return deg

    def counts(self) -> dict:
        """Node and edge counts, overall and per domain (JSON-ready)."""
        deg = self.degrees()
        per_domain = {}
        u_off, i_off = self.user_offsets, self.item_offsets
        edges_per = torch.bincount(self.edge_domain, minlength=len(self.domains)).tolist()
        for k, d in enumerate(self.domains):
            u_deg = deg[u_off[d]: u_off[d] + self.n_users_per_domain[k]]
            i_deg = deg[self.n_users + i_off[d]: self.n_users + i_off[d] + self.n_items_per_domain[k]]
            per_domain[d] = {
                "source": d in self.source_domains,
                "n_users": self.n_users_per_domain[k],
                "n_items": self.n_items_per_domain[k],
                "n_edges": int(edges_per[k]),
                "n_users_with_edges": int((u_deg > 0).sum()),
                "n_items_with_edges": int((i_deg > 0).sum()),
            }
        return {
            "n_nodes": self.num_nodes,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_edges": self.num_edges,
            "n_adj_nonzeros": int(self.adj.values().numel()),
            "n_isolated_nodes": int((deg == 0).sum()),
            "source_domains": list(self.source_domains),
            "per_domain": per_domain,
        }

    def to_pyg(self):
        """The graph as a homogeneous ``torch_geometric.data.Data`` (both edge directions, domain attributes)."""
        from torch_geometric.data import Data

        src = torch.cat([self.edge_user, self.n_users + self.edge_item])
        dst = torch.cat([self.n_users + self.edge_item, self.edge_user])
        node_type = torch.cat([torch.zeros(self.n_users, dtype=torch.int64),
                               torch.ones(self.n_items, dtype=torch.int64)])
        return Data(
            edge_index=torch.stack([src, dst]),
            edge_domain=torch.cat([self.edge_domain, self.edge_domain]),
            node_domain=torch.cat([self.user_domain, self.item_domain]),
            node_type=node_type,  # 0 = user, 1 = item
            num_nodes=self.num_nodes,
        )

    def to_state(self) -> dict:
        """Plain tensors and lists (safe for ``torch.load(weights_only=True)``)."""
        return {
            "domains": list(self.domains),
            "source_domains": list(self.source_domains),
            "n_users_per_domain": list(self.n_users_per_domain),
            "n_items_per_domain": list(self.n_items_per_domain),
            "edge_user": self.edge_user,
            "edge_item": self.edge_item,
            "edge_domain": self.edge_domain,
            "adj_crow": self.adj.crow_indices(),
            "adj_col": self.adj.col_indices(),
            "adj_values": self.adj.values(),
        }

    @classmethod
    def from_state(cls, state: dict) -> BipartiteGraph:
        """Inverse of :meth:`to_state`; the cached adjacency is reused, not recomputed."""
        n = int(sum(state["n_users_per_domain"]) + sum(state["n_items_per_domain"]))
        adj = sparse_csr(state["adj_crow"], state["adj_col"], state["adj_values"], n)
        return cls(
            domains=tuple(state["domains"]),
            source_domains=tuple(state["source_domains"]),
            n_users_per_domain=tuple(int(x) for x in state["n_users_per_domain"]),
            n_items_per_domain=tuple(int(x) for x in state["n_items_per_domain"]),
            edge_user=state["edge_user"],
            edge_item=state["edge_item"],
            edge_domain=state["edge_domain"],
            adj=adj,
        )


def normalized_adjacency(edge_user: np.ndarray, edge_item: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph as a float32 torch sparse CSR tensor ``[N, N]``.

    Edges must be distinct (u, i) pairs with ids in range; isolated nodes get empty rows.
    """
    edge_user = np.asarray(edge_user, dtype=np.int64)
    edge_item = np.asarray(edge_item, dtype=np.int64)
    n = n_users + n_items
    deg_u = np.bincount(edge_user, minlength=n_users).astype(np.float64)
    deg_i = np.bincount(edge_item, minlength=n_items).astype(np.float64)
    w = 1.0 / np.sqrt(deg_u[edge_user] * deg_i[edge_item])
    rows = np.concatenate([edge_user, n_users + edge_item])
    cols = np.concatenate([n_users + edge_item, edge_user])
    mat = sp.csr_matrix((np.concatenate([w, w]).astype(np.float32), (rows, cols)), shape=(n, n))
    mat.sort_indices()
    return sparse_csr(torch.from_numpy(mat.indptr.astype(np.int64)), torch.from_numpy(mat.indices.astype(np.int64)),
                      torch.from_numpy(mat.data), n)


def graph_from_edges(
    domains: list[str] | tuple[str, ...],
    n_users_per_domain: list[int] | tuple[int, ...],
    n_items_per_domain: list[int] | tuple[int, ...],
    edge_user: np.ndarray,
    edge_item: np.ndarray,
    edge_domain: np.ndarray,
    source_domains: list[str] | tuple[str, ...] | None = None,
) -> BipartiteGraph:
    """Build the graph from global-id edge arrays (duplicates are merged; first occurrence's domain kept).

    `source_domains` defaults to the domains that have at least one edge.
    """
    n_users, n_items = int(sum(n_users_per_domain)), int(sum(n_items_per_domain))
    edge_user = np.asarray(edge_user, dtype=np.int64)
    edge_item = np.asarray(edge_item, dtype=np.int64)
    edge_domain = np.asarray(edge_domain, dtype=np.int64)
    if not (len(edge_user) == len(edge_item) == len(edge_domain)):
        raise ValueError(f"edge arrays differ in length: {len(edge_user)}, {len(edge_item)}, {len(edge_domain)}")
    for name, arr, hi in (("edge_user", edge_user, n_users), ("edge_item", edge_item, n_items),
                          ("edge_domain", edge_domain, len(domains))):
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            raise ValueError(f"{name} out of range [0, {hi}): min {arr.min()}, max {arr.max()}")
    key = edge_user * n_items + edge_item
    _, first = np.unique(key, return_index=True)  # sorted by (user, item): deterministic edge order
    edge_user, edge_item, edge_domain = edge_user[first], edge_item[first], edge_domain[first]
    if source_domains is None:
        present = set(np.unique(edge_domain).tolist())
        source_domains = [d for k, d in enumerate(domains) if k in present]
    return BipartiteGraph(
        domains=tuple(domains),
        source_domains=tuple(source_domains),
        n_users_per_domain=tuple(int(x) for x in n_users_per_domain),
        n_items_per_domain=tuple(int(x) for x in n_items_per_domain),
        edge_user=torch.from_numpy(edge_user),
        edge_item=torch.from_numpy(edge_item),
        edge_domain=torch.from_numpy(edge_domain),
        adj=normalized_adjacency(edge_user, edge_item, n_users, n_items),
    )


def build_graph(prepared: Prepared, source_domains: list[str] | tuple[str, ...],
                splits: tuple[str, ...] = ("train",)) -> BipartiteGraph:
    """The graph of the `splits` interactions of `source_domains`, over the global ids of the prepared domains up to
    the last source domain (see the module docstring)."""
    if not source_domains:
        raise ValueError("source_domains is empty: name at least one domain whose interactions become edges")
    missing = sorted(set(source_domains) - set(prepared.domains))
    if missing:
        raise ValueError(f"source domains {missing} are not in the prepared data; available: {prepared.domains}")
    last = max(prepared.domains.index(d) for d in source_domains)
    domains = prepared.domains[: last + 1]
    meta = prepared.meta
    u_off, i_off = global_offsets(meta, "user"), global_offsets(meta, "item")
    inter = prepared.interactions
    rows = inter[inter["domain"].isin(list(source_domains)) & inter["split"].isin(list(splits))]
    dom = rows["domain"].to_numpy()
    dom_index = pd.Series(range(len(domains)), index=domains)
    return graph_from_edges(
        domains,
        [int(meta["per_domain"][d]["n_users"]) for d in domains],
        [int(meta["per_domain"][d]["n_items"]) for d in domains],
        rows["user"].to_numpy(dtype=np.int64) + pd.Series(u_off).reindex(dom).to_numpy(dtype=np.int64),
        rows["item"].to_numpy(dtype=np.int64) + pd.Series(i_off).reindex(dom).to_numpy(dtype=np.int64),
        dom_index.reindex(dom).to_numpy(dtype=np.int64),
        source_domains=[d for d in domains if d in set(source_domains)],
    )


def save_graph(graph: BipartiteGraph, folder: str | Path) -> dict:
    """Write ``graph.pt`` (tensors, cached adjacency included) and ``graph.json`` (counts); returns the counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(graph.to_state(), folder / GRAPH_FILE)
    counts = graph.counts()
    (folder / COUNTS_FILE).write_text(json.dumps(counts, indent=2), encoding="utf-8")
    return counts


def load_graph(folder: str | Path) -> BipartiteGraph:
    """Read a graph written by :func:`save_graph` (no recomputation of the normalised adjacency)."""
    path = Path(folder) / GRAPH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no graph at {path}: run `dvc repro graph` (python -m m6rec.stages.graph)")
    return BipartiteGraph.from_state(torch.load(path, map_location="cpu", weights_only=True))
