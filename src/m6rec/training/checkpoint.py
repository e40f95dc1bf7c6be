"""Self-describing checkpoints: class path, constructor args, weights, resolved params and metadata.

A checkpoint is data, never code: it is written with plain types only (dicts, lists, tuples, str, numbers, bool,
None and tensors; numpy values and paths are converted on save) and read back with ``torch.load(weights_only=True)``,
whose unpickler refuses any other object, so a crafted ``model.pt`` cannot run code through :func:`load_checkpoint`.
The class it names must be a ``torch.nn.Module`` under :data:`MODEL_PACKAGE`; nothing else is imported.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

MODEL_PACKAGE = "m6rec.models."  # the only package a checkpoint's "class" may name
_KEYS = ("class", "args", "state_dict", "params", "meta")


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, malformed, or names a class outside m6rec.models."""


def _plain(value: Any, where: str) -> Any:
    """``value`` as the plain types the weights-only unpickler accepts (numpy and paths converted)."""
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(f"checkpoint {where} is a {type(value).__name__}: only plain types and tensors can be saved "
                    f"(a checkpoint must load with torch.load(weights_only=True))")


def save_checkpoint(path: str | Path, model: torch.nn.Module, args: dict[str, Any], params: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with what rebuilds it; ``args``, ``params`` and ``meta`` must be plain data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = type(model)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not name.startswith(MODEL_PACKAGE):
        raise CheckpointError(f"cannot checkpoint {name}: only models of {MODEL_PACKAGE}* can be rebuilt")
    state = model.state_dict()
    for prefix, info in getattr(state, "_metadata", {}).items():
        # A module attribute shadowing nn.Module._version would pickle arbitrary objects into the metadata.
        if not isinstance(info.get("version", 1), int):
            raise CheckpointError(f"cannot checkpoint {name}: state-dict metadata of module {prefix!r} has a "
                                  f"{type(info['version']).__name__} version (an attribute shadows "
                                  f"nn.Module._version)")
    torch.save({"class": name, "args": _plain(args, "args"), "state_dict": state,
                "params": _plain(params, "params"), "meta": _plain(meta or {}, "meta")}, path)
    return path


def _model_class(name: Any, path: Path) -> type[torch.nn.Module]:
    if not isinstance(name, str) or not name.startswith(MODEL_PACKAGE):
        raise CheckpointError(f"checkpoint {path}: class {name!r} is not a model of {MODEL_PACKAGE}*")
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path}: class {name} does not exist in this code") from exc
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"checkpoint {path}: {name} is not a torch.nn.Module")
    return cls


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model exactly as saved; returns (model in eval mode, the checkpoint dict without weights).

    Raises :class:`CheckpointError` for a file holding anything but plain data and tensors (nothing in it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing checkpoint {path}: it holds objects other than tensors and plain data "
                              f"({first}); re-run the stage that wrote it") from exc
    except (RuntimeError, EOFError) as exc:  # not a torch file, or truncated
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if not isinstance(ckpt, dict) or set(_KEYS) - set(ckpt):
        raise CheckpointError(f"checkpoint {path} is not an m6rec checkpoint (needs keys {list(_KEYS)})")
    cls = _model_class(ckpt["class"], path)
    model = cls(**ckpt["args"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info
