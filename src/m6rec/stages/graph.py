"""Stage `graph`: the training interactions of the source domains -> one bipartite user-item graph.

Writes `out_dir`/graph.pt (global-id edges, edge domains and the cached normalised adjacency D^-1/2 A D^-1/2 as
CSR) and graph.json, and the node/edge counts to `metrics`. See :mod:`m6rec.graph.build` for the numbering.
"""

from __future__ import annotations

import logging
import time

from m6rec.config import GraphParams, section
from m6rec.data.dataset import load_prepared
from m6rec.graph.build import build_graph, save_graph
from m6rec.stage_io import stage_params, write_json

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "graph", GraphParams)
    t0 = time.perf_counter()
    prepared = load_prepared(cfg.in_dir)
    graph = build_graph(prepared, list(cfg.domains))
    counts = save_graph(graph, cfg.out_dir)
    counts["build_s"] = round(time.perf_counter() - t0, 2)
    write_json(cfg.metrics, counts)
    log.info("graph: %d nodes (%d users, %d items), %d edges from %s -> %s (%.1fs)", counts["n_nodes"],
             counts["n_users"], counts["n_items"], counts["n_edges"], ", ".join(graph.source_domains), cfg.out_dir,
             counts["build_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
