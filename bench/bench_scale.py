"""Scale bench: every pipeline stage, run for real on synthetic data of 100k to 10M interactions; wall time and
peak RSS per stage, growth exponents, and the first size that breaks the wall (24 GiB or 60 minutes).

For each size the bench builds a throw-away project: synthetic domains shaped after Gowalla and the two Amazon
domains (bench/scale_data.py) as generic ``csv`` sources in data/raw/, a config/datasets.yaml holding only them,
dvc.yaml, and params.yaml copied from the repository with the domains, the MLflow store (a sqlite file in the
project) and a fixed small epoch budget (:data:`BUDGETS`) changed. Each stage of dvc.yaml then runs in order as
its own process (``python -m m6rec.stages.<name>``, the command dvc.yaml gives), and ``os.wait4`` returns that
process's own rusage: wall time, peak RSS (ru_maxrss of the stage and any process it waited for), CPU seconds.
A stage that fails or runs past ``--stage-timeout`` is recorded with the tail of its log; the bench goes on, and
every later stage runs against whatever the earlier ones left (it then usually fails too, saying why).

    python bench/bench_scale.py --sizes 100k 1M [--stages prepare validate ...] [--budget bench|tiny]
                                [--texts distinct|pooled] [--stage-timeout 3600] [--keep] [--out FILE]

Growth exponents are log-log slopes of wall time and peak RSS between consecutive sizes (and over the whole range),
per stage; `--extrapolate 10M` adds figures at that size from the last measured pair's slope, marked extrapolated.
The results of earlier runs in ``--out`` are kept (one entry per size x budget x texts, replaced when rerun).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import scale_data  # noqa: E402

WALL_RSS_GIB = 24.0  # the machine's memory: the wall
WALL_MINUTES = 60.0
DEFAULT_OUT = REPO / "bench" / "results" / "scale.json"

# Fixed small epoch budgets (dotted params keys). `bench`: the shipped model sizes, a fixed 1-2 epochs per trainer,
# EASE left out (dense item x item: it refuses > 20k items by design). `tiny`: the test's knobs (small dims too).
BENCH_BUDGET: dict[str, Any] = {
    "baselines.models": ["mostpop", "itemknn", "puresvd", "gfcf", "bprmf"],
    "baselines.mf_epochs": 2,
    "baselines.mf_eval_every": 2,
    "pretrain.epochs": 2,
    "pretrain.eval_every": 2,
    "multitask.train.epochs": 1,
    "finetune.train.epochs": 1,
    "finetune.fractions": [0.5, 1.0],
    "seqrec.epochs": 1,
    "seqrec.finetune_epochs": 1,
}
TINY_BUDGET: dict[str, Any] = {
    **BENCH_BUDGET,
    "baselines.mf_epochs": 1,
    "baselines.mf_eval_every": 1,
    "baselines.gfcf_k": 8,
    "baselines.svd_dim": 8,
    "baselines.mf_dim": 8,
    "baselines.itemknn_neighbours": 20,
    "pretrain.epochs": 1,
    "pretrain.eval_every": 1,
    "pretrain.embedding_dim": 16,
    "pretrain.num_layers": 2,
    "multitask.max_len": 20,
    "multitask.n_interests": 2,
    "multitask.hidden": 16,
    "multitask.variants": ["attention_mt"],
    "multitask.train.valid_users": 200,
    "finetune.fractions": [1.0],
    "finetune.modes": ["zero_shot", "efficient"],
    "finetune.save_mode": "efficient",
    "finetune.train.examples_per_user": 5,
    "finetune.train.valid_users": 200,
    "seqrec.dim": 16,
    "seqrec.max_len": 20,
    "seqrec.valid_users": 100,
}
BUDGETS = {"bench": BENCH_BUDGET, "tiny": TINY_BUDGET}


def parse_size(text: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000, '2.5M', '30000'."""
    text = text.strip()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(round(float(text[:-1] if mult > 1 else text) * mult))


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    return f"{n / 1000:g}k" if n >= 1000 and n % 100 == 0 else str(n)


