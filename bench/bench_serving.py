"""HTTP load test of the BentoML service: p50/p95/p99 latency and req/s of POST /recommend at several concurrencies.

    nice -n 10 .venv/bin/python bench/bench_serving.py [--scenario gowalla default gowalla-attention]
        [--concurrency 1 16 64] [--duration 10] [--client wrk aiohttp] [--workers 1] [--max-batch 64] [--svd]
        [--out FILE.json]

Scenarios (bundles built from data/validated or data/prepared, served from a temporary folder, ``M6REC_BUNDLE``):

* ``gowalla``: the lightgcn-gowalla domain, 29,858 users x 40,981 items x 64 d (random vectors unless ``--svd``:
  the serving cost does not depend on the values);
* ``default``: every other prepared domain, SVD-64 vectors, requests spread over all their users;
* ``bundle``: an existing bundle folder given with ``--bundle`` (e.g. ``models/finetune/bundle``, the attention
  family a default ``make run`` promotes), requests spread over all its users;
* ``gowalla-attention``: the Gowalla catalogue scored by a history-attention model (the multitask stage's
  ``HistoryAttention``, K = 4 interests + the uniform one, each user's last 50 training items, seeded random weights:
  what an attention model costs to serve at 41k items);
* ``catalogue-1m``: 1M items x 64 d and 20k users from ``bench/bench_ann.py``'s clustered generator (power-law
  cluster sizes, users near 1-3 clusters, ~20 seen items each, half of them from the user's own exact top): past
  ``serve.ann_min_items``, so the service recommends from its IVF index (:mod:`m6rec.serving.ann`). The in-process
  figures add recall@k of the served answers against exact top-k with the same seen items excluded.

Each request is a known user (drawn at random, fixed seed), k=10, seen items masked. Clients: ``wrk`` (C, one
thread, Lua script cycling through the request bodies; used when installed) and an asyncio ``aiohttp`` generator
(one Python process). Keep-alive connections are opened and warmed for 1 s before each measured run. Both clients
share the 2 CPU cores with the server, so the figures are a floor for the server alone; ``server CPU ms/req``
(user + system time of the server's processes per request) is the figure that does not depend on the neighbours.
Also printed: the in-process cost of one request (Recommender.recommend) and of batched scoring, to say where
the time goes and what adaptive batching could save.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, "requests": %%d, ' ..
    '"duration_s": %%.3f, "errors": %%d, "non_2xx": %%d}\n',
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def build_catalogue(out: Path, dim: int, n_items: int = 1_000_000, n_users: int = 20_000) -> dict:
    """Export a synthetic clustered catalogue (bench_ann.py's generator) as a one-domain dot-product bundle."""
    import scipy.sparse as sp

    sys.path.insert(0, str(REPO / "bench"))
    from bench_ann import exact_ranking, make_catalogue, make_seen, make_users

    from m6rec.serving.bundle import DomainBundle
    from m6rec.serving.bundle_io import export_bundle

    rng = np.random.default_rng(0)
    items, centres, sizes = make_catalogue(n_items, dim, rng)
    users = make_users(centres, sizes, n_users, rng)
    seen = make_seen(exact_ranking(items, users, 300), n_items, rng)
    rows = np.repeat(np.arange(n_users), [len(s) for s in seen])
    seen_csr = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(seen))),
                             shape=(n_users, n_items))
    popularity = np.asarray(seen_csr.sum(axis=0), dtype=np.float32).ravel()
    raw_item, raw_user = tuple(f"i{i}" for i in range(n_items)), tuple(f"u{u}" for u in range(n_users))
    domain = DomainBundle(item_vectors=items, user_vectors=users, popularity=popularity, seen=seen_csr,
                          titles=raw_item, raw_item=raw_item, raw_user=raw_user)
    export_bundle(out, {"catalogue-1m": domain}, {"model": "bench-catalogue-1m", "data_version": "bench"})
    return {"catalogue-1m": list(raw_user)}


def build_bundle(scenario: str, data_dir: Path, out: Path, dim: int, svd: bool) -> dict:
    """Export the scenario's bundle to ``out``; returns {domain: raw user ids} for the request mix."""
    if scenario == "catalogue-1m":
        return build_catalogue(out, dim)
    from m6rec.data.dataset import domain_data, load_prepared
    from m6rec.serving.bundle_io import export_bundle
    from m6rec.serving.export import make_domain_bundle, raw_user_ids

    prepared = load_prepared(data_dir)
    gowalla = "lightgcn-gowalla"
    names = [gowalla] if scenario.startswith("gowalla") else [d for d in prepared.domains if d != gowalla]
    domains, users = {}, {}
    rng = np.random.default_rng(0)
    for name in names:
        data = domain_data(prepared, name)
        if scenario.startswith("gowalla") and not svd:
            u = rng.standard_normal((data.n_users, dim)).astype(np.float32)
            v = rng.standard_normal((data.n_items, dim)).astype(np.float32)
        else:
            import scipy.sparse.linalg as sla

            k = min(dim, min(data.train.shape) - 1)
            uu, s, vt = sla.svds(data.train.astype(np.float64), k=k, random_state=0)
            u, v = (uu * np.sqrt(s)).astype(np.float32), (vt.T * np.sqrt(s)).astype(np.float32)
        raw = raw_user_ids(prepared, name)
        scorer = attention_scorer(data, dim) if scenario == "gowalla-attention" else None
        domains[name] = make_domain_bundle(data, raw, v, None if scorer else u, scorer=scorer)
        users[name] = list(raw)
    export_bundle(out, domains, {"model": f"bench-{scenario}", "data_version": "bench"})
    return users


