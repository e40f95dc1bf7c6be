"""m6rec: open-domain recommendation with multi-domain pretraining and text-aware items.

``m6rec.load(path_or_uri)`` returns a :class:`m6rec.api.Model` (``recommend``, ``recommend_items``,
``similar_items``); ``python -m m6rec --help`` (or the ``m6rec`` command) is the command line. Both import their
heavy dependencies on first use, so ``import m6rec`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "Model", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from m6rec import api

        return getattr(api, name)
    raise AttributeError(f"module 'm6rec' has no attribute {name!r}")
