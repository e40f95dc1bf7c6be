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
    """``m6rec.load`` and ``m6rec.Model`` import :mod:`m6rec.api` on first use (PEP 562).

    By name, not by an import statement: no stage touches them, so the stages' dvc.yaml deps (read from import
    statements by tests/import_graph.py) rightly leave m6rec.api and the serving code out."""
    if name in ("load", "Model"):
        import importlib

        return getattr(importlib.import_module("m6rec.api"), name)
    raise AttributeError(f"module 'm6rec' has no attribute {name!r}")