def attention_scorer(data, dim: int, n_interests: int = 4, max_len: int = 50):
    """A seeded HistoryAttention over each user's last `max_len` training items, as a bundle's history scorer."""
    import torch

    from m6rec.data.sequences import split_histories
    from m6rec.models.attention import HistoryAttention
    from m6rec.serving.bundle_scorers import HistoryScorer

    torch.manual_seed(0)
    att = HistoryAttention(dim, n_interests=n_interests, max_len=max_len, pooling="attention")
    recency = np.broadcast_to(np.linspace(-5.0, 0.0, max_len, dtype=np.float32), (n_interests, max_len)).copy()
    return HistoryScorer(config={"dim": dim, "n_interests": n_interests, "max_len": max_len, "pooling": "attention",
                                 "hidden": dim},
                         weights={k: t.detach().numpy().copy() for k, t in att.state_dict().items()},
                         history=split_histories(data, max_len)["test"], recency=recency)


def request_bodies(users: dict, n: int = 5000, k: int = 10) -> list[str]:
    rng = np.random.default_rng(1)
    domains = list(users)
    out = []
    for _ in range(n):
        d = domains[rng.integers(len(domains))]
        out.append(json.dumps({"domain": d, "user": users[d][rng.integers(len(users[d]))], "k": k}))
    return out


def run_wrk(url: str, bodies_file: Path, concurrency: int, duration: float, tmp: Path) -> dict:
    script = tmp / "recommend.lua"
    script.write_text(WRK_SCRIPT % {"bodies": bodies_file})
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--timeout", "10s", "-s", str(script), url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    r["req_per_s"] = r["requests"] / r["duration_s"]
    return r


async def _aiohttp_load(url: str, bodies: list[str], concurrency: int, duration: float) -> dict:
    import aiohttp

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                async with session.post(f"{url}/recommend", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(lat), "duration_s": elapsed,
            "errors": errors, "non_2xx": errors, "req_per_s": len(lat) / elapsed}


