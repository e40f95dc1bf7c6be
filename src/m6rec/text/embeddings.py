"""Every item's text -> one sentence-encoder vector, in global item order (the `text_embeddings` stage's work), and
the files that carry them to the stages that read them.

Folder layout: ``embeddings.npy`` (float16/float32 [n_items_total, dim], zero rows for items without text),
``mask.npy`` (bool [n_items_total], True where the item has text) and ``meta.json`` (encoder, dim, domain order,
item offsets, counts).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.config import TextEmbeddingsParams
from m6rec.data.dataset import Prepared, global_offsets
from m6rec.text import cache as text_cache
from m6rec.text import encoder as text_encoder

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
MASK = "mask.npy"
META = "meta.json"


def item_texts(prepared: Prepared) -> tuple[list[str], dict[str, int]]:
    """Every item's text in global item order (all prepared domains), and the item offsets."""
    offsets = global_offsets(prepared.meta, "item")
    n_total = sum(int(prepared.meta["per_domain"][d]["n_items"]) for d in prepared.domains)
    items = prepared.items
    gid = items["item"].to_numpy(dtype=np.int64) + pd.Series(offsets).reindex(items["domain"]).to_numpy(np.int64)
    texts = [""] * n_total
    if len(gid) and (gid.min() < 0 or gid.max() >= n_total):
        raise ValueError(f"items.parquet has item ids outside the {n_total} items declared in meta.json")
    for g, t in zip(gid.tolist(), items["text"].fillna("").tolist()):
        texts[g] = t
    return texts, offsets


def embed_items(prepared: Prepared, cfg: TextEmbeddingsParams, encode: text_encoder.EncodeFn | None = None,
        cache: text_cache.EmbeddingCache | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embed every item's text; returns (embeddings in `cfg.dtype`, mask, meta). Loads the encoder lazily."""
    if cfg.dtype not in ("float16", "float32"):
        raise ValueError(f"params.yaml text_embeddings.dtype must be float16 or float32, got {cfg.dtype!r}")
    texts, offsets = item_texts(prepared)
    if cfg.only_interacted:
        active = np.zeros(len(texts), dtype=bool)
        inter = prepared.interactions
        active[inter["item"].to_numpy(np.int64) + pd.Series(offsets).reindex(inter["domain"]).to_numpy(np.int64)] = True
        texts = [t if a else "" for t, a in zip(texts, active)]
    cache = cache if cache is not None else text_cache.EmbeddingCache()
    n_new = sum(1 for t in {t for t in texts if t.strip()} if text_cache.text_sha(t) not in cache)

    def lazy_encode(batch: list[str]) -> np.ndarray:
        fn = encode
        if fn is None:
            model = text_encoder.load_encoder(cfg.encoder, cfg.max_seq_length or None)
            fn = text_encoder.encode_fn(model, cfg.batch_size, progress=True)
        return fn(batch)

    t0 = time.perf_counter()
    log.info("text_embeddings: %d items, %d distinct new texts to encode with %s", len(texts), n_new, cfg.encoder)
    vecs, mask, stats = text_cache.embed_texts(texts, lazy_encode, cache)
    seconds = time.perf_counter() - t0
    n_items = {d: int(prepared.meta["per_domain"][d]["n_items"]) for d in prepared.domains}
    meta = {
        "encoder": cfg.encoder,
        "max_seq_length": cfg.max_seq_length,
        "dim": int(vecs.shape[1]),
        "dtype": cfg.dtype,
        "domains": prepared.domains,
        "item_offsets": offsets,
        "n_items": n_items,
        "n_with_text_per_domain": {d: int(mask[offsets[d]: offsets[d] + n].sum()) for d, n in n_items.items()},
        **stats,
        "encode_s": round(seconds, 2),
        "texts_per_s": round(stats["n_encoded"] / seconds, 1) if stats["n_encoded"] and seconds > 0 else None,
    }
    return vecs.astype(cfg.dtype), mask, meta


def save_embeddings(out_dir: Path, vecs: np.ndarray, mask: np.ndarray, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EMBEDDINGS, vecs)
    np.save(out_dir / MASK, mask)
    (out_dir / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_embeddings(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings [n_items_total, dim], mask [n_items_total], meta) as written by this stage."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise FileNotFoundError(f"{folder} has no text embeddings (missing {META}): run `dvc repro text_embeddings`")
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    return np.load(folder / EMBEDDINGS), np.load(folder / MASK), meta
