"""Approximate nearest-neighbour serving index (FAISS) against today's exact ``torch.topk``: recall@20, latency, memory.

Serving today (:meth:`m6rec.serving.scoring.DomainScorer.top_k`) scores a user vector against every item vector and
takes ``torch.topk``, with the user's seen items set to ``-inf`` first. This bench measures where that stops fitting
a 5 ms budget and what a FAISS index (``IndexHNSWFlat`` and ``IndexIVFFlat``, inner product) gives instead, at
41k (Gowalla's catalogue), 200k and 1M items x 64 d, against the target of issue #15: 1M items, p99 under 20 ms at
concurrency 8 with recall@20 >= 0.95 of exact.

Rerun (faiss-cpu is in the project's lock file since the service uses it, :mod:`m6rec.serving.ann`)::

    cd /work/main && PYTHONPATH=src nice -n 15 .venv/bin/python bench/bench_ann.py \
        [--sizes real 40981 200000 1000000] [--queries 1000] [--threads 2] \
        [--bundle /work/fresh5/models/pretrain/bundle --domain lastfm-hetrec2011] [--out bench/results/ann.json]

(The committed ``bench/results/ann.json`` was measured in a separate venv with the same FAISS 1.15.1.) The index
as the service builds and searches it, over HTTP at 1M items: ``bench/bench_serving.py --scenario catalogue-1m``.

Catalogue generator (:func:`make_catalogue`), not iid Gaussian: ``C = 2 sqrt(n)`` clusters whose sizes follow a
power law (Zipf weights ``rank^-1.1``: a few huge genres, a long tail of tiny ones); cluster centres grouped under
``C / 20`` topics (a centre is its topic plus noise), in an anisotropic space (dimension ``i`` scaled by
``(i+1)^-0.35``, as trained embeddings have a decaying spectrum); an item is its centre plus Gaussian noise of
per-cluster spread ``U(0.35, 0.8)`` (relative to the unit centre), then L2-normalised. Users (:func:`make_users`):
a mix of 1-3 clusters picked with the clusters' popularity (``size^0.5``-weighted), random positive weights, plus
noise 0.5, normalised: each query lies near item clusters, as a trained user vector lies near what the user liked.
Seen items (:func:`make_seen`): ``|seen| ~ lognormal`` (median 20, clipped to [1, 100]); half of them drawn from the
user's own exact top ``3 |seen|`` (a trained model ranks what a user saw high, which is what makes masking matter),
half uniformly from the catalogue.

Real case ``real``: the item vectors, user vectors and seen items (train + valid) of one domain of a serving bundle
(default the pretrain bundle's ``lastfm-hetrec2011``, 17,632 items, the largest dot-product catalogue on this
machine; its vectors are not normalised: norms 0.5-3.2), queries the bundle's users.

Measured per size, against exact top-20 (and exact top-20 with the seen items removed) of ``--queries`` users:

* exact (``torch.topk`` over the full catalogue, seen items masked as serving does): one query with 1 and with
  ``--threads`` torch threads, a batch of 64 (latency of the batch and per query), and 8 client threads issuing
  single queries (torch 1 thread);
* ``IndexHNSWFlat`` (M 32, efConstruction 128; efSearch swept) and ``IndexIVFFlat`` (nlist ``4 sqrt(n)``, trained on
  ``64 nlist`` items; nprobe swept): build time (``--threads`` OpenMP threads), index bytes (serialised) and RSS
  growth, recall@20; latency of one query single-threaded and at concurrency 8 (8 Python client threads issuing
  single queries, ``faiss.omp_set_num_threads(1)`` before each query; FAISS releases the GIL while it searches);
* excluding seen items, two ways: search ``k + |seen|`` then drop the seen ones (``overfetch``: what a service
  does on any index) and FAISS's own ``IDSelectorNot(IDSelectorBatch(seen))`` in the search parameters
  (``selector``); recall against the exact masked top-20, and the over-fetch path's latency (single and at 8).

Latencies are wall-clock per query, client side, in one process, with the calling thread's CPU time beside them
(``cpu_p50_ms``/``cpu_p99_ms``: the thread's own work, not its waits for a core; for torch with 2 threads, the
calling thread's share only). The bench runs niced on 2 cores shared with other jobs (the load average at start
and end is recorded): a nice-0 neighbour pre-empts a niced thread for whole scheduler slices, which puts
milliseconds into the wall p99 even of a 0.1 ms query, so read the measured concurrency-8 p99 as an upper bound.
Beside it, ``single.model_c8``: a closed-loop model (:func:`closed_loop`) of 8 clients on 2 free cores, FIFO, with
service times drawn from the measured single-query CPU times (1 thread): what concurrency 8 would cost on cores of
its own, GIL hand-offs and cache sharing left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
K = 20
MAX_SEEN = 100
DEPTH = max(3 * MAX_SEEN, K + MAX_SEEN)  # exact ranking depth kept per user: covers the seen draw and masked top-k
HNSW_M, HNSW_EFC = 32, 128
EF_SEARCH = (16, 32, 64, 128, 256, 512)
NPROBE = (4, 8, 16, 32, 64, 128)
CONCURRENCY = 8
CORES = 2  # cores of the project's machine, for the closed-loop model of concurrency 8 on free cores


# --------------------------------------------------------------------------------------------------- data

def make_catalogue(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items [n, dim] float32 unit rows, centres [C, dim], cluster sizes [C])`` of a clustered catalogue."""
    n_clusters = max(16, int(2 * np.sqrt(n)))
    weights = np.arange(1, n_clusters + 1, dtype=np.float64) ** -1.1
    sizes = rng.multinomial(n - n_clusters, weights / weights.sum()) + 1  # every cluster holds at least one item
    spectrum = (np.arange(dim) + 1.0) ** -0.35
    topics = rng.standard_normal((max(2, n_clusters // 20), dim))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[rng.integers(len(topics), size=n_clusters)]
    centres = centres + 0.6 * rng.standard_normal((n_clusters, dim)) / np.sqrt(dim)
    centres *= spectrum
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.35, 0.8, size=n_clusters)
    cluster = np.repeat(np.arange(n_clusters), sizes)
    items = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 200_000):  # bounded temporaries at 1M
        c = cluster[s:s + 200_000]
        noise = rng.standard_normal((len(c), dim)) * (spread[c, None] / np.sqrt(dim)) * spectrum / spectrum.mean()
        block = centres[c] + noise
        items[s:s + len(c)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return items[rng.permutation(n)], centres, sizes


def make_users(centres: np.ndarray, sizes: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_users, dim]`` float32 unit query vectors, each a noisy mix of 1-3 popularity-weighted clusters."""
    p = np.sqrt(sizes.astype(np.float64))
    p /= p.sum()
    dim = centres.shape[1]
    out = np.empty((n_users, dim), dtype=np.float32)
    for u in range(n_users):
        picks = rng.choice(len(centres), size=rng.integers(1, 4), p=p)
        v = (rng.uniform(0.3, 1.0, size=len(picks))[:, None] * centres[picks]).sum(0)
        v = v / np.linalg.norm(v) + 0.5 * rng.standard_normal(dim) / np.sqrt(dim)
        out[u] = v / np.linalg.norm(v)
    return out


def make_seen(ranking: np.ndarray, n_items: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seen items of each user: half from its exact top ``3 |seen|`` (``ranking [U, DEPTH]``), half uniform."""
    out = []
    for row in ranking:
        s = int(np.clip(rng.lognormal(np.log(20), 0.9), 1, MAX_SEEN))
        near = rng.choice(row[:3 * s], size=(s + 1) // 2, replace=False)
        out.append(np.unique(np.concatenate([near, rng.integers(n_items, size=s // 2)])).astype(np.int64))
    return out


def exact_ranking(items: np.ndarray, users: np.ndarray, depth: int, chunk: int = 64) -> np.ndarray:
    """Exact top-``depth`` items ``[U, depth]`` of every user by inner product (torch.topk over the catalogue)."""
    import torch

    it = torch.from_numpy(items)
    out = []
    for s in range(0, len(users), chunk):
        scores = torch.from_numpy(users[s:s + chunk]) @ it.T
        out.append(torch.topk(scores, min(depth, len(items)), dim=1).indices.numpy())
    return np.concatenate(out)


def masked_top(ranking: np.ndarray, seen: list[np.ndarray], k: int) -> np.ndarray:
    """Exact top-``k`` with the seen items removed, from the exact ranking (deep enough: ``k + |seen|``)."""
    return np.stack([row[~np.isin(row, s)][:k] for row, s in zip(ranking, seen)])


def recall(found: list[np.ndarray] | np.ndarray, truth: np.ndarray) -> float:
    """Mean ``|found_u ∩ truth_u| / k`` over users."""
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


# --------------------------------------------------------------------------------------------------- timing

def stats(lat_s: list[float] | np.ndarray, cpu_s: list[float] | np.ndarray) -> dict:
    """p50/p99/mean in milliseconds of wall latencies and p50/p99 of the calling thread's CPU time, in seconds.

    The CPU time of a query does not count the time its thread waited for a core, so it is the figure that does
    not depend on the neighbours (this bench runs niced beside other jobs: a nice-0 neighbour pre-empts it for a
    whole scheduler slice, which lands in the wall p99)."""
    a, c = np.asarray(lat_s) * 1e3, np.asarray(cpu_s) * 1e3
    r = lambda x: round(float(x), 3)  # noqa: E731
    return {"p50_ms": r(np.percentile(a, 50)), "p99_ms": r(np.percentile(a, 99)), "mean_ms": r(a.mean()),
            "cpu_p50_ms": r(np.percentile(c, 50)), "cpu_p99_ms": r(np.percentile(c, 99)), "n": int(len(a))}


def run_single(fn, n: int) -> tuple[dict, list]:
    """Latency stats and results of ``fn(i)`` for ``i < n``, one after another (after 5 warm-up calls)."""
    for i in range(min(5, n)):
        fn(i)
    lat, cpu, res = [], [], []
    for i in range(n):
        c0, t0 = time.thread_time(), time.perf_counter()
        r = fn(i)
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        res.append(r)
    out = stats(lat, cpu)
    out["model_c8"] = closed_loop(np.asarray(cpu), CONCURRENCY, CORES)
    return out, res


def closed_loop(service_s: np.ndarray, clients: int, servers: int, n: int = 20_000, seed: int = 0) -> dict:
    """p50/p99 (ms) of a closed loop of ``clients`` issuing one request after another to ``servers`` free cores
    (FIFO), each request's service time drawn from the measured single-query CPU times ``service_s``.

    A model, not a measurement: what the concurrency-8 figure would be on cores of its own, where the measured one
    also holds the waits for the neighbours' jobs."""
    import heapq

    rng = np.random.default_rng(seed)
    draws = service_s[rng.integers(len(service_s), size=n)]
    free = [0.0] * servers
    ready = [(0.0, c) for c in range(clients)]
    lat = np.empty(n)
    for j in range(n):
        t, c = heapq.heappop(ready)
        end = max(t, heapq.heappop(free)) + draws[j]
        lat[j] = end - t
        heapq.heappush(free, end)
        heapq.heappush(ready, (end, c))
    lat = lat[n // 10:] * 1e3  # past the start-up
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "servers": servers, "clients": clients}


def run_concurrent(fn, n: int, threads: int = CONCURRENCY, rounds: int = 2, init=None) -> dict:
    """Latency stats of ``fn(i)`` issued by ``threads`` client threads, ``rounds x n`` calls in all, and req/s."""
    lat: list[list[float]] = [[] for _ in range(threads)]
    cpu: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        if init is not None:
            init()
        for i in range(t, min(5, n) * threads, threads):  # warm-up
            fn(i % n)
        start.wait()
        for j in range(t, rounds * n, threads):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(j % n)
            lat[t].append(time.perf_counter() - t0)
            cpu[t].append(time.thread_time() - c0)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in pool:
        p.join()
    wall = time.perf_counter() - t0
    out = stats([x for part in lat for x in part], [x for part in cpu for x in part])
    out["qps"] = round(out["n"] / wall, 1)
    return out


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# --------------------------------------------------------------------------------------------------- methods

def bench_exact(items: np.ndarray, users: np.ndarray, seen: list[np.ndarray], truth_seen: np.ndarray,
                threads: int) -> list[dict]:
    """Serving's exact path: scores against the whole catalogue, seen items at -inf, torch.topk."""
    import torch

    it = torch.from_numpy(items)
    qs = torch.from_numpy(users)
    seen_t = [torch.from_numpy(s) for s in seen]
    n_lat = int(min(len(users), max(100, 2e8 / len(items))))  # ~200 single queries at 1M, all below 200k

    def one(i: int) -> np.ndarray:
        with torch.no_grad():
            s = it @ qs[i]
            s[seen_t[i]] = float("-inf")
            return torch.topk(s, K).indices.numpy()

    rows = []
    torch.set_num_threads(1)
    single1, found = run_single(one, n_lat)
    conc = run_concurrent(one, n_lat)
    torch.set_num_threads(threads)
    single_t, _ = run_single(one, n_lat)
    del single_t["model_c8"]  # the CPU time of the calling thread is not the whole query's here
    batch = 64

    def many(b: int) -> np.ndarray:
        s0 = (b * batch) % max(1, len(users) - batch + 1)
        with torch.no_grad():
            s = qs[s0:s0 + batch] @ it.T
            rows_i = torch.cat([torch.full((len(seen_t[s0 + j]),), j, dtype=torch.int64) for j in range(len(s))])
            s[rows_i, torch.cat(seen_t[s0:s0 + len(s)])] = float("-inf")
            return torch.topk(s, K, dim=1).indices.numpy()

    batched, _ = run_single(many, max(3, n_lat // batch))
    del batched["model_c8"]  # a batch is not a single request
    per_query = {k: round(v / batch, 3) if k.endswith("_ms") else v for k, v in batched.items()}
    rows.append({"method": "exact", "params": "torch.topk, seen masked",
                 "recall20": 1.0, "recall20_seen_overfetch": round(recall(found, truth_seen[:n_lat]), 4),
                 "recall20_seen_selector": None,
                 "single": single1, f"single_{threads}threads": single_t, "c8": conc,
                 "serving_single": single1, "serving_c8": conc,
                 f"batch{batch}_{threads}threads": batched, f"batch{batch}_{threads}threads_per_query": per_query,
                 "build_s": 0.0, "index_bytes": int(items.nbytes), "rss_delta_bytes": 0})
    torch.set_num_threads(threads)
    return rows


def build_hnsw(items: np.ndarray, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(items.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EFC
    index.add(items)
    return index


def build_ivf(items: np.ndarray, threads: int, rng: np.random.Generator):
    import faiss

    faiss.omp_set_num_threads(threads)
    nlist = int(4 * np.sqrt(len(items)))
    quantizer = faiss.IndexFlatIP(items.shape[1])
    index = faiss.IndexIVFFlat(quantizer, items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 20
    train = items[rng.choice(len(items), size=min(len(items), 64 * nlist), replace=False)]
    index.train(train)
    index.add(items)
    return index


def bench_index(kind: str, index, items: np.ndarray, users: np.ndarray, seen: list[np.ndarray], truth: np.ndarray,
                truth_seen: np.ndarray, threads: int, build_s: float, rss_delta: int) -> list[dict]:
    """Sweep the search parameter of a built index: recall@20 (plain, seen over-fetch, seen selector), latency."""
    import faiss

    index_bytes = int(faiss.serialize_index(index).nbytes)
    n = len(users)
    q1 = [users[i:i + 1] for i in range(n)]
    sels = [faiss.IDSelectorBatch(s) for s in seen]  # numpy int64 arrays: the SWIG wrapper takes them as is
    nots = [faiss.IDSelectorNot(s) for s in sels]
    sweep = EF_SEARCH if kind == "hnsw" else NPROBE
    rows = []
    for p in sweep:
        if kind == "hnsw":
            index.hnsw.efSearch = p
            params = f"M={HNSW_M} efC={HNSW_EFC} efSearch={p}"
            sel_params = [faiss.SearchParametersHNSW(efSearch=p, sel=s) for s in nots]
        else:
            index.nprobe = p
            params = f"nlist={index.nlist} nprobe={p}"
            sel_params = [faiss.SearchParametersIVF(nprobe=p, sel=s) for s in nots]

        def plain(i: int) -> np.ndarray:
            faiss.omp_set_num_threads(1)
            return index.search(q1[i], K)[1][0]

        def overfetch(i: int) -> np.ndarray:
            faiss.omp_set_num_threads(1)
            ids = index.search(q1[i], K + len(seen[i]))[1][0]
            return ids[~np.isin(ids, seen[i])][:K]

        def selector(i: int) -> np.ndarray:
            faiss.omp_set_num_threads(1)
            return index.search(q1[i], K, params=sel_params[i])[1][0]

        single, found = run_single(plain, n)
        serving_single, found_seen = run_single(overfetch, n)
        sel_single, found_sel = run_single(selector, n)
        conc = run_concurrent(plain, n)
        serving_conc = run_concurrent(overfetch, n)
        rows.append({"method": kind, "params": params, "search_param": p,
                     "recall20": round(recall(found, truth), 4),
                     "recall20_seen_overfetch": round(recall(found_seen, truth_seen), 4),
                     "recall20_seen_selector": round(recall(found_sel, truth_seen), 4),
                     "single": single, "c8": conc, "serving_single": serving_single, "serving_c8": serving_conc,
                     "selector_single": sel_single,
                     "build_s": round(build_s, 2), "index_bytes": index_bytes, "rss_delta_bytes": int(rss_delta)})
        print(f"  {kind} {params}: recall {rows[-1]['recall20']:.4f} seen {rows[-1]['recall20_seen_overfetch']:.4f}"
              f" c8 p99 {conc['p99_ms']:.2f} ms", flush=True)
    faiss.omp_set_num_threads(threads)
    return rows


# --------------------------------------------------------------------------------------------------- driver

def load_real(bundle: Path, domain: str, n_users: int, rng: np.random.Generator):
    """Items, sampled users and their seen items of one dot-product domain of a serving bundle."""
    from m6rec.serving.bundle_io import load_bundle

    d = load_bundle(bundle, [domain]).domains[domain]
    items = np.ascontiguousarray(d.item_vectors, dtype=np.float32)
    pick = np.sort(rng.choice(d.n_users, size=min(n_users, d.n_users), replace=False))
    users = np.ascontiguousarray(d.user_vectors[pick], dtype=np.float32)
    seen = [d.seen[u].indices.astype(np.int64) for u in pick]
    return items, users, seen


def run_size(size: str, args: argparse.Namespace) -> dict:
    """Every method on one catalogue (``size`` items, or ``real``)."""
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    if size == "real":
        items, users, seen = load_real(Path(args.bundle), args.domain, args.queries, rng)
        ranking = exact_ranking(items, users, max(DEPTH, K + max(len(s) for s in seen)))
        case = f"real {args.domain} ({Path(args.bundle).name})"
    else:
        items, centres, sizes = make_catalogue(int(size), args.dim, rng)
        users = make_users(centres, sizes, args.queries, rng)
        ranking = exact_ranking(items, users, DEPTH)
        seen = make_seen(ranking, len(items), rng)
        case = "synthetic clustered"
    truth = ranking[:, :K]
    truth_seen = masked_top(ranking, seen, K)
    print(f"[{size}] {len(items)} items x {items.shape[1]} d, {len(users)} queries, {case}; "
          f"data + exact truth {time.perf_counter() - t0:.1f} s", flush=True)
    out = {"size": len(items), "dim": int(items.shape[1]), "case": case, "queries": len(users),
           "seen_per_query_median": float(np.median([len(s) for s in seen])),
           "load_avg": os.getloadavg(), "rows": []}
    out["rows"] += bench_exact(items, users, seen, truth_seen, args.threads)
    print(f"  exact: single p50 {out['rows'][0]['single']['p50_ms']} ms", flush=True)
    for kind in ("hnsw", "ivf"):
        r0, t0 = rss_bytes(), time.perf_counter()
        index = build_hnsw(items, args.threads) if kind == "hnsw" else build_ivf(items, args.threads, rng)
        build_s, rss_delta = time.perf_counter() - t0, rss_bytes() - r0
        print(f"  {kind} built in {build_s:.1f} s", flush=True)
        out["rows"] += bench_index(kind, index, items, users, seen, truth, truth_seen, args.threads, build_s,
                                   rss_delta)
        del index
    return out


def meets_target(row: dict, model: bool = False) -> bool:
    """Issue #15's serving target, read on one row: recall@20 >= 0.95 and p99 < 20 ms at concurrency 8 (measured,
    or the closed-loop model of 8 clients on 2 free cores)."""
    p99 = row["single"]["model_c8"]["p99_ms"] if model else row["c8"]["p99_ms"]
    return row["recall20"] >= 0.95 and p99 < 20.0


def table(results: list[dict]) -> str:
    head = (f"{'size':>8} {'method':<6} {'params':<28} {'rec@20':>6} {'seen-of':>7} {'seen-sel':>8} "
            f"{'1t p50':>7} {'1t p99':>7} {'c8 p50':>7} {'c8 p99':>7} {'c8 cpu99':>8} {'c8 qps':>7} "
            f"{'srv c8 p99':>10} {'mdl c8 p99':>10} "
            f"{'build s':>7} {'MiB':>6}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["rows"]:
            sel = "-" if r["recall20_seen_selector"] is None else f"{r['recall20_seen_selector']:.4f}"
            lines.append(
                f"{res['size']:>8} {r['method']:<6} {r['params'][:28]:<28} {r['recall20']:>6.4f} "
                f"{r['recall20_seen_overfetch']:>7.4f} {sel:>8} {r['single']['p50_ms']:>7.2f} "
                f"{r['single']['p99_ms']:>7.2f} {r['c8']['p50_ms']:>7.2f} {r['c8']['p99_ms']:>7.2f} "
                f"{r['c8']['cpu_p99_ms']:>8.2f} {r['c8']['qps']:>7.0f} {r['serving_c8']['p99_ms']:>10.2f} "
                f"{r['single']['model_c8']['p99_ms']:>10.2f} {r['build_s']:>7.1f} {r['index_bytes'] / 2**20:>6.0f}"
                + ("  *" if meets_target(r) and res["size"] >= 10**6 else "")
                + ("  ~" if meets_target(r, model=True) and res["size"] >= 10**6 else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["real", "40981", "200000", "1000000"],
                    help="catalogue sizes (items), or 'real' for a bundle's own vectors")
    ap.add_argument("--queries", type=int, default=1000, help="users queried (recall and latency)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads for index builds and the multi-thread exact")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", default="/work/fresh5/models/pretrain/bundle", help="bundle for the 'real' size")
    ap.add_argument("--domain", default="lastfm-hetrec2011")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ann.json"))
    args = ap.parse_args()

    import faiss
    import torch

    doc = {"bench": "bench/bench_ann.py", "args": vars(args), "load_avg_start": os.getloadavg(),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": _cpu_model(),
                       "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
           "versions": {"python": platform.python_version(), "faiss": faiss.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "faiss_compile": faiss.get_compile_options()},
           "k": K, "concurrency": CONCURRENCY,
           "target": "1M items: p99 < 20 ms at concurrency 8 with recall@20 >= 0.95 of exact", "results": []}
    started = time.perf_counter()
    for size in args.sizes:
        if size == "real" and not Path(args.bundle, "bundle.json").exists():
            print(f"[real] no bundle at {args.bundle}; skipped")
            continue
        doc["results"].append(run_size(size, args))
        doc["load_avg_end"] = os.getloadavg()
        doc["wall_s"] = round(time.perf_counter() - started, 1)
        at_1m = [(res, r) for res in doc["results"] if res["size"] >= 10**6 for r in res["rows"]]
        doc["meets_target"] = [{"size": res["size"], "method": r["method"], "params": r["params"]}
                               for res, r in at_1m if meets_target(r)]
        doc["meets_target_model"] = [{"size": res["size"], "method": r["method"], "params": r["params"]}
                                     for res, r in at_1m if meets_target(r, model=True)]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")  # after every size: a partial run keeps figures
    print(table(doc["results"]))
    print("rec@20: plain top-20 vs exact; seen-of / seen-sel: seen items excluded by over-fetch k+|seen| then "
          "filter / by IDSelectorNot, vs exact masked top-20; latencies in ms (1t: single-threaded, c8: 8 client "
          "threads; cpu99: p99 of the query thread's CPU time); srv c8: the over-fetch path at c8; "
          "mdl c8 p99: closed-loop model of 8 clients on 2 free cores from the single-query CPU times; "
          "* meets the 1M target as measured, ~ by the model")
    print(f"wrote {args.out} ({doc['wall_s']} s)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