def pipeline_stages(dvc_yaml: Path) -> list[tuple[str, str]]:
    """(name, cmd) of every dvc.yaml stage, in file order (the pipeline's own order: each after its deps)."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return [(name, spec["cmd"]) for name, spec in stages.items()]


def set_dotted(params: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``section.sub.key`` in params; skipped when the section is absent (a stage not in this checkout), but a
    missing key of a present section is an error (a renamed key must not silently make the runs slow)."""
    *path, key = dotted.split(".")
    if path[0] not in params:
        return
    sec = params
    for part in path:
        sec = sec[part]
    if key not in sec:
        raise KeyError(f"params.yaml has no key {dotted!r} (renamed?); the bench budget needs updating")
    sec[key] = copy.deepcopy(value)


def bench_params(base: dict[str, Any], domains: dict[str, dict], budget: dict[str, Any]) -> dict[str, Any]:
    """The repository's params with the synthetic domains, a local MLflow store and the epoch budget."""
    params = copy.deepcopy(base)
    params["domains"] = domains
    params["data"]["registry"] = "config/datasets.yaml"
    params["data"]["datasets"] = []
    params["validate"]["rating_scales"] = {}
    params["tracking"]["db"] = "mlflow.db"
    params["tracking"]["artifacts"] = "mlartifacts"
    # the data is new: no drift against an earlier validated copy (a fresh project has none anyway)
    for dotted, value in budget.items():
        set_dotted(params, dotted, value)
    return params


def build_project(root: Path, n: int, real: dict, budget: dict[str, Any], texts: str, seed: int) -> dict:
    """Synthetic data, registry, params.yaml and dvc.yaml in `root`; returns the data's stats."""
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = scale_data.write_domains(root / "data" / "raw", n, real, seed=seed, texts=texts)
    gen_s = time.perf_counter() - t0
    registry = {"datasets": {name: scale_data.registry_entry(scale_data.SyntheticSpec(**d["spec"]),
                                                             f"data/raw/{name}") for name, d in made.items()}}
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "datasets.yaml").write_text(yaml.safe_dump(registry, sort_keys=False), encoding="utf-8")
    domains = {name: ({"finetune": True} if d["spec"]["finetune"] else {}) for name, d in made.items()}
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = bench_params(base, domains, budget)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    return {"generate_s": round(gen_s, 2), "domains": {k: d["stats"] for k, d in made.items()},
            "interactions": sum(d["stats"]["interactions"] for d in made.values()),
            "users": sum(d["stats"]["users"] for d in made.values()),
            "items": sum(d["stats"]["items"] for d in made.values())}


def stage_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "M6REC_ARTIFACT_ROOT", "M6REC_PARAMS", "M6REC_BUNDLE", "M6REC_MODEL_URI"):
        env.pop(key, None)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "M6REC_ROOT": str(root), "M6REC_PROJECT_DIR": str(root), "M6REC_OFFLINE": "1",
        "M6REC_THREADS": env.get("M6REC_THREADS", "1"), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "M6REC_ARTIFACT_ROOT": str(root / "mlartifacts"),
    })
    return env


