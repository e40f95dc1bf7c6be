"""params.yaml sections -> frozen dataclasses.

Every stage reads exactly one section (plus `evaluate` for shared metric settings). Unknown keys are an error,
so a typo in params.yaml fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params.yaml section is missing, has unknown keys, or has a bad value."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return params


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build dataclass `cls` from `params[name]`, rejecting unknown keys."""
    if name not in params:
        raise ConfigError(f"params.yaml has no section '{name}'")
    raw = params[name] or {}
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"params.yaml section '{name}': unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            value = raw[f.name]
            # YAML lists become tuples so the dataclass stays hashable and immutable.
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"params.yaml section '{name}': {exc}") from exc


def load_section(name: str, cls: type[T], path: str | Path = DEFAULT_PARAMS) -> T:
    return section(load_params(path), name, cls)


@dataclasses.dataclass(frozen=True)
class DataParams:
    registry: str = "config/datasets.yaml"  # dataset registry (sources, sha256, parsers)
    raw_dir: str = "data/raw"  # where raw datasets are stored (tracked by data.dvc)
    datasets: tuple[str, ...] = ()  # datasets to get; empty = every registered one
    timeout_s: float = 30.0  # per-request timeout for official sources


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str = "m6rec"  # MLflow experiment every stage logs its run to
    db: str = "mlflow.db"  # sqlite store in the project root, used when MLFLOW_TRACKING_URI is unset
    artifacts: str = "mlartifacts"  # artifact folder beside a sqlite store (M6REC_ARTIFACT_ROOT overrides)
