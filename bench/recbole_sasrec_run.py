"""RecBole SASRec on pre-split sequential atomic files (the baseline side of bench/bench_sasrec_scientific.py).

Runs in its own virtual environment (RecBole 1.2 needs ``numpy<2``, and a pandas before 3: pandas 3 breaks its id
remapping; it does not import m6rec)::

    python3 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch==2.13.0 'numpy<2' pandas==2.0.3 recbole==1.2.1
    cd WORK && M6REC_THREADS=1 nice -n 10 /work/recbole-venv/bin/python bench/recbole_sasrec_run.py \
        --data-path WORK/recbole --dataset sci --out WORK/recbole_out

(bench/bench_sasrec_scientific.py writes the atomic files and calls this itself.) ``--data-path/<dataset>/`` holds
``<dataset>.{train,valid,test}.inter`` in the sequential benchmark format of UniSRec's downstream files
(``user_id:token  item_id_list:token_seq  item_id:token``: every training prefix a row; one valid row and one test
row per user). RecBole trains SASRec with early stopping on valid NDCG@10 and reports its own full-sort test
metrics, which for sequential models do *not* mask the user's history items (only the padding id 0:
``recbole.trainer.Trainer._full_sort_batch_eval`` gets ``history_index=None`` from the sequential
``FullSortEvalDataLoader``). So that the caller can also score RecBole's model under m6rec's protocol, the best
model's full scores for every test row are written to ``--out/test_scores.npy`` (float32 ``[n_test, n_items]``, the
columns in the order of the item tokens read as integers, i.e. the caller's item index) with the rows' user tokens
in ``test_users.npy``; ``result.json`` has RecBole's own figures, epochs, seconds and versions.

Run with the working directory where RecBole may write its ``log/``, ``log_tensorboard/`` and checkpoint folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

# RecBole 1.2 checkpoints hold its Config object; torch >= 2.6 loads weights only by default and would refuse them.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("recbole_sasrec_run")

# SASRec as RecBole ships it (recbole/properties/model/SASRec.yaml), CE loss over the whole catalogue.
SASREC = dict(n_layers=2, n_heads=2, hidden_size=64, inner_size=256, hidden_dropout_prob=0.5, attn_dropout_prob=0.5,
              hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.02, loss_type="CE")


def recbole_config(args: argparse.Namespace) -> dict:
    """The config dict handed to RecBole (also recorded in result.json)."""
    return {
        "data_path": str(args.data_path), "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len, **SASREC,
        "train_neg_sample_args": None, "epochs": args.epochs, "train_batch_size": args.batch_size,
        "learning_rate": args.lr, "stopping_step": args.stopping_step, "eval_step": 1,
        "eval_args": {"mode": "full", "order": "TO", "group_by": "user"},
        "metrics": ["Recall", "NDCG"], "topk": [10, 20], "valid_metric": "NDCG@10", "eval_batch_size": 4096,
        "seed": args.seed, "reproducibility": True, "use_gpu": False, "device": "cpu", "worker": 0,
        "show_progress": False, "checkpoint_dir": str(args.out / "saved"), "save_dataset": False,
        "save_dataloaders": False,
    }


def recording_trainer(trainer_cls):
    """RecBole's Trainer that also keeps each epoch's validation score (``valid_curve``)."""

    class RecordingTrainer(trainer_cls):
        def __init__(self, config, model) -> None:
            super().__init__(config, model)
            self.valid_curve: list[float] = []

        def _valid_epoch(self, valid_data, show_progress=False):
            score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
            self.valid_curve.append(float(score))
            return score, result

    return RecordingTrainer


def best_epoch(curve: list[float]) -> int:
    """1-based epoch whose weights RecBole keeps: the last one reaching the best score (its test is ``>=``)."""
    return 0 if not curve else len(curve) - int(np.argmax(curve[::-1]))


@torch.no_grad()
def test_scores(model, test_data, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Full scores of every test row, columns in the integer order of the item tokens; and the rows' user tokens."""
    item_tokens = dataset.field2id_token["item_id"]  # internal id -> token; id 0 is [PAD]
    cols = np.array([int(t) for t in item_tokens[1:]], dtype=np.int64)
    n_items = int(cols.max()) + 1
    if len(np.unique(cols)) != len(cols) or len(cols) != n_items:
        raise ValueError(f"item tokens are not 0..{n_items - 1} once each ({len(cols)} tokens)")
    model.eval()
    users, blocks = [], []
    for interaction, _, _, _ in test_data:
        scores = model.full_sort_predict(interaction.to("cpu"))[:, 1:].float().numpy()
        block = np.empty((len(scores), n_items), dtype=np.float32)
        block[:, cols] = scores
        blocks.append(block)
        users.append(np.array([int(t) for t in dataset.id2token("user_id", interaction["user_id"].numpy())]))
    return np.concatenate(users), np.concatenate(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", type=Path, required=True, help="folder holding <dataset>/ atomic files")
    parser.add_argument("--dataset", default="sci")
    parser.add_argument("--out", type=Path, required=True, help="folder for result.json and the test scores")
    parser.add_argument("--epochs", type=int, default=200, help="upper bound (early stopping on valid NDCG@10)")
    parser.add_argument("--stopping-step", type=int, default=10, help="validations without gain before stopping")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("M6REC_THREADS", "1")))

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    cfg = recbole_config(args)
    config = Config(model="SASRec", dataset=args.dataset, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(int(os.environ.get("M6REC_THREADS", "1")))  # init_seed/logger may reset it
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = recording_trainer(Trainer)(config, model)
    t1 = time.perf_counter()
    best_valid, valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_s = time.perf_counter() - t1
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    users, scores = test_scores(trainer.model, test_data, test_data.dataset)
    np.save(args.out / "test_users.npy", users)
    np.save(args.out / "test_scores.npy", scores)
    result = {
        "native_test": {k: round(float(v), 5) for k, v in test_result.items()},
        "native_valid": {k: round(float(v), 5) for k, v in valid_result.items()},
        "native_masks_history": False,
        "epochs_run": len(trainer.valid_curve), "best_epoch": best_epoch(trainer.valid_curve),
        "valid_ndcg10_curve": [round(v, 5) for v in trainer.valid_curve],
        "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1),
        "n_items": int(dataset.item_num - 1), "n_users": int(dataset.user_num - 1),
        "n_train_rows": len(train_data.dataset), "n_valid_rows": len(valid_data.dataset),
        "n_test_rows": len(test_data.dataset), "n_params": int(sum(p.numel() for p in model.parameters())),
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "config": cfg,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("recbole SASRec test %s", result["native_test"])


if __name__ == "__main__":
    main()
