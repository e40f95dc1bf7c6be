"""Data-parallel pretraining at scale: the pretrain stage as one process and under ``torchrun`` with N gloo processes on
the same data, time per epoch and how close the two results are.

    .venv/bin/python bench/bench_scale.py --sizes 1M --stages prepare validate graph --keep --work-dir /work/scale1m \
        --out /tmp/scale1m.json --extrapolate ""
    .venv/bin/python bench/bench_ddp.py --project /work/scale1m/m6rec-scale-1M-*/project [--epochs 3] [--nproc 2] \
        [--out bench/results/ddp_1m.json]

The project is one that ``bench/bench_scale.py --keep`` built (synthetic multi-domain data shaped after Gowalla and
the Amazon sets, its ``data/validated`` and ``data/graph``). Both runs read the same data with the project's pretrain
settings except: ids only (``use_text: false``, so no text encoding is needed), ``--epochs`` epochs, validation
only before training and after the last epoch. Every process has one torch thread (``OMP_NUM_THREADS=1``,
``M6REC_THREADS=1``; the runtime's deterministic mode asks for one anyway), so the single process uses one core
and ``torchrun --nproc_per_node=2`` both cores of the 2-core machine: what data parallelism buys here.

Recorded per run: wall time of the whole stage process (start-up, the two validations, export and MLflow logging
included), each epoch's training time (the training loop's log line) and loss, valid/test NDCG@20 and
Recall@20 per domain. Compared: the largest absolute difference between the two runs' final weights, and their
metrics. Under DDP the gradient of every batch is the all-reduced gradient of the whole batch, so the two should
agree up to float summation order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@20", "recall@20")
EPOCH_LINE = re.compile(r"lightgcn epoch (\d+): loss [0-9.]+(?:, valid [0-9.]+)? \(([0-9.]+)s\)")


def write_params(project: Path, run: str, epochs: int) -> Path:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    out = project / "ddp-bench" / run
    params["pretrain"].update(use_text=False, epochs=epochs, eval_every=epochs, patience=epochs + 1,
                              out_dir=str(out / "models"), metrics=str(out / "metrics.json"),
                              plot=str(out / "plot.json"), bundle=str(out / "bundle"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def run_stage(project: Path, params: Path, nproc: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", M6REC_THREADS="1", PYTHONPATH=str(REPO / "src"),
               MLFLOW_TRACKING_URI=f"sqlite:///{params.parent / 'mlflow.db'}")
    bin_dir = Path(sys.executable).parent
    if nproc == 1:
        cmd = [sys.executable, "-m", "m6rec.stages.pretrain", "--params", str(params)]
    else:
        cmd = [str(bin_dir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "m6rec.stages.pretrain",
               "--params", str(params)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (params.parent / "stage.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"pretrain with {nproc} process(es) failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {"nproc": nproc, "wall_s": round(wall, 2)}


def summarise(out: Path) -> tuple[dict, dict]:
    from m6rec.training import pretrain as pretraining
    from m6rec.training.checkpoint import load_checkpoint

    model, info = load_checkpoint(out / "models" / pretraining.CHECKPOINT)
    fit = info["meta"]["fit"]
    metrics = json.loads((out / "metrics.json").read_text())
    # The checkpoint keeps no timings (its bytes must not depend on the machine's speed): the training loop's log
    # line "lightgcn epoch N: loss L[, valid V] (Ts)" has them (under DDP, rank 0's line).
    seconds: dict[int, float] = {}
    for m in EPOCH_LINE.finditer((out / "stage.log").read_text(encoding="utf-8")):
        seconds.setdefault(int(m.group(1)), float(m.group(2)))
    epochs = [{"epoch": r["epoch"], "epoch_s": seconds[r["epoch"]], "loss": r["loss"]} for r in fit["curve"]]
    figures = {"epochs": epochs, "mean_epoch_s": round(sum(r["epoch_s"] for r in epochs) / len(epochs), 2),
               "world_size": fit.get("world_size", 1),
               "metrics": {d: {s: {k: m["lightgcn"][s][k] for k in METRICS} for s in ("valid", "test")}
                           for d, m in metrics.items()}}
    return figures, model.state_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="a project kept by bench_scale.py --keep")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ddp_1m.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    project = args.project.resolve()
    graph = json.loads((project / "data" / "graph" / "graph.json").read_text())
    result = {"bench": "bench/bench_ddp.py", "project": str(project), "load_avg_start": os.getloadavg(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "graph": {k: graph[k] for k in ("n_users", "n_items", "n_edges")}, "epochs": args.epochs, "runs": {}}
    weights = {}
    for run, nproc in (("single", 1), (f"ddp{args.nproc}", args.nproc)):
        params = write_params(project, run, args.epochs)
        rec = run_stage(project, params, nproc)
        figures, weights[run] = summarise(params.parent)
        rec.update(figures)
        result["runs"][run] = rec
        print(f"{run}: wall {rec['wall_s']:.1f} s, mean epoch {rec['mean_epoch_s']:.2f} s, "
              f"world size {rec['world_size']}", flush=True)
    a, b = (weights[r] for r in result["runs"])
    single, ddp = (result["runs"][r] for r in result["runs"])
    result["max_abs_weight_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    result["max_abs_metric_diff"] = max(abs(single["metrics"][d][s][k] - ddp["metrics"][d][s][k])
                                        for d in single["metrics"] for s in ("valid", "test") for k in METRICS)
    result["epoch_speedup"] = round(single["mean_epoch_s"] / ddp["mean_epoch_s"], 2)
    result["wall_speedup"] = round(single["wall_s"] / ddp["wall_s"], 2)
    result["load_avg_end"] = os.getloadavg()
    print(f"epoch speed-up x{result['epoch_speedup']}, wall x{result['wall_speedup']}, max |dw| "
          f"{result['max_abs_weight_diff']:.2e}, max |d metric| {result['max_abs_metric_diff']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
