"""Soak test of the BentoML service: 60 s of POST /recommend at 64 concurrent clients, server memory over time.

    nice -n 10 .venv/bin/python bench/bench_soak.py [--duration 60] [--concurrency 64] [--domains ml-100k]
        [--raw-dir ../shared/data] [--warmup 10] [--out bench/results/soak.json]

The bundle: the chosen domains prepared from the raw data mirror (all their users), SVD-64 vectors
(``bench_serving.build_bundle``), served by ``bentoml serve`` on 127.0.0.1 with the repository's default settings
(1 worker, micro-batching, the request guard). Requests: known users drawn with a fixed seed, k=10, seen items
masked, from an asyncio aiohttp client (one Python process, keep-alive). Every second the resident memory (RSS) of
the server and its workers is sampled with psutil. Figures: requests, errors (any non-200 or transport error),
req/s, latency percentiles, and RSS after the warm-up: first and last 10 s means, their relative change (the
drift) and the spread (max - min) / min. It passes when there are no errors and the drift is within 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_soak")


def prepare(raw_dir: Path, out: Path, domains: list[str]) -> Path:
    from m6rec.config import PrepareParams
    from m6rec.data.prepare import prepare_datasets

    prepare_datasets(raw_dir, out, REPO / "config" / "datasets.yaml", PrepareParams(domains=tuple(domains)))
    return out


def rss_bytes(server) -> int:
    import psutil

    total = 0
    for p in server.processes():
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


async def soak(server, bodies: list[str], concurrency: int, duration: float, every: float = 1.0) -> dict:
    """Drive ``concurrency`` clients for ``duration`` seconds; sample the server's RSS every ``every`` seconds."""
    import aiohttp

    lat: list[float] = []
    errors: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    t_start = time.perf_counter()
    stop = t_start + duration
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def client(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{server.url}/recommend", data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                lat.append(time.perf_counter() - t0)

        async def sampler() -> None:
            while time.perf_counter() < stop:
                # psutil reads /proc: cheap, but off the loop so the clients are not held up
                samples.append((time.perf_counter() - t_start, await asyncio.to_thread(rss_bytes, server)))
                await asyncio.sleep(every)

        await asyncio.gather(sampler(), *(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    ms = np.array(lat) * 1e3
    return {"requests": len(lat), "errors": sum(errors.values()), "error_kinds": errors, "duration_s": elapsed,
            "req_per_s": len(lat) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "rss": samples}


def rss_figures(samples: list[tuple[float, int]], warmup: float, window: float = 10.0) -> dict:
    after = [(t, r) for t, r in samples if t >= warmup]
    if len(after) < 4:
        raise ValueError(f"only {len(after)} RSS samples after the {warmup} s warm-up: run longer")
    t_end = after[-1][0]
    first = [r for t, r in after if t < warmup + window]
    last = [r for t, r in after if t > t_end - window]
    values = [r for _, r in after]
    return {"rss_start_mb": samples[0][1] / 2**20, "rss_first_mb": float(np.mean(first)) / 2**20,
            "rss_last_mb": float(np.mean(last)) / 2**20,
            "rss_drift": float(np.mean(last) / np.mean(first) - 1.0),
            "rss_spread": float((max(values) - min(values)) / min(values))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS counts as steady")
    parser.add_argument("--domains", nargs="+", default=["ml-100k", "ml-latest-small"])
    parser.add_argument("--raw-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS drift after warm-up")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    from bench_serving import build_bundle, request_bodies

    from m6rec.serving.local_server import LocalServer

    with tempfile.TemporaryDirectory(prefix="m6rec-soak-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        prepared = prepare(Path(args.raw_dir), tmp / "prepared", args.domains)
        users = build_bundle("default", prepared, tmp / "bundle", 64, svd=True)
        log.info("bundle of %s built in %.1f s (%s users)", args.domains, time.perf_counter() - t0,
                 {d: len(u) for d, u in users.items()})
        env = {"M6REC_BUNDLE": str(tmp / "bundle"), "M6REC_PARAMS": str(tmp / "no-params.yaml"),
               "BENTOML_CONFIG_OPTIONS": "services.m6rec.logging.access.enabled=false"}
        with LocalServer(env=env, cwd=tmp, log_path=tmp / "serve.log") as server:
            result = asyncio.run(soak(server, request_bodies(users, n=20_000), args.concurrency, args.duration))
            tracebacks = server.log_tail(10**8).count("Traceback")
    result.update(rss_figures(result["rss"], args.warmup))
    import os

    result.update({"concurrency": args.concurrency, "domains": args.domains, "server_tracebacks": tracebacks,
                   "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
                   "passed": result["errors"] == 0 and abs(result["rss_drift"]) <= args.tolerance})
    result["rss"] = [(round(t, 1), round(r / 2**20, 1)) for t, r in result["rss"]]  # (s, MB) for the record
    print(f"soak {result['duration_s']:.0f} s at c={args.concurrency}: {result['requests']} requests, "
          f"{result['errors']} errors {result['error_kinds'] or ''}, {result['req_per_s']:.0f} req/s, "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.0f} ms")
    print(f"server RSS: {result['rss_start_mb']:.0f} MB at start, {result['rss_first_mb']:.1f} MB after warm-up, "
          f"{result['rss_last_mb']:.1f} MB in the last 10 s: drift {100 * result['rss_drift']:+.2f}%, spread "
          f"{100 * result['rss_spread']:.2f}% (load average {result['load_avg_1m']:.1f} on {result['cpus']} CPUs)")
    print("PASS" if result["passed"] else "FAIL")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
