"""Test metrics with each test-time input (protocol.test_input: train vs train_valid) for every ranking baseline.

    PYTHONPATH=src:. .venv/bin/python bench/bench_test_input.py [--prepared data/prepared] [--domains D ...]
        [--models M ...] [--out bench/results/test_input.json]

Fits every baseline of the `baselines` stage in-process (params.yaml's `baselines` section, early stopping on
valid as the stage does) on the default small domains, then scores test twice: from the training interactions
only, and from train + valid (what the service serves: fold-in for factor models, the row for item-item models).
Writes ``{domain: {model: {train | train_valid: {ndcg@20, recall@20}}}}`` and prints the table. Models that ignore
the rows they are given (those not yet row-scored on this branch) show the same figure twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from m6rec.config import TEST_INPUTS, ProtocolParams, load_section
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.evaluation.protocol import evaluate
from m6rec.log import setup_logging
from m6rec.model_params import BaselinesParams
from m6rec.training.baselines import MODELS, fit_baseline

log = logging.getLogger("bench_test_input")
METRICS = ("ndcg@20", "recall@20")


def main() -> None:
    cfg = load_section("baselines", BaselinesParams)
    protocol = load_section("protocol", ProtocolParams)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default="data/prepared", help="prepared data folder (dvc repro prepare)")
    parser.add_argument("--domains", nargs="+", default=list(cfg.domains))
    parser.add_argument("--models", nargs="+", default=[m for m in cfg.models if m in MODELS and m != "als"])
    parser.add_argument("--out", default="bench/results/test_input.json")
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    prepared = load_prepared(args.prepared)
    out: dict[str, dict[str, dict]] = {}
    for d in args.domains:
        data = domain_data(prepared, d)
        for name in args.models:
            t0 = time.perf_counter()
            model, _ = fit_baseline(name, data, cfg, protocol, progress=False)
            res = {ti: {k: evaluate(model, data, "test", replace(protocol, test_input=ti))[k] for k in METRICS}
                   for ti in TEST_INPUTS}
            out.setdefault(d, {})[name] = res
            log.info("%s %s: %s (%.0f s)", d, name, res, time.perf_counter() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"{'domain':20s} {'model':10s} " + " ".join(f"{m + ' ' + ti:>22s}" for m in METRICS for ti in TEST_INPUTS))
    for d, models in out.items():
        for name, res in models.items():
            print(f"{d:20s} {name:10s} " + " ".join(f"{res[ti][m]:22.4f}" for m in METRICS for ti in TEST_INPUTS))


if __name__ == "__main__":
    main()
