"""Process-level runtime settings, applied from each stage's main()."""

from __future__ import annotations

import os

THREADS_ENV = "M6REC_THREADS"


def set_threads(default: int | None = None) -> int:
    """Set torch's intra-op threads from $M6REC_THREADS (else `default`, else torch's own choice).

    On a small shared machine, over-subscribed threads are far slower than one thread per process.
    """
    import torch

    value = os.environ.get(THREADS_ENV) or default
    if value:
        n = int(value)
        if n < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