def in_process_costs(bundle_dir: Path, bodies: list[str], n: int = 2000) -> dict:
    """Per-request compute inside the server (no HTTP), and batched scoring per user for comparison."""
    import torch

    from m6rec.serving.bundle_io import load_bundle
    from m6rec.serving.recommender import Recommender

    torch.set_num_threads(1)
    rec = Recommender(load_bundle(bundle_dir))
    reqs = [json.loads(b) for b in bodies[:n]]
    for r in reqs[:50]:
        rec.recommend(r["domain"], r["user"], r["k"])
    t0 = time.perf_counter()
    for r in reqs:
        rec.recommend(r["domain"], r["user"], r["k"])
    single_ms = (time.perf_counter() - t0) / len(reqs) * 1e3
    # Largest catalogue: cost of scoring + top-k (the serving path, DomainScorer.top_k) for B users at once, per user.
    name, index = max(rec.domains.items(), key=lambda kv: kv[1].n_items)
    out = {"recommend_ms": single_ms, "largest_domain": name, "n_items": index.n_items}
    if index.ann is not None:  # served from the approximate index: recall against exact, same seen items left out
        k, hits, raw_users = 20, 0, list(index.user_index)
        n_users = min(500, len(raw_users))
        for u in range(n_users):
            served = rec.recommend(name, raw_users[u], k)
            _, exact = index.ann.exact(index.scorer.user_vectors[u].numpy(), k, index.seen(u).numpy())
            hits += len({index.item_index[r["item"]] for r in served["items"]} & set(exact.tolist()))
        out.update(index=index.ann.describe, index_build_s=index.ann.build_s, recall20_vs_exact=hits / (k * n_users))
        return out  # the batched figures below are exact scoring, which this catalogue is not served with
    for b in (1, 16, 64):
        users = torch.arange(b)
        for _ in range(3):
            index.scorer.top_k(users, 10)
        reps = max(5, 400 // b)
        t0 = time.perf_counter()
        for _ in range(reps):
            index.scorer.top_k(users, 10)
        out[f"score_topk_batch{b}_ms_per_user"] = (time.perf_counter() - t0) / reps / b * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="+", default=["gowalla", "default"],
                        choices=["gowalla", "default", "gowalla-attention", "bundle", "catalogue-1m"])
    parser.add_argument("--bundle", default="", help="bundle folder served by scenario 'bundle'")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per (client, concurrency) run")
    parser.add_argument("--client", nargs="+", default=["wrk", "aiohttp"], choices=["wrk", "aiohttp"])
    parser.add_argument("--workers", type=int, default=1, help="BentoML worker processes")
    parser.add_argument("--access-log", action="store_true", help="keep BentoML's per-request access log on")
    parser.add_argument("--max-batch", type=int, default=64, help="serve.max_batch (1 = no micro-batching)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--svd", action="store_true", help="SVD vectors for gowalla too (slower to build)")
    parser.add_argument("--data-dir", default="", help="canonical data (default data/validated, else data/prepared)")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    if not args.data_dir:
        validated = REPO / "data" / "validated"
        args.data_dir = str(validated if (validated / "meta.json").is_file() else REPO / "data" / "prepared")
    from m6rec.serving.local_server import LocalServer

    clients = [c for c in args.client if c != "wrk" or shutil.which("wrk")]
    if "wrk" in args.client and "wrk" not in clients:
        print("wrk not installed (apt-get install wrk): skipping it", file=sys.stderr)
    results = {"load_avg_start": os.getloadavg(), "workers": args.workers, "access_log": args.access_log,
               "max_batch": args.max_batch,
               "cpus": os.cpu_count(), "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="m6rec-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for scenario in args.scenario:
            t0 = time.perf_counter()
            bundle = tmp / f"bundle-{scenario}"
            if scenario == "bundle":
                from m6rec.serving.bundle_io import load_bundle

                if not args.bundle:
                    parser.error("--scenario bundle needs --bundle FOLDER")
                bundle = Path(args.bundle).resolve()
                users = {d: list(b.raw_user) for d, b in load_bundle(bundle).domains.items()}
            else:
                users = build_bundle(scenario, Path(args.data_dir), bundle, args.dim, args.svd)
            build_s = time.perf_counter() - t0
            bodies = request_bodies(users)
            bodies_file = tmp / f"bodies-{scenario}.txt"
            bodies_file.write_text("\n".join(bodies) + "\n")
            costs = in_process_costs(bundle, bodies)
            options = [f"services.m6rec.workers={args.workers}"]
            if not args.access_log:
                options.append("services.m6rec.logging.access.enabled=false")
            env = {"M6REC_BUNDLE": str(bundle), "BENTOML_CONFIG_OPTIONS": " ".join(options),
                   "M6REC_PARAMS": str(tmp / "no-params.yaml"), "M6REC_MAX_BATCH": str(args.max_batch)}
            runs = []
            with LocalServer(env=env, cwd=tmp, log_path=tmp / f"serve-{scenario}.log") as server:
                print(f"[{scenario}] bundle built in {build_s:.1f} s; server ready in {server.startup_s:.1f} s; "
                      f"in-process recommend {costs['recommend_ms']:.3f} ms", flush=True)
                asyncio.run(_aiohttp_load(server.url, bodies, 4, 2.0))  # warm-up
                for client in clients:
                    for c in args.concurrency:
                        # Open and warm this many keep-alive connections first: connection set-up is not measured.
                        if client == "wrk":
                            run_wrk(server.url, bodies_file, c, 1, tmp)
                        else:
                            asyncio.run(_aiohttp_load(server.url, bodies, c, 1.0))
                        cpu0, rc0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
                        if client == "wrk":
                            r = run_wrk(server.url, bodies_file, c, args.duration, tmp)
                            rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                            r["client_cpu_ms_per_req"] = ((rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime)
                                                          * 1e3 / max(r["requests"], 1))
                        else:
                            r = asyncio.run(_aiohttp_load(server.url, bodies, c, args.duration))
                        r["server_cpu_ms_per_req"] = (server.cpu_seconds() - cpu0) * 1e3 / max(r["requests"], 1)
                        r.update(client=client, concurrency=c)
                        runs.append(r)
                        print(f"[{scenario}] {client:7s} c={c:<3d} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms"
                              f"  p99 {r['p99_ms']:7.2f} ms  {r['req_per_s']:8.1f} req/s  server CPU "
                              f"{r['server_cpu_ms_per_req']:.2f} ms/req  errors {r['errors']} non-2xx {r['non_2xx']}",
                              flush=True)
            results["scenarios"][scenario] = {"domains": list(users), "bundle_build_s": build_s,
                                              "server_startup_s": server.startup_s, "in_process": costs,
                                              "runs": runs}
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in results.items() if k != "scenarios"}))
    for name, sc in results["scenarios"].items():
        print(name, json.dumps(sc["in_process"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