def run_stage(root: Path, name: str, cmd: str, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    """Run one stage's command in `root`; its wall time, peak RSS and CPU from wait4 (this process alone)."""
    argv = cmd.split()
    if argv[0] == "python":
        argv[0] = sys.executable
    log_path = log_dir / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=root, env=stage_env(root), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (start_new_session)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss  # Linux: KiB
    res: dict[str, Any] = {"stage": name, "wall_s": round(wall, 3), "peak_rss_mib": round(rss_kib / 1024, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "returncode": proc.returncode,
                           "status": "ok" if proc.returncode == 0 and not timed_out else
                           ("timeout" if timed_out else "failed")}
    if timed_out:
        res["error"] = f"stopped at the bench's --stage-timeout of {timeout_s:g} s (not finished)"
    if res["status"] != "ok":
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors = [line for line in tail if "Error" in line or "error" in line or "failed" in line]
        res.setdefault("error", (errors[-1] if errors else (tail[-1] if tail else ""))[-500:])
        res["log_tail"] = "\n".join(tail[-25:])[-4000:]
    return res


def run_size(n: int, stages: list[str] | None, budget_name: str, texts: str, timeout_s: float, keep: bool,
             work_dir: Path | None, real: dict, seed: int = 42, on_stage=None) -> dict[str, Any]:
    """Build a project of `n` interactions and run the stages (all of dvc.yaml's when `stages` is None);
    `on_stage(partial run)` after each stage (the bench writes its JSON then, so a long run leaves figures)."""
    base = Path(tempfile.mkdtemp(prefix=f"m6rec-scale-{size_label(n)}-", dir=work_dir))
    root = base / "project"
    try:
        data = build_project(root, n, real, BUDGETS[budget_name], texts, seed)
        plan = pipeline_stages(REPO / "dvc.yaml")
        unknown = sorted(set(stages or []) - {s for s, _ in plan})
        if unknown:
            raise SystemExit(f"--stages: unknown {unknown}; dvc.yaml has {[s for s, _ in plan]}")
        log_dir = base / "logs"
        log_dir.mkdir()
        results = []
        for name, cmd in plan:
            if stages and name not in stages:
                continue
            res = run_stage(root, name, cmd, timeout_s, log_dir)
            print(f"  {size_label(n):>5} {name:<16} {res['status']:<8} {res['wall_s']:>9.1f} s "
                  f"{res['peak_rss_mib']:>9.0f} MiB" + (f"  {res.get('error', '')[:120]}" if res["status"] != "ok"
                                                         else ""), flush=True)
            results.append(res)
            extra = text_stats(root) if any(r["stage"] == "text_embeddings" for r in results) else {}
            run = {"size": n, "label": size_label(n), "budget": budget_name, "texts": texts, "data": data,
                   "stages": list(results), **extra, "project": str(root) if keep else None}
            if on_stage is not None:
                on_stage(run)
        return run
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def text_stats(root: Path) -> dict[str, Any]:
    """The text_embeddings run's own counts (encoded, cache hits, encode seconds), from beside its cache."""
    found = sorted((root / "data" / "embeddings_cache").glob("*.last_run.json"))
    if not found:
        return {}
    run = json.loads(found[-1].read_text(encoding="utf-8"))
    if run.get("n_encoded") and run.get("encode_s"):
        run["texts_per_s"] = round(run["n_encoded"] / run["encode_s"], 1)
    return {"text_encoding": run}


def slope(x0: float, y0: float, x1: float, y1: float) -> float | None:
    if min(x0, y0, x1, y1) <= 0 or x0 == x1:
        return None
    return round(math.log(y1 / y0) / math.log(x1 / x0), 3)


def exponents(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: log-log slopes of wall time and peak RSS between consecutive measured sizes (ok runs only)."""
    by_stage: dict[str, list[tuple[int, float, float]]] = {}
    for run in sorted(runs, key=lambda r: r["size"]):
        for st in run["stages"]:
            if st["status"] == "ok":
                by_stage.setdefault(st["stage"], []).append((run["size"], st["wall_s"], st["peak_rss_mib"]))
    out = {}
    for stage, pts in by_stage.items():
        if len(pts) < 2:
            continue
        pairs = {f"{size_label(a[0])}->{size_label(b[0])}": {"wall": slope(a[0], a[1], b[0], b[1]),
                                                             "rss": slope(a[0], a[2], b[0], b[2])}
                 for a, b in zip(pts, pts[1:])}
        out[stage] = {"pairs": pairs, "overall": {"wall": slope(pts[0][0], pts[0][1], pts[-1][0], pts[-1][1]),
                                                  "rss": slope(pts[0][0], pts[0][2], pts[-1][0], pts[-1][2])}}
    return out


def extrapolate(runs: list[dict[str, Any]], target: int) -> dict[str, Any]:
    """Figures at `target` interactions from each stage's last two measured sizes and their slope (EXTRAPOLATED,
    not measured). Peak RSS grows at least as a fixed base (python + torch ~0.4 GiB) so its slope is used as is."""
    out = {}
    for stage, ex in exponents(runs).items():
        pts = sorted((r["size"], s) for r in runs for s in r["stages"] if s["stage"] == stage and s["status"] == "ok")
        (n0, a), (n1, b) = pts[-2], pts[-1]
        k_wall = slope(n0, a["wall_s"], n1, b["wall_s"]) or 1.0
        k_rss = slope(n0, a["peak_rss_mib"], n1, b["peak_rss_mib"]) or 1.0
        out[stage] = {"from": f"{size_label(n0)}->{size_label(n1)}", "wall_exponent": k_wall,
                      "rss_exponent": k_rss,
                      "wall_s": round(b["wall_s"] * (target / n1) ** k_wall, 1),
                      "peak_rss_mib": round(b["peak_rss_mib"] * (target / n1) ** k_rss, 1)}
    return {"size": target, "label": size_label(target), "extrapolated": True, "stages": out}


def first_wall(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest measured size where a stage passed 24 GiB or 60 minutes, or failed. A stage stopped by a
    --stage-timeout below 60 minutes is not a wall (only a lower bound on its time), so it is not reported here."""
    for run in sorted(runs, key=lambda r: r["size"]):
        for st in run["stages"]:
            over = []
            if st["peak_rss_mib"] / 1024 > WALL_RSS_GIB:
                over.append(f"peak RSS {st['peak_rss_mib'] / 1024:.1f} GiB > {WALL_RSS_GIB:g} GiB")
            if st["wall_s"] / 60 > WALL_MINUTES:
                over.append(f"wall {st['wall_s'] / 60:.1f} min > {WALL_MINUTES:g} min")
            if st["status"] == "failed" or st["status"] == "timeout" and st["wall_s"] / 60 > WALL_MINUTES:
                over.append(f"{st['status']}: {st.get('error', '')}")
            if over:
                return {"size": run["size"], "label": run["label"], "stage": st["stage"], "why": over}
    return None


def print_table(runs: list[dict[str, Any]]) -> None:
    print(f"\n{'size':>6} {'stage':<16} {'status':<8} {'wall_s':>10} {'peak_rss_MiB':>13} {'cpu_s':>9}")
    for run in sorted(runs, key=lambda r: r["size"]):
        for st in run["stages"]:
            print(f"{run['label']:>6} {st['stage']:<16} {st['status']:<8} {st['wall_s']:>10.1f} "
                  f"{st['peak_rss_mib']:>13.0f} {st['cpu_s']:>9.1f}")


def plot(path: Path, runs: list[dict[str, Any]]) -> Path | None:
    """Log-log wall time and peak RSS per stage against interactions (ok runs only), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    names = [s["stage"] for r in runs for s in r["stages"]]
    for stage in dict.fromkeys(names):
        pts = sorted((r["size"], s["wall_s"], s["peak_rss_mib"]) for r in runs for s in r["stages"]
                     if s["stage"] == stage and s["status"] == "ok")
        if pts:
            ax_t.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=stage)
            ax_m.plot([p[0] for p in pts], [p[2] / 1024 for p in pts], "o-", label=stage)
    for ax, label, wall in ((ax_t, "wall time (s)", WALL_MINUTES * 60), (ax_m, "peak RSS (GiB)", WALL_RSS_GIB)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(wall, color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("interactions")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle("m6rec scale bench: every stage, synthetic data (bench/bench_scale.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_results(path: Path) -> list[dict[str, Any]]:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100k"], help="interaction counts: 100k 1M 3M 10M ...")
    parser.add_argument("--stages", nargs="+", default=None, help="dvc.yaml stages to run (default: all, in order)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="bench", help="fixed epoch budget")
    parser.add_argument("--texts", choices=["distinct", "pooled"], default="distinct",
                        help="distinct: every item its own text (realistic, no cache hits); pooled: real texts reused")
    parser.add_argument("--stage-timeout", type=float, default=WALL_MINUTES * 60, help="seconds per stage")
    parser.add_argument("--extrapolate", default="10M", help="size to extrapolate to ('' = none)")
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("M6REC_DATA_MIRROR")
                                                            or REPO.parent / "shared" / "data"))
    parser.add_argument("--work-dir", type=Path, default=None, help="where the projects are built (default: tmp)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=None, help="also draw a log-log PNG here")
    parser.add_argument("--keep", action="store_true", help="keep each size's project (path in the JSON)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    real = scale_data.load_real(args.mirror)
    runs = [r for r in load_results(args.out)]
    for text in args.sizes:
        n = parse_size(text)
        print(f"size {size_label(n)}: building and running", flush=True)
        earlier = list(runs)

        def record(run: dict[str, Any]) -> None:
            nonlocal runs
            runs = merge_run(earlier, run, args.stages)
            write_results(args.out, runs, real, args)

        run_size(n, args.stages, args.budget, args.texts, args.stage_timeout, args.keep, args.work_dir, real,
                 args.seed, on_stage=record)
    print_table(runs)
    summary = json.loads(args.out.read_text(encoding="utf-8"))
    print("\ngrowth exponents (log-log slope, wall / rss):")
    for stage, ex in summary["exponents"].items():
        pairs = "  ".join(f"{k}: {v['wall']} / {v['rss']}" for k, v in ex["pairs"].items())
        print(f"  {stage:<16} {pairs}")
    print(f"first wall: {summary['first_wall']}")
    if args.plot is not None:
        made = plot(args.plot, [r for r in runs if r["budget"] == args.budget and r["texts"] == args.texts])
        print(f"wrote {made or 'no plot (matplotlib missing)'}")
    print(f"wrote {args.out}")
    return 0


def merge_run(runs: list[dict[str, Any]], run: dict[str, Any], stages: list[str] | None) -> list[dict[str, Any]]:
    """`runs` with `run` in place of the earlier run of its size x budget x texts; a run of some `stages` only
    replaces those stages of the earlier run."""
    key = (run["size"], run["budget"], run["texts"])
    old = next((r for r in runs if (r["size"], r["budget"], r["texts"]) == key), None)
    run = dict(run)
    if old is not None and stages:
        done = {s["stage"] for s in run["stages"]}
        kept = [s for s in old["stages"] if s["stage"] not in done]
        order = [s for s, _ in pipeline_stages(REPO / "dvc.yaml")]
        rank = {s: i for i, s in enumerate(order)}
        run["stages"] = sorted(kept + run["stages"], key=lambda s: rank.get(s["stage"], len(order)))
        if "text_encoding" not in run and old.get("text_encoding"):
            run["text_encoding"] = old["text_encoding"]
    return [r for r in runs if (r["size"], r["budget"], r["texts"]) != key] + [run]


def write_results(path: Path, runs: list[dict[str, Any]], real: dict, args: argparse.Namespace) -> None:
    main_runs = [r for r in runs if r["budget"] == args.budget and r["texts"] == args.texts]
    target = parse_size(args.extrapolate) if args.extrapolate else 0
    measured = {r["size"] for r in main_runs}
    payload = {
        "bench": "bench/bench_scale.py", "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "threads": os.environ.get("M6REC_THREADS", "1")},
        "walls": {"peak_rss_gib": WALL_RSS_GIB, "wall_minutes": WALL_MINUTES},
        "real_fits": {k: v.summary() for k, v in real.items()},
        "budgets": BUDGETS,
        "runs": sorted(runs, key=lambda r: (r["budget"], r["texts"], r["size"])),
        "exponents": exponents(main_runs),
        "first_wall": first_wall(main_runs),
        "extrapolated": (extrapolate(main_runs, target) if target and target not in measured
                         and len(main_runs) >= 2 else None),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
