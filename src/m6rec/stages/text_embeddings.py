"""Stage `text_embeddings`: every item's text -> one sentence-encoder vector, in global item order.

Writes `out_dir` (:mod:`m6rec.text.embeddings`: embeddings.npy, mask.npy, meta.json). Vectors are cached by
(encoder, max_seq_length, sha256 of the text) in `cache_dir` (git-ignored, not a DVC out: its bytes depend on
earlier runs), so a rerun only encodes items whose text changed; that run's hit counts and speed go beside it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from m6rec.config import ConfigError, TextEmbeddingsParams, section
from m6rec.data.dataset import load_prepared
from m6rec.stage_io import stage_params, write_text
from m6rec.text.cache import cache_name, load_cache, save_cache
from m6rec.text.embeddings import embed_items, save_embeddings

log = logging.getLogger(__name__)

RUN_STATS = ("n_cache_hits", "n_encoded", "encode_s", "texts_per_s")


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "text_embeddings", TextEmbeddingsParams)
    if cfg.num_threads < 0:
        raise ConfigError(f"text_embeddings.num_threads must be >= 0 (0 = every usable core), got {cfg.num_threads}")
    torch.set_num_threads(cfg.num_threads or len(os.sched_getaffinity(0)))
    prepared = load_prepared(cfg.in_dir)
    cache_path = Path(cfg.cache_dir) / f"{cache_name(cfg.encoder, cfg.max_seq_length or None)}.npz"
    cache = load_cache(cache_path)
    log.info("text cache %s: %d vectors", cache_path, len(cache))
    vecs, mask, meta = embed_items(prepared, cfg, cache=cache)
    if meta["n_encoded"]:
        save_cache(cache, cache_path)
    meta["params"] = asdict(cfg)
    # what this run encoded vs found in the cache (and how fast) depends on earlier runs, not on the inputs: beside
    # the cache, not in the out, so data/embeddings is the same bytes on a rerun
    run = {k: meta.pop(k) for k in RUN_STATS if k in meta}
    write_text(cache_path.with_name(f"{cache_path.stem}.last_run.json"), json.dumps(run, indent=2) + "\n")
    save_embeddings(Path(cfg.out_dir), vecs, mask, meta)
    log.info("text_embeddings: %d/%d items with text, %d encoded (%.1fs), %d from cache -> %s",
             int(mask.sum()), len(mask), run["n_encoded"], run["encode_s"], run["n_cache_hits"], cfg.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
