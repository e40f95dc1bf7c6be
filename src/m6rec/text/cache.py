"""A content-addressed cache of text vectors: one file per (encoder, max_seq_length), holding the sha256 of every
text seen and its vector, so that a rerun encodes only the texts that changed."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m6rec.text.encoder import EncodeFn


def text_sha(text: str) -> str:
    """Cache key of one text: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_name(encoder: str, max_seq_length: int | None) -> str:
    """File-name-safe cache id of an (encoder, max_seq_length) pair."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder).strip("_") or "encoder"
    digest = hashlib.sha256(f"{encoder}|{max_seq_length}".encode()).hexdigest()[:8]
    return f"{slug[-60:]}-{max_seq_length or 'full'}-{digest}"


class EmbeddingCache:
    """sha256(text) -> vector table for one encoder."""

    def __init__(self, keys: Sequence[str] = (), vectors: np.ndarray | None = None) -> None:
        keys = list(keys)
        if vectors is None:
            vectors = np.zeros((0, 0), dtype=np.float32)
        if len(keys) != len(vectors):
            raise ValueError(f"cache has {len(keys)} keys but {len(vectors)} vectors")
        self._index = {k: n for n, k in enumerate(keys)}
        self._keys = keys
        self._vectors = [vectors] if len(vectors) else []
        self.dim = int(vectors.shape[1]) if len(vectors) else 0

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Insert new keys (keys already present are ignored)."""
        if len(keys) != len(vectors):
            raise ValueError(f"add: {len(keys)} keys but {len(vectors)} vectors")
        if not len(keys):
            return
        if self.dim and vectors.shape[1] != self.dim:
            raise ValueError(f"add: vectors have dim {vectors.shape[1]}, the cache holds dim {self.dim}")
        self.dim = int(vectors.shape[1])
        fresh = [n for n, k in enumerate(keys) if k not in self._index]
        # Repeated keys within one call keep their first vector.
        seen: set[str] = set()
        fresh = [n for n in fresh if not (keys[n] in seen or seen.add(keys[n]))]
        for n in fresh:
            self._index[keys[n]] = len(self._keys)
            self._keys.append(keys[n])
        if fresh:
            self._vectors.append(np.asarray(vectors, dtype=np.float32)[fresh])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys as a str array, float32 vectors [n, dim]) in insertion order."""
        if self._vectors:
            vecs = np.concatenate(self._vectors).astype(np.float32)
        else:
            vecs = np.zeros((0, self.dim), np.float32)
        self._vectors = [vecs] if len(vecs) else []
        return np.asarray(self._keys, dtype=str), vecs

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of `keys` (all must be present)."""
        _, vecs = self.arrays()
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} keys are not in the cache, e.g. {missing[0]}")
        return vecs[[self._index[k] for k in keys]]


def embed_texts(texts: Sequence[str], encode: EncodeFn, cache: EmbeddingCache | None = None,
                ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Embed `texts`; empty strings get no vector.

    Returns (float32 [n, dim] with zero rows where there is no text, bool mask [n] of rows with text, stats).
    Each distinct non-empty text is encoded once; texts already in `cache` are not encoded, and newly encoded
    ones are added to it. stats: n_texts, n_with_text, n_unique, n_cache_hits, n_encoded.
    """
    texts = [t if isinstance(t, str) else "" for t in texts]
    mask = np.fromiter((bool(t.strip()) for t in texts), dtype=bool, count=len(texts))
    keys = [text_sha(t) if m else "" for t, m in zip(texts, mask)]
    unique: dict[str, str] = {}
    for k, t, m in zip(keys, texts, mask):
        if m and k not in unique:
            unique[k] = t
    cache = cache if cache is not None else EmbeddingCache()
    todo = [k for k in unique if k not in cache]
    hits = len(unique) - len(todo)
    if todo:
        vecs = encode([unique[k] for k in todo])
        if vecs.shape[0] != len(todo):
            raise ValueError(f"encoder returned {vecs.shape[0]} vectors for {len(todo)} texts")
        cache.add(todo, vecs)
    dim = cache.dim
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if mask.any():
        out[mask] = cache.get([k for k, m in zip(keys, mask) if m])
    stats = {"n_texts": len(texts), "n_with_text": int(mask.sum()), "n_unique": len(unique),
             "n_cache_hits": hits, "n_encoded": len(todo)}
    return out, mask, stats


def load_cache(path: str | Path) -> EmbeddingCache:
    """Read a cache file written by :func:`save_cache` (an empty cache if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return EmbeddingCache()
    with np.load(path, allow_pickle=False) as npz:
        return EmbeddingCache(npz["keys"].tolist(), npz["vectors"].astype(np.float32))


def save_cache(cache: EmbeddingCache, path: str | Path) -> Path:
    """Write the cache atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys, vecs = cache.arrays()
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, keys=keys, vectors=vecs)
    tmp.replace(path)
    return path
