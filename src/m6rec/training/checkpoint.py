"""Self-describing checkpoints: class path, constructor args, weights, resolved params and metadata."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, model: torch.nn.Module, args: dict[str, Any], params: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = type(model)
    torch.save({"class": f"{cls.__module__}.{cls.__qualname__}", "args": args, "state_dict": model.state_dict(),
                "params": params, "meta": meta or {}}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model exactly as saved; returns (model in eval mode, the checkpoint dict without weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    module_name, _, cls_name = ckpt["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**ckpt["args"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info
